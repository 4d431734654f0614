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
from dataclasses import dataclass
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


@dataclass
class EnsembleOutcome:
    """A created ensemble: its registry record, the backtest (ensemble as `policy`, each member
    and the baselines on the same bars) and where the report went."""

    record: Any
    result: Any
    report_paths: dict[str, Path]
    members: list[str]


def parse_weights(text: str | None, n: int) -> list[float] | None:
    """`"0.5,0.3,0.2"` -> floats, one per member (ConfigError otherwise); None -> equal."""
    from rl_trading.errors import ConfigError

    if text is None or not text.strip():
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights must be comma-separated numbers, got '{text}'") from None
    if len(weights) != n:
        raise ConfigError(f"--weights has {len(weights)} values for {n} members")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError("--weights must be non-negative and not all zero")
    return weights


def create_ensemble(
    names: Sequence[str],
    cfg: AppConfig,
    method: Method = "mean",
    weights: Sequence[float] | None = None,
    split: str = "test",
    model_type: str = "ensemble",
    out_dir: str | Path | None = None,
) -> EnsembleOutcome:
    """Check members, backtest the ensemble next to each member and the baselines on `split`,
    grade it by that backtest and register it (kind `ensemble`, members as lineage).

    Graded like any policy (`register_policy`'s rules): on the test split by default, the DSR
    deflated by every trial behind the members (their recorded `n_trials`, summed) or, when
    larger, every trial the ledger holds on the market; on the test split it is recorded there.
    """
    from rl_trading.evaluation import select_bars
    from rl_trading.evaluation.backtest import backtest, evaluate_runs
    from rl_trading.evaluation.report import write_report
    from rl_trading.registry import ModelRegistry

    registry = ModelRegistry(cfg=cfg)
    records = [registry.resolve(n) for n in names]  # unknown names fail before any work
    resolved = [r.name for r in records]
    ens = Ensemble(resolved, method, weights, cfg=cfg)
    bars, train, desc = select_bars(cfg, None, split)
    result = backtest(ens, bars, cfg, seed=cfg.seed, scaler_bars=train)
    runs = {"policy": result.runs["policy"]}
    for name in resolved:
        member = backtest(name, bars, cfg, seed=cfg.seed, scaler_bars=train)
        run = member.runs["policy"]
        if not run.index.equals(runs["policy"].index):
            raise CheckpointError(f"member {name} trades other bars than the ensemble")
        runs[name] = run
    runs.update({k: v for k, v in result.runs.items() if k != "policy"})
    combined = evaluate_runs(runs, cfg, **{**result.meta, "bars": desc, "source": ens.describe()})
    from rl_trading import metrics as mx
    from rl_trading.evaluation import graded_metrics, ledger, own_trials

    # the members' own trials together, or every trial on the market when the ledger has more
    fp, url = ledger.market_fingerprint(cfg), ledger.ledger_url(cfg)
    own = sum(own_trials(name, cfg)[0] for name in resolved)
    n_trials = max(1, own, ledger.count_trials(fp, url))
    combined.metrics["policy"]["dsr"] = mx.deflated_sharpe_ratio(
        combined.runs["policy"].returns, n_trials
    )
    if split == "test":
        pick = {"ensemble": method, "members": resolved, "weights": list(weights or [])}
        ledger.record_trials(fp, "ensemble", [pick], source=model_type, url=url)
    combined.meta["n_trials"] = n_trials
    out = Path(out_dir) if out_dir is not None else cfg.resolved_run_dir() / "ensemble"
    paths = write_report(combined, out / "report", cfg)
    pm = combined.metrics["policy"]
    metrics = graded_metrics(pm, n_trials)
    pre = ens.preprocessing
    signature = {
        "ensemble": method,
        "members": resolved,
        "policies": sorted(ens.modules),
        "features": pre.get("features"),
        "window_size": pre.get("window_size"),
        "symbols": pre.get("symbols"),
    }
    record = registry.register(
        ens.save(out / "model"),
        model_type=model_type,
        kind="ensemble",
        metrics=metrics,
        lineage={**ens.lineage(), "eval_split": split, "report": str(paths["report"])},
        data_fingerprint=pre.get("train_fingerprint"),
        preprocessing=pre or None,
        signature=signature,
        config=cfg,
        untouched=split == "test",
        graded_split=split,
        n_trials=n_trials,
    )
    return EnsembleOutcome(record, combined, paths, resolved)
