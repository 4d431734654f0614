"""Every departure from stock RLlib 2.60 in one place (behind `resources.rllib_fast_paths`).

`env_runner` (batched step counters, tree-free action unsquash), `learner` (fused finiteness
check, multi-tensor Adam, slice minibatches), `grouped_learner` (same-shape MLPs updated as one
stacked network), `bf16_learner` (bf16 autocast) and `determinism` (hash-seed independent agent
order). With `resources.rllib_fast_paths: false` training uses RLlib's stock classes instead;
someone upgrading Ray re-checks the files in this package (tests/test_training_speedups.py,
tests/test_training_grouped.py).
"""
