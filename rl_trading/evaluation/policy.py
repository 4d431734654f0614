"""A policy to evaluate, whatever its source: a checkpoint (dir or module dir), a registered
model (`models:/name@alias`), an ensemble of them, or `{policy_id: RLModule}`; loaded as a
`PolicyBundle` (modules + the preprocessing they were trained with). An ensemble's members are
themselves loaded by `load_policy`, so the two live together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import gymnasium as gym
import numpy as np

from rl_trading.artifacts import verify_checkpoint
from rl_trading.errors import CheckpointError, RegistryError
from rl_trading.evaluation.export import is_module_dir, load_module
from rl_trading.registry import ModelRegistry

if TYPE_CHECKING:
    from rl_trading.config import AppConfig

MODULE_COMPONENT = "learner_group/learner/rl_module"
PREPROCESSING_FILE = "preprocessing.json"
META = "meta"
ENSEMBLE_FILE = "ensemble.json"
Method = Literal["mean", "vote"]


@dataclass
class PolicyBundle:
    """Restored modules keyed by policy id + the preprocessing they were trained with."""

    modules: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def hierarchical(self) -> bool:
        """Specialists (+ meta): run in the hierarchical env (phase 1 ids: specialists only)."""
        return any(p == META or p.startswith("specialist") for p in self.modules)

    @property
    def shared_specialist(self) -> bool:
        """One `specialist` policy for every instrument (obs carry a one-hot instrument id)."""
        return "specialist" in self.modules

    def act(self, policy_id: str, obs: np.ndarray) -> np.ndarray:
        """Deterministic env actions of one policy for a `[B, obs_dim]` batch."""
        from policies import compute_actions  # heavy: ray, torch

        module = self.modules[policy_id]
        if hasattr(module, "act"):
            return module.act(obs)
        return compute_actions(module, obs)


def _is_module_dir(path: Path) -> bool:
    return is_module_dir(path)


def _read_preprocessing(*dirs: Path) -> dict[str, Any]:
    for d in dirs:
        for cand in (d / PREPROCESSING_FILE, d.parent / PREPROCESSING_FILE):
            if cand.is_file():
                return json.loads(cand.read_text())
    return {}


def load_policy(source: Any, cfg: AppConfig | None = None) -> PolicyBundle:
    """Restore a policy source (see module docstring) into a PolicyBundle."""
    if isinstance(source, PolicyBundle):
        return source
    if isinstance(source, dict):
        return PolicyBundle(dict(source), source="modules")
    if callable(getattr(source, "bundle", None)):  # an Ensemble
        return source.bundle()
    if hasattr(source, "forward_inference") or hasattr(source, "act"):
        pid = getattr(source, "policy_id", None) or "default_policy"
        pre = getattr(source, "preprocessing", None) or {}
        return PolicyBundle({pid: source}, preprocessing=pre, source=type(source).__name__)
    path = Path(str(source)).expanduser()
    if not path.exists():
        registry = ModelRegistry(cfg=cfg)
        rec = registry.resolve(str(source))
        if rec.kind == "ensemble":
            bundle = load_policy(Ensemble.from_registry(rec.name, registry), cfg)
            bundle.source = rec.name
            return bundle
        # the registry verified every file against its own manifest
        bundle = _load_dir(registry.load_path(rec.name), cfg, verified=True)
        bundle.source = rec.name
        return bundle
    return _load_dir(path, cfg)


def _load_dir(path: Path, cfg: AppConfig | None, verified: bool = False) -> PolicyBundle:
    """A policy folder (checkpoint, module dir, saved ensemble), its sha256 manifest checked
    before anything is unpickled (required when it carries project metadata)."""
    if not path.is_dir():
        raise CheckpointError(f"policy source is not a directory: {path}")
    verify_checkpoint(path, required=False if verified else None)
    if (path / "ensemble.json").is_file():
        return load_policy(Ensemble.load(path, cfg), cfg)
    if _is_module_dir(path):
        return PolicyBundle(
            {path.name: load_module(path)}, _read_preprocessing(path), source=str(path)
        )
    for root in (path / MODULE_COMPONENT, path / "rl_module", path):
        if root.is_dir():
            ids = sorted(p.name for p in root.iterdir() if p.is_dir() and _is_module_dir(p))
            if ids:
                modules = {pid: load_module(root / pid) for pid in ids}
                return PolicyBundle(modules, _read_preprocessing(path, root), source=str(path))
    raise CheckpointError(f"no RLModules found under {path}")


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
        import torch  # heavy: torch
        from ray.rllib.core.columns import Columns  # heavy: ray

        batch = {Columns.OBS: torch.as_tensor(np.asarray(obs, dtype=np.float32))}
        out = []
        with torch.no_grad():
            for m in self.members:
                out.append(m.forward_inference(batch)[Columns.ACTION_DIST_INPUTS].cpu().numpy())
        return out

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic env actions for a `[B, obs_dim]` batch."""
        from policies import to_env_action  # heavy: ray, torch

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


# Preprocessing keys that must be equal across members: they see the same observations.
SHARED_PREPROCESSING = ("symbols", "features", "window_size", "timeframe", "scalers", "scaler")


def check_compatible(bundles: Sequence[Any], names: Sequence[str]) -> None:
    """Refuse members that would not see the same observations or act in the same spaces.

    Same policy ids, same observation and action space per policy id, and the same stored
    preprocessing (instruments, features, window, timeframe, scaler statistics): the ensemble
    feeds every member one observation, so members trained on other data cannot be mixed.
    """
    first, ref = bundles[0], names[0]
    for bundle, name in zip(bundles[1:], names[1:], strict=True):
        if set(bundle.modules) != set(first.modules):
            raise CheckpointError(
                f"ensemble members have different policies: {ref} has "
                f"{sorted(first.modules)}, {name} has {sorted(bundle.modules)}"
            )
        for pid, module in bundle.modules.items():
            other = first.modules[pid]
            for attr in ("observation_space", "action_space"):
                a, b = getattr(other, attr, None), getattr(module, attr, None)
                if a != b:
                    what = attr.replace("_", " ")
                    raise CheckpointError(
                        f"ensemble members are incompatible: policy '{pid}' {what} "
                        f"{a} ({ref}) vs {b} ({name})"
                    )
        for key in SHARED_PREPROCESSING:
            a, b = first.preprocessing.get(key), bundle.preprocessing.get(key)
            if a != b:
                raise CheckpointError(
                    f"ensemble members are incompatible: different preprocessing '{key}' "
                    f"({ref} vs {name}); members must be trained on the same data and features"
                )


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
        check_compatible(self.bundles, self.names)
        ids = [set(b.modules) for b in self.bundles]
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

    def lineage(self) -> dict[str, Any]:
        """What the registry records: members (names or paths), method and weights."""
        return {"members": list(self.names), "method": self.method, "weights": self.weights}

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
