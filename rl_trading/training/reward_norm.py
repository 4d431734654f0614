"""Reward normalisation in the learner (reward.normalize), through RLlib's public connectors.

`RewardNormalizer` is a `ConnectorV2` piece of the learner pipeline, placed after the batch's
columns are gathered and before they become tensors (so before PPO's advantage estimation,
which the learner appends later): each module's rewards are divided by a running estimate of
their standard deviation, then clipped at +-`clip`. The estimate covers all the batches that
module has trained on so far, this one included, and only timesteps in the loss mask: not the
bootstrap step PPO appends to each episode chunk, nor a recurrent module's zero padding. The
env's rewards, and so their reconciliation with net P&L, are unchanged: only what the value
function regresses on and the advantages are built from is rescaled. The statistics live in
the learner and in its checkpoints (`rllib_adapter.LearnerConnectorState`), so a resumed or
restored run goes on with them. With several learners (resources.num_learners > 1) each
keeps its own while it trains, from its share of the batch; a checkpoint holds the first
learner's and a restore gives them to all (RLlib's `LearnerGroup` state is learner 0's).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns

__all__ = ["RewardNormalizer"]


class RewardNormalizer(ConnectorV2):
    """Divides each module's train-batch rewards by their running standard deviation."""

    def __init__(
        self,
        input_observation_space: Any = None,
        input_action_space: Any = None,
        *,
        clip: float = 10.0,
        eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.clip = float(clip)
        self.eps = float(eps)
        # module id -> [count, mean, sum of squared deviations] (Chan et al.'s parallel update)
        self.stats: dict[str, list[float]] = {}

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list,
        explore: bool | None = None,
        shared_data: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        """The batch with every module's rewards scaled to about unit variance."""
        for mid, columns in batch.items():
            if not isinstance(columns, dict) or Columns.REWARDS not in columns:
                continue
            rewards = np.asarray(columns[Columns.REWARDS])
            real = rewards.astype(np.float64)
            if Columns.LOSS_MASK in columns:  # not the bootstrap / zero-padding timesteps
                real = real[np.asarray(columns[Columns.LOSS_MASK], dtype=bool)]
            std = self.update(str(mid), real.ravel())
            scaled = np.clip(rewards / max(std, self.eps), -self.clip, self.clip)
            columns[Columns.REWARDS] = scaled.astype(rewards.dtype, copy=False)
        return batch

    def update(self, module_id: str, rewards: np.ndarray) -> float:
        """Fold `rewards` into the module's running moments; returns the running std."""
        n_b = rewards.size
        count, mean, m2 = self.stats.get(module_id, [0.0, 0.0, 0.0])
        if n_b:
            mean_b = float(rewards.mean())
            m2_b = float(((rewards - mean_b) ** 2).sum())
            total = count + n_b
            delta = mean_b - mean
            mean += delta * n_b / total
            m2 += m2_b + delta * delta * count * n_b / total
            count = total
            self.stats[module_id] = [count, mean, m2]
        return math.sqrt(m2 / count) if count > 1 else 1.0

    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The running moments per module (for a connector pipeline's state)."""
        return {"stats": {k: list(v) for k, v in self.stats.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore `get_state`'s moments."""
        self.stats = {k: list(v) for k, v in state.get("stats", {}).items()}
