"""Sub-period evaluation: blocks x seeds, each metric as a mean with a 95% t-interval.

Blocks come from :func:`rl_trading.data.walk_forward_splits` over the bars given (in the demo
and ``rl-trading backtest --folds``: the test split). For every block and seed the policy is
backtested on the block next to the baselines; the feature scaler is fit on the bars before
the block unless the policy carries its own. The bars just before a block are the policy's
warm-up (features, observation and risk windows), so it decides on every bar of the block.

Without ``train_fn`` one fixed policy is scored on every block: this is **not** a walk-forward
(nothing is retrained), only sub-periods of one test split, and it is labelled so
(``meta["retrained"] = False``). The retraining walk-forward is ``rl-trading evaluate
walk-forward`` (:mod:`rl_trading.evaluation.walk_forward_retrain`). A ``train_fn(train_bars,
fold, seed) -> policy source`` retrains per block and seed.

Intervals count independent units only: the seeds of a block are averaged first, then the
t-interval is taken over the blocks (n = number of blocks, never blocks x seed copies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rl_trading.data import take_part, walk_forward_splits
from rl_trading.evaluation.backtest import (
    BacktestResult,
    backtest,
    first_decision_bar,
    load_policy,
    pin_calendar,
)
from rl_trading.evaluation.baselines import as_bar_dict

if TYPE_CHECKING:
    from rl_trading.config import AppConfig


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample std and two-sided Student-t interval of `values` (NaNs dropped).

    With one value the interval is that value (n=1, std NaN); none gives NaNs.
    """
    from scipy import stats  # heavy: scipy

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "ci_low": nan, "ci_high": nan, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "std": float("nan"), "ci_low": mean, "ci_high": mean, "n": 1}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


@dataclass
class WalkForwardResult:
    """Per fold x seed backtests and the aggregated mean / CI of every metric per strategy."""

    rows: list[dict[str, Any]]  # one per (fold, seed, strategy): metrics + ids
    summary: dict[str, dict[str, dict[str, float]]]  # strategy -> metric -> mean_ci
    folds: list[dict[str, Any]]
    seeds: list[int]
    last: BacktestResult | None = None  # the last fold/seed backtest (for plots)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_runs(self) -> int:
        """Number of (fold, seed) backtests."""
        return len({(r["fold"], r["seed"]) for r in self.rows})


def walk_forward(
    policy_source: Any,
    bars: pd.DataFrame | dict[str, pd.DataFrame],
    cfg: AppConfig,
    n_folds: int | None = None,
    seeds: Sequence[int] | None = None,
    embargo: int | None = None,
    train_fn: Callable[[dict[str, pd.DataFrame], Any, int], Any] | None = None,
    include_supervised: bool = True,
    confidence: float = 0.95,
) -> WalkForwardResult:
    """Backtest over walk-forward folds x seeds; aggregate each metric with a t-interval."""
    data = as_bar_dict(bars)
    if policy_source is not None and train_fn is None:
        policy_source = load_policy(policy_source, cfg)  # restored once for every block
    # one bars-per-year for every block: the policy's training calendar, else these bars'
    pre = getattr(policy_source, "preprocessing", None)
    cfg, _ = pin_calendar(cfg, pre, None, data)
    n_folds = n_folds or cfg.data.walk_forward_folds
    seeds = list(seeds if seeds is not None else cfg.evaluation.seeds)
    embargo = cfg.data.embargo_bars if embargo is None else embargo
    folds = walk_forward_splits(data, n_folds=n_folds, embargo=embargo)
    rows: list[dict[str, Any]] = []
    fold_info = []
    last = None
    for fold in folds:
        train, block = take_part(data, fold.train), take_part(data, fold.test)
        first = next(iter(block.values())).index
        fold_info.append(
            {
                "fold": fold.index,
                "train_bars": int(fold.train.stop - fold.train.start),
                "test_start": str(first[0]),
                "test_end": str(first[-1]),
                "test_bars": len(first),
            }
        )
        for seed in seeds:
            source = train_fn(train, fold, seed) if train_fn is not None else policy_source
            # the block with the policy's warm-up in front: it decides on every bar of the
            # block (the bars before only feed its features and windows); baselines alone
            # trade the block as it is
            test = block
            if source is not None:
                source = load_policy(source, cfg)
                test = take_part(data, fold.test, first_decision_bar(source, cfg))
            res = backtest(
                source,
                test,
                cfg,
                seed=seed,
                scaler_bars=train,
                include_supervised=include_supervised,
            )
            last = res
            for strategy, mets in res.metrics.items():
                rows.append({"fold": fold.index, "seed": seed, "strategy": strategy, **mets})
    summary = summarize_over_folds(rows, confidence)
    retrained = train_fn is not None
    return WalkForwardResult(
        rows=rows,
        summary=summary,
        folds=fold_info,
        seeds=seeds,
        last=last,
        meta={
            "n_folds": len(folds),
            "embargo": embargo,
            "confidence": confidence,
            "retrained": retrained,
            "label": (
                "walk-forward: retrained per fold"
                if retrained
                else "sub-periods of one test split (the policy is not retrained)"
            ),
            "interval_over": "folds (seeds averaged within each fold)",
        },
    )


def summarize_over_folds(
    rows: list[dict[str, Any]], confidence: float = 0.95
) -> dict[str, dict[str, dict[str, float]]]:
    """strategy -> metric -> mean_ci over folds, each fold's seeds averaged first (n = folds)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        keys = [k for k in mine[0] if k not in ("fold", "seed", "strategy")]
        folds = list(dict.fromkeys(r["fold"] for r in mine))
        summary[strategy] = {}
        for k in keys:
            per_fold = []
            for f in folds:
                vals = [float(r[k]) for r in mine if r["fold"] == f and r.get(k) is not None]
                vals = [v for v in vals if math.isfinite(v)]
                if vals:
                    per_fold.append(float(np.mean(vals)))
            summary[strategy][k] = mean_ci(per_fold, confidence)
    return summary
