"""Acting from a checkpoint or a registered model: `rl_trading.load_policy(...).act(obs)`.

A small public API over the project's one restoring path
(:func:`rl_trading.evaluation.backtest.load_policy`, the backtest's): RLModules are restored with
``RLModule.from_checkpoint`` on each module dir, so no Algorithm, no EnvRunner actors and no Ray
workers start. Actions are mapped exactly as the envs receive them in a backtest
(:func:`policies.to_env_action`): the Gaussian mean for Box actions, clipped to [-1, 1] and
scaled to the action space's bounds; the arg-max index for Discrete actions. The ONNX export
writes the same mapping into its graph (:mod:`rl_trading.evaluation.export`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rl_trading.errors import CheckpointError
from rl_trading.evaluation.backtest import load_policy as _restore

if TYPE_CHECKING:
    from rl_trading.config import AppConfig
    from rl_trading.evaluation.backtest import PolicyBundle


class Policy:
    """A restored policy (one module, a hierarchy of modules, or an ensemble) that acts."""

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle

    @property
    def policy_ids(self) -> list[str]:
        """The policies this model holds (e.g. `meta`, `specialist_EURUSD`)."""
        return sorted(self.bundle.modules)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Features, window, scaler statistics the model was trained with (may be empty)."""
        return self.bundle.preprocessing

    @property
    def source(self) -> str:
        """Where it came from: a path or a registry reference (`FAMILY/VERSION`)."""
        return self.bundle.source

    def module(self, policy_id: str | None = None) -> Any:
        """The RLModule (or ensemble actor) of one policy."""
        return self.bundle.modules[self._pid(policy_id)]

    def observation_space(self, policy_id: str | None = None) -> Any:
        """The observation space one policy expects."""
        return self.module(policy_id).observation_space

    def action_space(self, policy_id: str | None = None) -> Any:
        """The action space one policy's actions lie in (after clipping and scaling)."""
        return self.module(policy_id).action_space

    def _pid(self, policy_id: str | None) -> str:
        if policy_id is None:
            if len(self.bundle.modules) != 1:
                raise CheckpointError(
                    f"this model has several policies ({', '.join(self.policy_ids)}): "
                    "pass policy_id= or a {policy_id: observation} dict"
                )
            return next(iter(self.bundle.modules))
        if policy_id not in self.bundle.modules:
            raise CheckpointError(f"no policy '{policy_id}' (have: {', '.join(self.policy_ids)})")
        return policy_id

    def act(self, observation: Any, policy_id: str | None = None) -> Any:
        """Deterministic env action(s) for one observation or a `[B, ...]` batch.

        A `{policy_id: observation}` dict (a multi-agent env's observations) returns a
        `{policy_id: action}` dict. Box actions are clipped and scaled to the action space, as
        the env receives them in a backtest.
        """
        if isinstance(observation, Mapping):
            return {pid: self.act(obs, pid) for pid, obs in observation.items()}
        pid = self._pid(policy_id)
        space = self.bundle.modules[pid].observation_space
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == len(space.shape)
        batch = obs[None] if single else obs
        if batch.shape[1:] != tuple(space.shape):
            raise CheckpointError(
                f"policy '{pid}' expects observations of shape {tuple(space.shape)}, "
                f"got {tuple(obs.shape)}"
            )
        actions = self.bundle.act(pid, batch)
        return actions[0] if single else actions

    def __repr__(self) -> str:
        return f"Policy({self.source!r}, policies={self.policy_ids})"


def load_policy(source: str | Path | Any, cfg: AppConfig | None = None) -> Policy:
    """Restore a policy for inference from a checkpoint dir, an RLModule dir, or a registered
    model (`NAME`, `NAME/VERSION`, `NAME@ALIAS`, `models:/NAME@champion`; sha256-verified).

    No Algorithm is built and no sampling actors start. `cfg` only chooses the MLflow store
    (default: the workspace's)."""
    return Policy(_restore(source, cfg))
