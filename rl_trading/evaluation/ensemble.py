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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_trading import ledger
from rl_trading import metrics as mx
from rl_trading.errors import CheckpointError, ConfigError
from rl_trading.evaluation.backtest import backtest, evaluate_runs
from rl_trading.evaluation.policy import Ensemble, Method
from rl_trading.evaluation.report import write_report
from rl_trading.evaluation.selection import graded_metrics, own_trials, select_bars
from rl_trading.registry import ModelRegistry

if TYPE_CHECKING:
    from rl_trading.config import AppConfig


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


#: Training-config keys every member must share (the bars and observations they act on:
#: members with other observation columns of the same width would read each other's).
SHARED_KEYS = (
    ("data", "symbols"),
    ("data", "timeframe"),
    ("train", "window_size"),
    ("env", "cross_sectional"),
    ("env", "trend_windows"),
)


def check_member_configs(names: Sequence[str], registry: ModelRegistry) -> None:
    """ConfigError unless every member stored with a training config was trained on the same
    instruments, timeframe, window and observation columns (`SHARED_KEYS`) as the first such
    member (the config the ensemble is evaluated with, `policy_config(model=first)`)."""
    first: tuple[str, dict[str, Any]] | None = None
    for name in names:
        stored = registry.load_training_config(name)
        if not stored:
            continue
        if first is None:
            first = (name, stored)
            continue
        for section, key in SHARED_KEYS:
            want = (first[1].get(section) or {}).get(key)
            have = (stored.get(section) or {}).get(key)
            if want != have:
                raise ConfigError(
                    f"members trained on other data: {first[0]} has {section}.{key}={want}, "
                    f"{name} has {have}"
                )


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
    registry = ModelRegistry(cfg=cfg)
    records = [registry.resolve(n) for n in names]  # unknown names fail before any work
    resolved = [r.name for r in records]
    for i, name in enumerate(resolved):
        if name in resolved[:i]:
            raise ConfigError(
                f"'{names[i]}' and '{names[resolved.index(name)]}' are the same model "
                f"({name}): an ensemble needs distinct members"
            )
    check_member_configs(resolved, registry)
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
