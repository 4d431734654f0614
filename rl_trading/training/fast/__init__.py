"""Every departure from stock RLlib 2.60 in one place (behind `resources.rllib_fast_paths`).

`env_runner` (batched step counters, tree-free action unsquash), `fused_runner` (acting
without the connector pipelines), `learner` (fused finiteness check, multi-tensor Adam, slice
minibatches), `grouped_learner` (same-shape MLPs updated as one stacked network, the gradient
through autograd) and `bf16_learner` (bf16 autocast). With `resources.rllib_fast_paths: false`
training uses RLlib's stock classes instead. Whatever RLlib / torch internals these reach for
go through `rl_trading/training/rllib_adapter.py` (pinned to Ray 2.60; tests/
test_training_adapter.py fails naming what moved); someone upgrading Ray re-checks that module
and runs tests/test_training_speedups.py and tests/test_training_grouped.py.
"""
