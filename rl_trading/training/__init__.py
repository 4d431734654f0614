"""Hierarchical RLlib training: three phases, checkpoints, resume, validation and MLflow.

Entry points: `session.train` (the phases of one run, what `rl-trading train` calls),
`runner.run_phase` / `runner.run_phases`, `checkpoints.load_algorithm` / `load_module`,
`trainer.DistributedTrainer`. Import them from their modules: most bring Ray and torch.
"""
