"""Population-Based Training of the RL phases (`pbt.run_pbt`), its trainable and reports."""
