"""The retraining walk-forward: every fold trains its own policy on the past, then tests once.

Protocol (``rl-trading evaluate walk-forward``):

* **Folds.** :func:`rl_trading.data.walk_forward_splits` cuts the whole history into an
  initial block and ``K`` equal test blocks (expanding window, ``data.embargo_bars`` dropped
  before each test block). The training window of fold k is split again in time: its first
  part fits the feature scalers and trains the configured phases (budgets from the config),
  its tail (``val_frac / (train_frac + val_frac)`` of the window, after another embargo) is the
  fold's validation part, where the phases select their best checkpoint. The test block is
  then traded once with that checkpoint, next to every baseline of
  :func:`rl_trading.evaluation.backtest.backtest` (same bars, costs and capital). Validation
  and test blocks are decided on from their first bar (the bars before them are the
  features' and windows' warm-up, ``data.env_history``; :func:`fold_blocks`).
* **Seeds** vary the training seed (``seed + i``). Folds x seeds are Ray Tune trials; a
  finished trial leaves ``trials/fold<k>_seed<s>/result.json`` and is never recomputed.
* **Intervals** are over the independent units: the folds. Seeds are averaged within a fold
  first, so ``n = K`` (never ``K x S``). Policy minus baseline is a paired per-fold difference.
* **Significance.** The out-of-sample returns of the folds (seed-averaged per bar) are stitched
  in time, each fold annualised with its own calendar (the stitched bars per year are its bars
  over the years its folds span); PSR and DSR (:mod:`rl_trading.metrics`) are computed on
  them. Per-fold values of every strategy are in ``walk_forward.json`` (``fold_values``).
  ``n_trials`` counts every validation pass that a checkpoint selection looked at, over all
  folds x seeds, plus the number of seeds, or every trial the ledger holds on the data when
  that is more (:mod:`rl_trading.ledger`); the DSR's trial variance is the null
  variance of the estimator, 1 / (T - 1) (``metrics.trials_sharpe_variance``).
* Sharpe convention: rf = 0, annualised with each fold's backtest ``periods_per_year``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.markup import escape

from rl_trading import ledger, metrics, ray_utils
from rl_trading.config import AppConfig
from rl_trading.data import env_history, take_part, walk_forward_splits
from rl_trading.data.features import WARMUP_BARS
from rl_trading.errors import CheckpointError, ConfigError, DataError, RLTradingError
from rl_trading.evaluation.backtest import backtest
from rl_trading.evaluation.report import PackedTables, json_safe
from rl_trading.evaluation.walk_forward import mean_ci
from rl_trading.metrics import simple_returns
from rl_trading.ray_utils import fit_trial_runners, resolve_address
from rl_trading.registry import config_hash, grade_rl
from rl_trading.supervised.signals import SignalProvider, observed_market
from rl_trading.training.mapping import phase_iterations, phase_timesteps

RESULT_FILE = "result.json"
PLAN_FILE = "plan.json"
REPORT_FILE = "walk_forward.json"
PLOT_FILE = "walk_forward_equity.png"
# How a fold x seed is measured, recorded in plan.json: a run measured otherwise cannot be
# resumed (its results would mix with this version's). 1: validation blocks without their
# warm-up (the env decided on their last bars only); 2: every block carries its warm-up.
PROTOCOL = 2
PROTOCOL_NOTE = "this version selects checkpoints on whole validation blocks"
# Metrics reported per fold x seed and strategy (keys of backtest.strategy_metrics).
METRICS = (
    "sharpe_ratio",
    "total_return",
    "max_drawdown",
    "turnover",
    "total_costs",
    "exposure",
    "information_ratio",
    "tracking_error",
)
PAIRED_METRICS = ("sharpe_ratio", "total_return")
RISK_FREE_RATE = 0.0  # the project's Sharpe convention: no interest on cash, rf = 0


# --------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldPlan:
    """Positional slices of one fold: `fit` (train + scalers), `val` (selection), `test`."""

    index: int
    fit: slice
    val: slice
    test: slice

    def take(
        self, bars: dict[str, pd.DataFrame], part: str, history: int = 0
    ) -> dict[str, pd.DataFrame]:
        """The `fit`, `val` or `test` bars of this fold, with `history` earlier bars in front
        (the causal warm-up the env needs before its first decision, see
        `data.env_history`), so the policy trades from the part's first bar."""
        return take_part(bars, getattr(self, part), history)

    def describe(self, index: pd.DatetimeIndex) -> dict[str, Any]:
        """Dates and sizes of the parts (`train_end` is the last bar any training saw)."""
        return {
            "fold": self.index,
            "train_start": str(index[self.fit.start]),
            "fit_end": str(index[self.fit.stop - 1]),
            "val_start": str(index[self.val.start]),
            "train_end": str(index[self.val.stop - 1]),
            "test_start": str(index[self.test.start]),
            "test_end": str(index[self.test.stop - 1]),
            "n_fit": self.fit.stop - self.fit.start,
            "n_val": self.val.stop - self.val.start,
            "n_test": self.test.stop - self.test.start,
        }


def plan_folds(
    n_bars: int,
    n_folds: int,
    embargo: int,
    val_share: float,
    min_bars: int,
    min_train_frac: float | None = None,
    min_fit: int | None = None,
) -> list[FoldPlan]:
    """Expanding-window folds, each training window split into fit + validation tail.

    `val_share` is the validation tail's share of the training window; `min_bars` the fewest
    bars a validation or test block may have (they carry their warm-up in front); `min_fit`
    the fewest the fit part may have (its env warms up on its own first bars; default
    `min_bars`); `min_train_frac` the first training block's share of the history (default
    1 / (K + 1)). DataError when too short.
    """
    min_fit = min_bars if min_fit is None else int(min_fit)
    if n_folds < 1:
        raise ConfigError(f"--folds must be >= 1 (got {n_folds})")
    if not 0.0 < val_share < 1.0:
        raise ConfigError(f"validation share must be in (0, 1), got {val_share}")
    plans = []
    if min_train_frac is not None and not 0.0 < min_train_frac < 1.0:
        raise ConfigError(f"min_train_frac must be in (0, 1), got {min_train_frac}")
    splits = walk_forward_splits(
        n_bars, n_folds=n_folds, embargo=embargo, expanding=True, min_train_frac=min_train_frac
    )
    for fold in splits:
        window = fold.train.stop - fold.train.start
        n_val = int(window * val_share)
        val = slice(fold.train.stop - n_val, fold.train.stop)
        fit = slice(fold.train.start, val.start - embargo)
        plans.append(FoldPlan(fold.index, fit, val, fold.test))
        sizes = {
            "fit": fit.stop - fit.start,
            "val": n_val,
            "test": fold.test.stop - fold.test.start,
        }
        need = {"fit": min_fit, "val": min_bars, "test": min_bars}
        short = {k: v for k, v in sizes.items() if v < need[k]}
        if short:
            part, got = next(iter(short.items()))
            raise DataError(
                f"too little data for {n_folds} walk-forward folds: fold {fold.index} has "
                f"{got} {part} bars (need >= {need[part]}; {n_bars} bars, embargo {embargo}); "
                "use fewer folds or more data"
            )
    return plans


def plan_for(
    cfg: AppConfig, n_bars: int, n_folds: int, min_train_frac: float | None = None
) -> list[FoldPlan]:
    """The folds of `cfg` (embargo, train/val ratio) over `n_bars` bars."""
    d = cfg.data
    return plan_folds(
        n_bars,
        n_folds,
        d.embargo_bars,
        d.val_frac / (d.train_frac + d.val_frac),
        min_bars=WARMUP_BARS + 10,
        min_train_frac=min_train_frac,
        # the fit part's env decides after its own warm-up: a few decisions past it
        min_fit=env_history(cfg) + 10,
    )


def seeds_for(cfg: AppConfig, n_seeds: int) -> list[int]:
    """Training seeds `seed, seed + 1, ...` (ConfigError for fewer than one)."""
    if n_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (got {n_seeds})")
    return [cfg.seed + i for i in range(n_seeds)]


def parse_phases(text: str | Sequence[int]) -> tuple[int, ...]:
    """Phases to train, in order, e.g. "1,2,3" or "1" (ConfigError otherwise)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        phases = tuple(int(str(p).strip()) for p in items if str(p).strip())
    except ValueError:
        raise ConfigError(f"--phases must be a list like 1,2,3 (got {text!r})") from None
    if not phases or phases != tuple(range(1, len(phases) + 1)) or len(phases) > 3:
        raise ConfigError(f"--phases must be 1, 1,2 or 1,2,3 (got {text!r})")
    return phases


def validation_passes(cfg: AppConfig, phase: int) -> int:
    """Validation passes (selection candidates) of one phase run: every `eval_interval`
    iterations and at the last one (as `training.runner.run_phase` does)."""
    total = phase_iterations(cfg, phase)
    every = cfg.phases.eval_interval
    return len({it for it in range(1, total + 1) if it % every == 0 or it == total})


# --------------------------------------------------------------------------------------------
# One fold x seed (runs inside a Tune trial, or directly)
# --------------------------------------------------------------------------------------------


def fold_blocks(
    cfg: AppConfig, bars: dict[str, pd.DataFrame], plan: FoldPlan
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """(fit, val, test) bars of one fold. Validation and test carry the bars before them as
    warm-up (`data.env_history`), so the env decides from each block's first bar, as
    `data.split_for_env` gives a training session's validation: checkpoints are selected on
    the whole validation block. Past bars only feed features and windows; nothing after a
    block is added."""
    history = env_history(cfg)
    return plan.take(bars, "fit"), plan.take(bars, "val", history), plan.take(bars, "test", history)


def trial_name(fold: int, seed: int) -> str:
    """Folder name of one fold x seed under `trials/`."""
    return f"fold{fold:02d}_seed{seed}"


def run_fold_seed(
    cfg: AppConfig,
    bars: dict[str, pd.DataFrame],
    plan: FoldPlan,
    seed: int,
    trial_dir: str | Path,
    phases: tuple[int, ...] = (1, 2, 3),
    report: Callable[[dict[str, Any]], None] | None = None,
    signals: dict[str, pd.Series] | None = None,
) -> dict[str, Any]:
    """Train `phases` on the fold's fit part (seed `seed`), select on its validation part,
    backtest the selected checkpoint once on its test part; write and return the result.

    `signals` (see :func:`supervised_signals`) give the supervised-signal baseline.
    """
    from rl_trading.training.env_bridge import hierarchical_factory  # heavy: ray
    from rl_trading.training.runner import run_phase  # heavy: ray, torch

    trial_dir = Path(trial_dir)
    done = trial_dir / RESULT_FILE
    if done.is_file():
        return json.loads(done.read_text())

    cfg = cfg.model_copy(update={"seed": int(seed)})
    fit, val, test = fold_blocks(cfg, bars, plan)
    factory = hierarchical_factory(cfg, fit, val)
    run_dir = trial_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    val_history: dict[str, list[float]] = {}
    phase_info = []
    t0 = time.monotonic()
    best = None
    for num in phases:
        seen = val_history.setdefault(f"phase{num}", [])
        every = cfg.phases.eval_interval

        def _progress(m: dict[str, Any], _seen: list[float] = seen, _every: int = every) -> None:
            if m["iteration"] % _every == 0 or m["iteration"] == m["total"]:
                _seen.append(float(m.get("val_sharpe", math.nan)))

        res = run_phase(cfg, num, factory, run_dir, resume=True, progress=_progress, tracking=False)
        best = res.best_checkpoint
        phase_info.append(
            {
                "phase": num,
                "iterations": res.iterations,
                "env_steps": res.env_steps,
                "best_val_sharpe": res.best_val_sharpe,
                "validation_passes": validation_passes(cfg, num),
            }
        )
        if report is not None:
            report({"fold": plan.index, "seed": seed, "phase": num, "val": res.best_val_sharpe})
    if not best or best == "None":
        raise CheckpointError(f"fold {plan.index} seed {seed}: training left no checkpoint")
    result = backtest(
        best,
        test,
        cfg,
        seed=seed,
        scaler_bars=fit,
        include_supervised=signals is not None,
        supervised_signals=signals,
    )

    ppy = result.meta["periods_per_year"]  # the run's one calendar (backtest pins it)
    mets = {
        name: {k: float(result.metrics[name].get(k, math.nan)) for k in METRICS}
        for name in result.runs
    }
    for name, run in result.runs.items():  # the project's convention, whatever the backtest's rf
        mets[name]["sharpe_ratio"] = metrics.sharpe_ratio(run.returns, ppy, RISK_FREE_RATE)
        if "limit_bound" in result.metrics[name]:  # a vol-matched baseline held at the limit
            mets[name]["limit_bound"] = float(result.metrics[name]["limit_bound"])
    out = {
        "fold": plan.index,
        "seed": int(seed),
        "checkpoint": str(best),
        "phases": phase_info,
        "validation_sharpes": val_history,
        "periods_per_year": float(ppy),
        "train_s": time.monotonic() - t0,
        "index": [str(t) for t in next(iter(result.runs.values())).index],
        "strategies": {
            name: {
                "metrics": mets[name],
                "equity": np.asarray(run.equity, dtype=np.float64).tolist(),
            }
            for name, run in result.runs.items()
        },
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, done)  # atomic: a result on disk is always complete
    return out


def _tune_trial(
    config: dict[str, Any],
    cfg_dict: dict[str, Any],
    bars: dict[str, pd.DataFrame],
    plans: list[FoldPlan],
    out_dir: str,
    phases: tuple[int, ...],
    signals: dict[str, pd.Series] | None = None,
) -> None:
    """Tune function trainable: one fold x seed (reports each phase, then the test Sharpe)."""
    from ray import tune  # heavy: ray

    cfg = AppConfig.model_validate(cfg_dict)
    fold, seed = int(config["unit"]["fold"]), int(config["unit"]["seed"])
    trial_dir = Path(out_dir) / "trials" / trial_name(fold, seed)

    def report(m: dict[str, Any]) -> None:
        tune.report({"phase": m["phase"], "best_val_sharpe": m["val"] or math.nan})

    res = run_fold_seed(
        cfg, bars, plans[fold], seed, trial_dir, phases, report=report, signals=signals
    )
    policy = res["strategies"]["policy"]["metrics"]
    tune.report({"phase": phases[-1], "test_sharpe": policy["sharpe_ratio"], "done": True})


# --------------------------------------------------------------------------------------------
# Aggregation (pure: from the per fold x seed results)
# --------------------------------------------------------------------------------------------


def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided t-interval over independent units (`n` = number of values)."""
    s = mean_ci(list(values), confidence)
    return {"mean": s["mean"], "std": s["std"], "ci95": [s["ci_low"], s["ci_high"]], "n": s["n"]}


def _returns(equity: Sequence[float]) -> np.ndarray:
    return simple_returns(np.asarray(equity, dtype=np.float64))


def aggregate(results: list[dict[str, Any]], capital: float = 1.0) -> dict[str, Any]:
    """Per-fold (seed-averaged) metrics, intervals over folds, paired differences and the
    stitched out-of-sample curves of every strategy."""
    folds = sorted({r["fold"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    fold_ppy = [
        float(np.mean([r["periods_per_year"] for r in results if r["fold"] == k])) for k in folds
    ]
    strategies = list(results[0]["strategies"])
    for r in results[1:]:  # a strategy missing in some run is reported only where complete
        strategies = [s for s in strategies if s in r["strategies"]]
    by_fold = {k: [r for r in results if r["fold"] == k] for k in folds}
    fold_values: dict[str, dict[str, list[float]]] = {
        s: {m: [] for m in METRICS} for s in strategies
    }
    stitched_r: dict[str, list[np.ndarray]] = {s: [] for s in strategies}
    stitched_t: list[str] = []
    boundaries = []
    for k in folds:
        runs = by_fold[k]
        for s in strategies:
            for m in METRICS:
                fold_values[s][m].append(
                    float(np.mean([r["strategies"][s]["metrics"].get(m, math.nan) for r in runs]))
                )
        n = min(len(r["strategies"][s]["equity"]) for r in runs for s in strategies)
        boundaries.append(len(stitched_t))
        stitched_t.extend(runs[0]["index"][1:n])
        for s in strategies:  # the seeds as one equal-weight book: mean of per-bar returns
            rets = np.mean([_returns(r["strategies"][s]["equity"][:n]) for r in runs], axis=0)
            stitched_r[s].append(rets)
    summary = {s: {m: interval(v) for m, v in fold_values[s].items()} for s in strategies}
    # vol-matched baselines: in how many folds x seeds the policy's limit, not its volatility,
    # set the scale (the baseline then holds less risk than the policy)
    limit_bound = {
        s: [
            int(sum(r["strategies"][s]["metrics"].get("limit_bound", 0.0) > 0 for r in by_fold[k]))
            for k in folds
        ]
        for s in strategies
        if any("limit_bound" in r["strategies"][s]["metrics"] for r in results)
    }
    paired = {}
    for b in strategies:
        if b == "policy" or "policy" not in strategies:
            continue
        paired[b] = {}
        for m in PAIRED_METRICS:
            diff = np.subtract(fold_values["policy"][m], fold_values[b][m])
            paired[b][m] = {**interval(diff.tolist()), "per_fold": diff.tolist()}
    # each fold's bars in its own calendar: the stitched series' bars per year are its bars
    # over the years its folds span (each fold's bars / its periods_per_year)
    fold_bars = [len(x) for x in stitched_r[strategies[0]]] if strategies else []
    years = sum(n / p for n, p in zip(fold_bars, fold_ppy, strict=True) if p > 0)
    ppy = float(sum(fold_bars) / years) if years > 0 else fold_ppy[0]
    stitched = {}
    for s in strategies:
        r = np.concatenate(stitched_r[s]) if stitched_r[s] else np.zeros(0)
        equity = capital * np.concatenate([[1.0], np.cumprod(1.0 + r)])
        stats = metrics.summarize(equity, periods_per_year=ppy)  # rf = 0 (RISK_FREE_RATE)
        stitched[s] = {
            "sharpe_ratio": stats["sharpe_ratio"],
            "total_return": stats["total_return"],
            "max_drawdown": stats["max_drawdown"],
            "n_periods": stats["n_periods"],
            "equity": equity.tolist(),
            "returns": r,
        }
    return {
        "folds": folds,
        "seeds": seeds,
        "periods_per_year": ppy,
        "fold_periods_per_year": fold_ppy,
        "fold_values": fold_values,
        "limit_bound": limit_bound,
        "summary": summary,
        "paired": paired,
        "stitched": stitched,
        "stitched_index": stitched_t,
        "fold_boundaries": boundaries,
    }


def count_trials(results: list[dict[str, Any]], n_seeds: int) -> dict[str, int]:
    """Selection trials: validation passes over all folds x seeds x phases, plus the seeds."""
    passes = sum(p["validation_passes"] for r in results for p in r["phases"])
    return {
        "validation_passes": int(passes),
        "seeds": int(n_seeds),
        "n_trials": int(passes + n_seeds),
    }


def grade(sharpe: float, max_drawdown: float, dsr: float, cfg: AppConfig) -> str:
    """The registry's RL grade; `max_drawdown` is measured at `evaluation.grade_volatility`
    (so sitting in cash earns no drawdown credit), `dsr` caps it at C below the threshold."""
    return grade_rl(sharpe, max_drawdown, cfg.evaluation, dsr=dsr)


def build_report(
    results: list[dict[str, Any]],
    cfg: AppConfig,
    plans_info: list[dict[str, Any]],
    phases: tuple[int, ...],
    n_seeds: int,
    ledger_trials: int = 0,
    extra_trials: int = 0,
) -> dict[str, Any]:
    """The `walk_forward.json` content from the per fold x seed results.

    The DSR is deflated for this walk-forward's own trials (:func:`count_trials`) or, when
    larger, `ledger_trials` (every trial the ledger holds on the data, this run's included),
    plus `extra_trials` (work done outside the tool).
    """
    agg = aggregate(results, capital=cfg.env.initial_capital)
    trials = count_trials(results, n_seeds)
    trials["this_run"] = trials["n_trials"]
    trials["ledger"] = int(ledger_trials)
    trials["extra"] = int(extra_trials)
    trials["n_trials"] = max(1, max(trials["this_run"], int(ledger_trials)) + int(extra_trials))
    policy_r = agg["stitched"]["policy"]["returns"]
    psr = metrics.probabilistic_sharpe_ratio(policy_r)
    dsr = metrics.deflated_sharpe_ratio(policy_r, trials["n_trials"])
    st = agg["stitched"]["policy"]
    dd_matched = metrics.max_drawdown_at_volatility(
        policy_r, agg["periods_per_year"], cfg.evaluation.grade_volatility
    )
    policy = {
        "psr": psr,
        "dsr": dsr,
        "n_trials": trials["n_trials"],
        "n_trials_detail": trials,
        "stitched_sharpe": st["sharpe_ratio"],
        "stitched_total_return": st["total_return"],
        "stitched_max_drawdown": st["max_drawdown"],
        "stitched_max_drawdown_vol_matched": dd_matched,
        "grade": grade(st["sharpe_ratio"], dd_matched, dsr, cfg),
    }
    runs = [
        {"fold": r["fold"], "seed": r["seed"], "strategy": s, **v["metrics"]}
        for r in results
        for s, v in r["strategies"].items()
    ]
    d = cfg.data
    return {
        "retrained": True,
        "protocol": (
            "expanding-window folds; per fold x seed: scalers fit and phases trained on the "
            "fit part, best checkpoint selected on the validation tail of the training window, "
            "one test pass; validation and test decided on from their first bar (warm-up "
            f"from the bars before; protocol {PROTOCOL}); intervals over folds (seeds averaged "
            "within a fold)"
        ),
        "periods_per_year": agg["periods_per_year"],
        "risk_free_rate": RISK_FREE_RATE,
        "embargo_bars": d.embargo_bars,
        "phases": list(phases),
        "budgets": {f"phase{p}_timesteps": phase_timesteps(cfg, p) for p in phases},
        "eval_interval": cfg.phases.eval_interval,
        "n_folds": len(agg["folds"]),
        "seeds": agg["seeds"],
        "folds": plans_info,
        "n_trials": trials["n_trials"],
        "n_trials_rule": (
            "validation passes used for checkpoint selection over all folds x seeds x phases, "
            "plus the number of seeds; or, when larger, every trial in the ledger on this "
            "data (this run included); plus --extra-trials"
        ),
        "fold_periods_per_year": agg["fold_periods_per_year"],
        "psr": psr,
        "dsr": dsr,
        "policy": policy,
        "summary": agg["summary"],
        "fold_values": agg["fold_values"],
        "limit_bound": agg["limit_bound"],
        "paired_vs_policy": agg["paired"],
        "stitched": {
            s: {k: v for k, v in st_.items() if k not in ("equity", "returns")}
            for s, st_ in agg["stitched"].items()
        },
        "runs": runs,
        "validation_sharpes": {
            f"fold{r['fold']}_seed{r['seed']}": r["validation_sharpes"] for r in results
        },
        "_plot": {
            "index": agg["stitched_index"],
            "boundaries": agg["fold_boundaries"],
            "equity": {s: v["equity"] for s, v in agg["stitched"].items()},
        },
    }


def write_equity_plot(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """PNG of the stitched out-of-sample equity of the policy beside every baseline."""
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib

    plot = report["_plot"]
    times = pd.to_datetime(plot["index"])
    fig, ax = plt.subplots(figsize=(11, 5))
    for name, equity in plot["equity"].items():
        eq = np.asarray(equity[1:], dtype=np.float64)
        ax.plot(
            times[: len(eq)],
            eq,
            label=name,
            linewidth=2.0 if name == "policy" else 1.0,
            zorder=3 if name == "policy" else 2,
        )
    for b in plot["boundaries"][1:]:
        if b < len(times):
            ax.axvline(times[b], color="grey", linestyle=":", linewidth=0.8)
    n, s = report["n_folds"], len(report["seeds"])
    ax.set_title(
        title
        or f"Walk-forward out-of-sample equity ({n} retrained folds x {s} seed(s), stitched; "
        f"DSR {report['dsr']:.2f})"
    )
    ax.set_xlabel("Time (UTC, test blocks only; dotted lines: fold boundaries)")
    ax.set_ylabel("Equity (account currency, net of costs)")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# The whole walk-forward
# --------------------------------------------------------------------------------------------


@dataclass
class WalkForwardPlan:
    """Everything decided before Ray starts: bars, folds, seeds, phases, output folder."""

    cfg: Any
    bars: dict[str, pd.DataFrame]
    plans: list[FoldPlan]
    folds_info: list[dict[str, Any]]
    seeds: list[int]
    phases: tuple[int, ...]
    out_dir: Path
    signals: dict[str, pd.Series] | None = None

    @property
    def units(self) -> list[tuple[int, int]]:
        """Every (fold, seed) pair."""
        return [(p.index, s) for p in self.plans for s in self.seeds]

    def pending(self) -> list[tuple[int, int]]:
        """(fold, seed) pairs without a finished result on disk."""
        return [
            (k, s)
            for k, s in self.units
            if not (self.out_dir / "trials" / trial_name(k, s) / RESULT_FILE).is_file()
        ]


def prepare(
    cfg: AppConfig,
    n_folds: int | None = None,
    n_seeds: int | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    phases: str | Sequence[int] = (1, 2, 3),
    bars: dict[str, pd.DataFrame] | None = None,
    min_train_frac: float | None = None,
    supervised: bool = True,
) -> WalkForwardPlan:
    """Check every input and load the data (before Ray): one-line errors for bad input.

    With `supervised`, the supervised-signal baseline's out-of-sample P(up) is computed once
    here (:func:`supervised_signals`) and traded on every fold's test block.
    """
    n_folds = cfg.data.walk_forward_folds if n_folds is None else int(n_folds)
    n_seeds = len(cfg.evaluation.seeds) if n_seeds is None else int(n_seeds)
    seeds = seeds_for(cfg, n_seeds)
    if n_folds < 1:
        raise ConfigError(f"--folds must be >= 1 (got {n_folds})")
    phase_tuple = parse_phases(phases)
    out = Path(out_dir or "runs/walk_forward").resolve()
    plan_path = out / PLAN_FILE
    if bars is None:
        bars = observed_market(cfg)
    index = next(iter(bars.values())).index
    plans = plan_for(cfg, len(index), n_folds, min_train_frac)
    info = [p.describe(index) for p in plans]

    fingerprint = {
        "protocol": PROTOCOL,
        "folds": info,
        "seeds": seeds,
        "phases": list(phase_tuple),
        "config_hash": config_hash(cfg),
    }
    if plan_path.is_file():
        if not resume:
            raise ConfigError(f"{out} already holds a walk-forward; use --resume or another --out")
        started = json.loads(plan_path.read_text())
        now = json.loads(json.dumps(fingerprint))
        if started != now:
            what = [k for k in ("folds", "seeds", "phases") if started.get(k) != now[k]]
            if started.get("protocol", 1) != PROTOCOL:
                what.insert(0, f"protocol (version {started.get('protocol', 1)}; {PROTOCOL_NOTE})")
            if started.get("config_hash") != now["config_hash"]:
                # a hash only: the keys that differ are unknown (an upgrade that added a
                # setting changes it too, whatever the setting's value)
                what.append("config (a setting, or this version's settings, differ)")
            raise ConfigError(
                f"--resume: {out} was started with other {', '.join(what) or 'settings'}; "
                "use another --out"
            )
    signals = supervised_signals(cfg, bars) if supervised else None
    out.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(fingerprint, indent=2))
    return WalkForwardPlan(cfg, bars, plans, info, seeds, phase_tuple, out, signals)


def supervised_signals(cfg: AppConfig, bars: dict[str, pd.DataFrame]) -> dict[str, pd.Series]:
    """Out-of-sample P(up) of the analyst model per symbol, on the bars' own timeframe.

    :class:`~rl_trading.supervised.signals.SignalProvider` refits walk-forward (every
    `refit_every` bars, only on labels known `data.embargo_bars` before), so the value at any
    test bar comes from a model fitted on earlier bars only, like the retrained policy.
    """
    provider = SignalProvider.from_config(cfg, timeframes=None)
    out = {}
    for sym, frame in bars.items():
        col = provider.compute(frame).iloc[:, 0]
        out[sym] = col.rename("analyst_" + cfg.data.timeframe)
    return out


def trial_resources(cfg: AppConfig) -> Any:
    """One CPU for the trial (learner + validation) plus its env runners' CPUs (and their
    custom resources): RLlib places the runners in the trial's placement group."""
    from ray import tune  # heavy: ray

    res = cfg.resources
    runner = {"CPU": float(res.num_cpus_per_env_runner), **res.custom_resources_per_env_runner}
    bundles = [{"CPU": 1.0}] + [dict(runner) for _ in range(res.num_env_runners)]
    return tune.PlacementGroupFactory(bundles)


def fit_resources(cfg: AppConfig, cluster: dict[str, Any], n_trials: int) -> tuple[Any, str]:
    """`cfg` with the env runners per trial that Ray can place (`ray_utils.fit_trial_runners`:
    0, sampling in the trial's process, when a trial with all of them cannot be placed) and the
    one line saying what was chosen."""
    res = cfg.resources
    runners, line = fit_trial_runners(
        cluster,
        res.num_env_runners,
        res.num_cpus_per_env_runner,
        n_trials=n_trials,
        what="walk-forward trials",
        custom=res.custom_resources_per_env_runner,
    )
    if runners != res.num_env_runners:
        cfg = cfg.model_copy(
            update={"resources": res.model_copy(update={"num_env_runners": runners})}
        )
    return cfg, line


class TrialProgress:
    """Tune callback: one line per finished phase and per finished fold x seed (the project's
    progress instead of Tune's status tables). Driver-only: it pickles to a silent copy."""

    def __init__(self, total: int, notify: Callable[[str], None] | None) -> None:
        self.total, self.notify, self.done = total, notify, 0
        self.t0 = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"total": self.total}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["total"], None)

    def _say(self, text: str) -> None:
        if self.notify is not None:
            self.notify(f"[{time.monotonic() - self.t0:6.0f} s] {text}")

    def on_trial_result(self, trial: Any, result: dict[str, Any]) -> None:
        """A phase finished (its best validation Sharpe) or the test pass (its Sharpe)."""
        unit = trial.config.get("unit", {})
        name = f"fold {unit.get('fold')} seed {unit.get('seed')}"
        if result.get("done"):
            self.done += 1
            self._say(
                f"{name}: test Sharpe {float(result.get('test_sharpe', math.nan)):.2f} "
                f"({self.done}/{self.total} trials done)"
            )
        elif "best_val_sharpe" in result:
            val = float(result.get("best_val_sharpe", math.nan))
            self._say(f"{name}: phase {result.get('phase')} trained, best val Sharpe {val:.2f}")

    def callback(self) -> Any:
        """The Tune `Callback` forwarding to this object."""
        from ray.tune import Callback  # heavy: ray

        owner = self

        class _Forward(Callback):
            def __getstate__(self) -> dict[str, Any]:
                return {}

            def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
                owner.on_trial_result(trial, result)

        return _Forward()


def run_trials(
    plan: WalkForwardPlan,
    address: str | None = None,
    verbose: int = 0,
    notify: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the pending folds x seeds as Tune trials; return every result (fold, seed order).

    Each trial is sized from the CPUs Ray has (`fit_resources`; `notify` gets the line saying
    what was chosen, then one line per finished phase and trial). `verbose` > 0 shows Tune's
    own status tables too.
    """
    from ray import tune  # heavy: ray

    cfg = plan.cfg
    pending = plan.pending()
    if pending:
        addr = address or cfg.resources.address
        local = resolve_address(addr) is None
        cluster = ray_utils.init_ray(
            addr, cfg.resources.num_cpus, **({"log_to_driver": False} if local else {})
        )
        cfg, line = fit_resources(cfg, cluster, len(pending))
        if notify is not None:
            notify(line)
        progress = TrialProgress(len(pending), notify)
        trainable = tune.with_resources(
            tune.with_parameters(
                _tune_trial,
                cfg_dict=cfg.model_dump(mode="json"),
                bars=plan.bars,
                plans=plan.plans,
                out_dir=str(plan.out_dir),
                phases=plan.phases,
                signals=plan.signals,
            ),
            trial_resources(cfg),
        )
        grid = [{"fold": k, "seed": s} for k, s in pending]
        tuner = tune.Tuner(
            trainable,
            param_space={"unit": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(
                trial_name_creator=lambda t: trial_name(**t.config["unit"]),
                trial_dirname_creator=lambda t: trial_name(**t.config["unit"]),
            ),
            run_config=tune.RunConfig(
                name=time.strftime("tune_%Y%m%d-%H%M%S"),
                storage_path=str(plan.out_dir / "tune"),
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[progress.callback()],
                verbose=verbose,
            ),
        )
        results = tuner.fit()
        if results.errors:
            first = str(results.errors[0]).strip().splitlines()
            raise RLTradingError(
                f"{len(results.errors)} of {len(results)} walk-forward trials failed "
                f"({first[-1][:200] if first else 'unknown error'}); finished ones are kept: "
                f"continue with --resume --out {plan.out_dir}"
            )
    out = []
    for k, s in plan.units:
        path = plan.out_dir / "trials" / trial_name(k, s) / RESULT_FILE
        if not path.is_file():
            raise RLTradingError(f"trial fold {k} seed {s} left no {RESULT_FILE}; use --resume")
        out.append(json.loads(path.read_text()))
    return out


def record_in_ledger(plan: WalkForwardPlan, results: list[dict[str, Any]]) -> int:
    """Record the walk-forward's trials in the ledger (one row per fold x seed: its validation
    passes; one per seed) under the data's fingerprint; return every trial held on that data."""
    fp, url = ledger.market_fingerprint(plan.cfg, plan.bars), ledger.ledger_url(plan.cfg)
    base = {"config_hash": config_hash(plan.cfg), "phases": list(plan.phases)}
    configs: list[dict[str, Any]] = []
    counts = []
    for r in results:
        configs.append({**base, "fold": r["fold"], "seed": r["seed"]})
        counts.append(sum(int(p["validation_passes"]) for p in r["phases"]))
    for seed in plan.seeds:
        configs.append({**base, "seed": seed, "unit": "seed"})
        counts.append(1)
    ledger.record_trials(fp, "walk_forward", configs, str(plan.out_dir), counts, url=url)
    return ledger.count_trials(fp, url)


def walk_forward_retrain(
    plan: WalkForwardPlan,
    address: str | None = None,
    verbose: int = 0,
    notify: Callable[[str], None] | None = None,
    extra_trials: int = 0,
) -> dict[str, Any]:
    """Run (or resume) the trials, record them in the trial ledger, then write
    `walk_forward.json` and the equity PNG."""
    t0 = time.monotonic()
    results = run_trials(plan, address=address, verbose=verbose, notify=notify)
    ledger_trials = record_in_ledger(plan, results)
    report = build_report(
        results,
        plan.cfg,
        plan.folds_info,
        plan.phases,
        len(plan.seeds),
        ledger_trials=ledger_trials,
        extra_trials=extra_trials,
    )
    png = write_equity_plot(report, plan.out_dir / PLOT_FILE)
    report.pop("_plot")
    report["wall_s"] = time.monotonic() - t0
    report["files"] = {"json": str(plan.out_dir / REPORT_FILE), "png": str(png)}
    (plan.out_dir / REPORT_FILE).write_text(json.dumps(json_safe(report), indent=2))
    return report


def table_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per strategy: fold-level mean and 95% interval of net Sharpe, the paired
    difference to the policy, and the mean drawdown, turnover, costs, gross exposure,
    information ratio and tracking error (against the policy's benchmark, else buy-and-hold)."""
    rows = []
    for name, mets in report["summary"].items():
        sharpe = mets["sharpe_ratio"]
        paired = report["paired_vs_policy"].get(name, {}).get("sharpe_ratio")
        rows.append(
            {
                "strategy": name,
                "sharpe": sharpe["mean"],
                "sharpe_ci95": sharpe["ci95"],
                "policy_minus": None if paired is None else paired["mean"],
                "policy_minus_ci95": None if paired is None else paired["ci95"],
                "total_return": mets["total_return"]["mean"],
                "max_drawdown": mets["max_drawdown"]["mean"],
                "turnover": mets["turnover"]["mean"],
                "total_costs": mets["total_costs"]["mean"],
                "exposure": mets["exposure"]["mean"],
                "information_ratio": mets.get("information_ratio", {}).get("mean"),
                "tracking_error": mets.get("tracking_error", {}).get("mean"),
                "dsr": report["dsr"] if name == "policy" else None,
                "limit_bound": (report.get("limit_bound") or {}).get(name),
            }
        )
    return rows


def render_table(report: dict[str, Any], title: str = "Walk-forward (retrained)") -> Any:
    """Rich renderable of :func:`table_rows` (the CLI and the benchmark print it): one row per
    strategy, columns packed into as many tables as the console width needs (no cut cells)."""

    def num(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None or not math.isfinite(float(v)) else fmt.format(v)

    def ci(v: Any) -> str:
        return "-" if v is None else escape(f"[{num(v[0])}, {num(v[1])}]")

    n = report["n_folds"]
    rows = table_rows(report)
    cols = [
        ("net Sharpe", [num(r["sharpe"]) for r in rows]),
        ("95% CI", [ci(r["sharpe_ci95"]) for r in rows]),
        ("policy - it", [num(r["policy_minus"]) for r in rows]),
        ("its 95% CI", [ci(r["policy_minus_ci95"]) for r in rows]),
        ("return", [num(r["total_return"], "{:+.2%}") for r in rows]),
        ("max DD", [num(r["max_drawdown"], "{:.2%}") for r in rows]),
        ("turnover", [num(r["turnover"], "{:.4f}") for r in rows]),
        ("costs", [num(r["total_costs"], "{:,.0f}") for r in rows]),
        ("gross exp.", [num(r["exposure"], "{:.2f}") for r in rows]),
        ("IR", [num(r["information_ratio"]) for r in rows]),
        ("TE", [num(r["tracking_error"], "{:.1%}") for r in rows]),
    ]
    if any(r["limit_bound"] is not None for r in rows):
        n_units = n * len(report["seeds"])
        cols.append(
            (
                "at limit",
                [
                    "-" if r["limit_bound"] is None else f"{sum(r['limit_bound'])}/{n_units}"
                    for r in rows
                ],
            )
        )
    head = (
        f"{title}: {n} folds x {len(report['seeds'])} seeds, means over folds (95% CI, "
        f"n = {n}); DSR {num(report['dsr'], '{:.3f}')} (n_trials {report['n_trials']}), "
        f"PSR {num(report['psr'], '{:.3f}')}"
    )
    return PackedTables(head, "strategy", [escape(r["strategy"]) for r in rows], cols)
