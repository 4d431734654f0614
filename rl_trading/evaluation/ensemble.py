"""Ensembles of policies: averaged action distributions or majority vote, per policy id.

Continuous (Box) actions: the mean of the members' Gaussian means, then the same clip and
unsquash as a single module (:func:`policies.to_env_action`). Discrete actions: ``"mean"``
averages the members' softmax probabilities and takes the arg-max; ``"vote"`` takes the most
frequent member arg-max (ties -> the lowest action index). Members must share policy ids and
spaces. An ensemble is saved as ``ensemble.json`` (member registry names or paths, method,
weights), so it is itself backtestable (:func:`~rl_trading.evaluation.backtest.backtest`) and
registrable (kind ``ensemble``; members recorded as lineage and re-verified on load).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rl_trading.errors import CheckpointError, RegistryError

if TYPE_CHECKING:
    from rl_trading.config import AppConfig
    from rl_trading.registry import ModelRegistry

ENSEMBLE_FILE = "ensemble.json"
Method = Literal["mean", "vote"]


class EnsembleModule:
    """Combines the same policy id of several members into one deterministic actor."""

    def __init__(self, modules: Sequence[Any], method: Method, weights: Sequence[float]):
        self.members = list(modules)
        self.method = method
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.action_space = self.members[0].action_space
        self.observation_space = self.members[0].observation_space
        for m in self.members[1:]:
            if m.action_space != self.action_space:
                raise CheckpointError("ensemble members have different action spaces")

    def _dist_inputs(self, obs: np.ndarray) -> list[np.ndarray]:
        import torch
        from ray.rllib.core.columns import Columns

        batch = {Columns.OBS: torch.as_tensor(np.asarray(obs, dtype=np.float32))}
        out = []
        with torch.no_grad():
            for m in self.members:
                out.append(m.forward_inference(batch)[Columns.ACTION_DIST_INPUTS].cpu().numpy())
        return out

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic env actions for a `[B, obs_dim]` batch."""
        import gymnasium as gym

        from policies import to_env_action

        inputs = self._dist_inputs(obs)
        if isinstance(self.action_space, gym.spaces.Discrete):
            if self.method == "vote":
                n = int(self.action_space.n)
                votes = np.zeros((inputs[0].shape[0], n))
                for w, logits in zip(self.weights, inputs, strict=True):
                    votes[np.arange(len(logits)), logits.argmax(axis=-1)] += w
                return votes.argmax(axis=-1).astype(np.int64)
            probs = sum(w * _softmax(x) for w, x in zip(self.weights, inputs, strict=True))
            return np.asarray(probs).argmax(axis=-1).astype(np.int64)
        act_dim = int(np.prod(self.action_space.shape))
        mean = sum(w * x[:, :act_dim] for w, x in zip(self.weights, inputs, strict=True))
        return to_env_action(np.asarray(mean, dtype=np.float32), self.action_space)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Ensemble:
    """Several policy sources acting as one (see module docstring)."""

    def __init__(
        self,
        members: Sequence[Any],
        method: Method = "mean",
        weights: Sequence[float] | None = None,
        cfg: AppConfig | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        from rl_trading.evaluation.backtest import load_policy

        if len(members) < 2:
            raise CheckpointError("an ensemble needs at least two members")
        if method not in ("mean", "vote"):
            raise CheckpointError(f"unknown ensemble method '{method}' (mean or vote)")
        self.method: Method = method
        self.names = [str(n) for n in (names or members)]
        self.weights = list(weights) if weights is not None else [1.0] * len(members)
        if len(self.weights) != len(members) or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise CheckpointError("ensemble weights must be non-negative, one per member")
        self.bundles = [load_policy(m, cfg) for m in members]
        ids = [set(b.modules) for b in self.bundles]
        if any(i != ids[0] for i in ids[1:]):
            raise CheckpointError(
                f"ensemble members have different policies: {sorted(ids[0])} vs "
                f"{sorted(next(i for i in ids if i != ids[0]))}"
            )
        self.modules = {
            pid: EnsembleModule([b.modules[pid] for b in self.bundles], method, self.weights)
            for pid in sorted(ids[0])
        }
        # Members share preprocessing by construction; use the first one's (scalers).
        self.preprocessing = next((b.preprocessing for b in self.bundles if b.preprocessing), {})

    def act(self, obs: np.ndarray, policy_id: str | None = None) -> np.ndarray:
        """Deterministic actions of one policy id (the only one when omitted)."""
        pid = policy_id or next(iter(self.modules))
        return self.modules[pid].act(obs)

    def bundle(self) -> Any:
        """The ensemble as a PolicyBundle (what backtests run)."""
        from rl_trading.evaluation.backtest import PolicyBundle

        return PolicyBundle(dict(self.modules), self.preprocessing, source=self.describe())

    def describe(self) -> str:
        """One line: method and members."""
        return f"ensemble({self.method}: {', '.join(self.names)})"

    def save(self, path: str | Path) -> Path:
        """Write `ensemble.json` (+ the shared preprocessing) into the directory `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        spec = {"members": self.names, "method": self.method, "weights": self.weights}
        (path / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, cfg: AppConfig | None = None) -> Ensemble:
        """Rebuild from a saved dir (members resolved as paths or registry names)."""
        spec = json.loads((Path(path) / ENSEMBLE_FILE).read_text())
        return cls(spec["members"], spec["method"], spec["weights"], cfg=cfg)

    @classmethod
    def from_registry(cls, name: str, registry: ModelRegistry) -> Ensemble:
        """A registered ensemble: its spec and every member verified by the registry."""
        path = registry.load_path(name)
        if not (path / ENSEMBLE_FILE).is_file():
            raise RegistryError(f"model '{name}' is not an ensemble")
        return cls.load(path, registry.cfg)
