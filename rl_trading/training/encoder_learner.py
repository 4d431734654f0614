"""RLlib's stock PPO learner, except for the optimizers of pretrained-encoder specialists.

Used instead of `PPOTorchLearner` with `resources.rllib_fast_paths: false` when
`policy.cnn_lstm_model` is set: a frozen encoder must be in no optimizer and a fine-tuned one
needs its own (`policies.pretrained.register_optimizers`). Every other module, the loss and
the update are RLlib's own. (With the fast paths, `FastPPOTorchLearner` does the same.)
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

from policies.pretrained import register_optimizers
from rl_trading.rllib_adapter import LearnerConnectorState


class EncoderPPOTorchLearner(LearnerConnectorState, PPOTorchLearner):
    """`PPOTorchLearner` with the pretrained encoder's optimizers (frozen: none)."""

    def configure_optimizers_for_module(self, module_id: Any, config: Any = None) -> None:
        """The encoder module's optimizers, else RLlib's default."""
        if not register_optimizers(self, module_id, config):
            super().configure_optimizers_for_module(module_id, config)
