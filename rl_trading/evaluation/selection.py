"""What an evaluation is run on and what it counts: the evaluated bars (`--data` / `--split`),
the trials behind a policy (its run's selection passes, the trial ledger) and the metrics the
registry grades."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_trading import ledger
from rl_trading.data import align, read_bars, split_for_env
from rl_trading.data.schema import symbol_files
from rl_trading.data.validation import check_fits_model
from rl_trading.errors import DataError, RegistryError
from rl_trading.registry import TAG, ModelRegistry
from rl_trading.supervised.signals import observed_market
from rl_trading.training.state import RunState

if TYPE_CHECKING:
    import pandas as pd

    from rl_trading.config import AppConfig


def select_bars(
    cfg: AppConfig, data: str | Path | None = None, split: str = "test"
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame] | None, str]:
    """(evaluated bars, training bars for a scaler fallback or None, description).

    `data` is one bars file (symbol = file name up to the first `_` or `.`) or a folder of
    them; otherwise `split` (train / val / test) of the configured market, time-ordered with
    the configured embargo; val / test carry the causal history the env needs before its first
    decision (`data.split_for_env`), so the policy trades from the split's first bar.
    """
    if data is not None:
        path = Path(data)
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        files = [f for f in files if f.name.endswith((".csv", ".csv.gz", ".parquet"))]
        if not files:
            raise DataError(f"no bars files (.csv, .csv.gz, .parquet) at {path}")
        by_symbol = symbol_files(files)
        bars = {}
        for sym, f in by_symbol.items():  # each file spaced and on the model's calendar
            bars[sym] = frame = read_bars(f, tz=cfg.data.tz, max_price=cfg.data.max_price)
            check_fits_model(frame, cfg.data.timeframe, cfg.data.periods_per_year, str(f))
        if len(bars) > 1:
            bars = align(bars, policy=cfg.data.gap_policy, max_ffill=cfg.data.max_ffill_bars)
        return observed_market(cfg, bars), None, f"{path} ({len(bars)} instrument(s))"
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split '{split}' (train, val or test)")
    market = observed_market(cfg)
    parts = split_for_env(market, cfg)  # val / test keep their first bars (causal history)
    return getattr(parts, split), parts.train, f"{split} split of {cfg.data.source} market"


def graded_metrics(pm: dict[str, Any], n_trials: int) -> dict[str, float]:
    """What the registry grades and records of a policy's backtest metrics (`pm`): the same
    keys for a checkpoint and an ensemble."""
    return {
        "sharpe": pm["sharpe_ratio"],
        "max_drawdown": pm["max_drawdown"],
        "max_drawdown_vol_matched": pm["max_drawdown_vol_matched"],
        "total_return": pm["total_return"],
        "win_rate": pm["win_rate"],
        "sortino": pm["sortino_ratio"],
        "psr": pm["psr"],
        "dsr": pm["dsr"],
        "n_trials": float(n_trials),
        # against the policy's benchmark (env.benchmark), else buy-and-hold (backtest.py)
        "information_ratio": pm.get("information_ratio", float("nan")),
        "tracking_error": pm.get("tracking_error", float("nan")),
    }


def selection_trials(run_dir: Path | None) -> list[float]:
    """Validation Sharpes of every checkpoint evaluated for selection in a run (all phases),
    read through `RunState` (the one state.json reader). Tuning trials (PBT, Optuna) are not in
    a run dir: the trial ledger counts them (:mod:`rl_trading.ledger`)."""
    if run_dir is None or not (run_dir / "state.json").is_file():
        return []
    return [float(s) for s in RunState.load(run_dir).selection_trials()]


def own_trials(
    source: Any, cfg: AppConfig, periods_per_year: float | None = None
) -> tuple[int, list[float] | None, Path | None]:
    """(trials behind a policy source by its own record, their per-period Sharpes or None, its
    run dir): a checkpoint in a run dir counts the run's selection passes, a registered model
    its recorded `n_trials`; anything else one trial. `periods_per_year` (the run's) turns the
    recorded annualised validation Sharpes into per-period ones."""
    if isinstance(source, str | Path) and Path(str(source)).exists():
        run_dir = _run_dir_of(Path(str(source)))
        trials = selection_trials(run_dir)
        if not trials:
            return 1, None, run_dir
        ppy = float(periods_per_year or cfg.data.periods_per_year or 0.0)
        per = [x / math.sqrt(ppy) for x in trials if math.isfinite(x)] if ppy > 0 else []
        return len(trials), (per if len(per) >= 2 else None), run_dir
    if isinstance(source, str):
        try:
            rec = ModelRegistry(cfg=cfg).resolve(source)
        except RegistryError:
            return 1, None, None
        return max(1, int(rec.tags.get(TAG + "n_trials") or 1)), None, None
    return 1, None, None


def record_selection_passes(fingerprint: str, run_dir: Path | None, cfg: AppConfig) -> None:
    """Put a training run's checkpoint selection passes into the trial ledger (idempotent)."""
    passes = selection_trials(run_dir)
    if run_dir is None or not passes:
        return
    configs = [{"pass": i} for i in range(len(passes))]
    source = str(Path(run_dir).resolve())
    ledger.record_trials(fingerprint, "training", configs, source, url=ledger.ledger_url(cfg))


def trial_count(
    source: Any, cfg: AppConfig, periods_per_year: float | None = None, extra_trials: int = 0
) -> tuple[int, list[float] | None]:
    """(trials tried, their per-period Sharpes or None) behind a policy source, for its DSR:
    its own record (:func:`own_trials`) or, when larger, every trial the ledger holds on the
    configured market (a run's selection passes are recorded there first), plus
    `extra_trials` (work done outside the tool). When the configured market cannot be loaded
    here, the source's own record alone."""
    n_own, sharpes, run_dir = own_trials(source, cfg, periods_per_year)
    try:
        fp = ledger.market_fingerprint(cfg)
    except DataError:  # the training market is not here (e.g. `backtest --data` elsewhere):
        return max(1, n_own + int(extra_trials)), sharpes  # the source's own record only
    record_selection_passes(fp, run_dir, cfg)
    n = max(n_own, ledger.count_trials(fp, ledger.ledger_url(cfg)))
    return max(1, n + int(extra_trials)), sharpes


def _run_dir_of(checkpoint: Path) -> Path | None:
    for parent in [checkpoint, *checkpoint.resolve().parents][:5]:
        if (parent / "state.json").is_file():
            return parent
    return None
