"""Evaluation: backtests against baselines, walk-forward CIs, reports, ensembles, ONNX export.

Also the glue the CLI uses: choosing the evaluated bars (`--data` / `--split`) and registering
a trained checkpoint with its backtest metrics, preprocessing and lineage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from rl_trading.config import AppConfig
    from rl_trading.registry import ModelRecord


def select_bars(
    cfg: AppConfig, data: str | Path | None = None, split: str = "test"
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame] | None, str]:
    """(evaluated bars, training bars for a scaler fallback or None, description).

    `data` is one bars file (symbol = file name up to the first `_` or `.`) or a folder of
    them; otherwise `split` (train / val / test) of the configured market, time-ordered with
    the configured embargo; val / test carry the causal history the env needs before its first
    decision (`data.split_for_env`), so the policy trades from the split's first bar.
    """
    from rl_trading.data import align, read_bars, split_for_env
    from rl_trading.data.validation import check_fits_model
    from rl_trading.errors import DataError
    from rl_trading.supervised.signals import observed_market

    if data is not None:
        path = Path(data)
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        files = [f for f in files if f.name.endswith((".csv", ".csv.gz", ".parquet"))]
        if not files:
            raise DataError(f"no bars files (.csv, .csv.gz, .parquet) at {path}")
        bars = {}
        for f in files:  # each file spaced and on the calendar of the model's bars
            bars[f.name.split(".")[0].split("_")[0].upper()] = frame = read_bars(f)
            check_fits_model(frame, cfg.data.timeframe, cfg.data.periods_per_year, str(f))
        if len(bars) > 1:
            bars = align(bars, policy=cfg.data.gap_policy, max_ffill=cfg.data.max_ffill_bars)
        return observed_market(cfg, bars), None, f"{path} ({len(bars)} instrument(s))"
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split '{split}' (train, val or test)")
    market = observed_market(cfg)
    parts = split_for_env(market, cfg)  # val / test keep their first bars (causal history)
    return getattr(parts, split), parts.train, f"{split} split of {cfg.data.source} market"


def training_preprocessing(
    cfg: AppConfig, train_bars: dict[str, pd.DataFrame], scalers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a policy needs to see data like it did in training: features, window, scalers,
    training range (stored with every checkpoint and registered model).

    The scalers (unless given, already fit) are fit on the training split exactly as training
    fits them (`envs.common.prepare_instrument` on each instrument's training bars).
    """
    from envs.common import prepare_instrument
    from rl_trading.config import periods_per_year_of
    from rl_trading.data import FEATURE_COLUMNS, WARMUP_BARS, fingerprint
    from rl_trading.data.features import signal_columns

    first = next(iter(train_bars.values()))
    return {
        "periods_per_year": periods_per_year_of(cfg, train_bars),
        "calendar": cfg.data.calendar,
        "features": list(FEATURE_COLUMNS) + signal_columns(first),
        "warmup_bars": WARMUP_BARS,
        "window_size": cfg.train.window_size,
        "timeframe": cfg.data.timeframe,
        "symbols": list(train_bars),
        "scalers": {
            s: (scalers[s] if scalers else prepare_instrument(f, None, s).scaler).to_dict()
            for s, f in train_bars.items()
        },
        "train_fingerprint": fingerprint(train_bars),
        "train_start": str(first.index[0]),  # backtests refuse overlapping dates by default
        "train_end": str(first.index[-1]),
    }


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
    a run dir: the trial ledger counts them (:mod:`rl_trading.evaluation.ledger`)."""
    from rl_trading.training.state import RunState

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
    import math

    if isinstance(source, str | Path) and Path(str(source)).exists():
        run_dir = _run_dir_of(Path(str(source)))
        trials = selection_trials(run_dir)
        if not trials:
            return 1, None, run_dir
        ppy = float(periods_per_year or cfg.data.periods_per_year or 0.0)
        per = [x / math.sqrt(ppy) for x in trials if math.isfinite(x)] if ppy > 0 else []
        return len(trials), (per if len(per) >= 2 else None), run_dir
    if isinstance(source, str):
        from rl_trading.errors import RegistryError
        from rl_trading.registry import TAG, ModelRegistry

        try:
            rec = ModelRegistry(cfg=cfg).resolve(source)
        except RegistryError:
            return 1, None, None
        return max(1, int(rec.tags.get(TAG + "n_trials") or 1)), None, None
    return 1, None, None


def record_selection_passes(fingerprint: str, run_dir: Path | None, cfg: AppConfig) -> None:
    """Put a training run's checkpoint selection passes into the trial ledger (idempotent)."""
    from rl_trading.evaluation import ledger

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
    from rl_trading.errors import DataError
    from rl_trading.evaluation import ledger

    n_own, sharpes, run_dir = own_trials(source, cfg, periods_per_year)
    try:
        fp = ledger.market_fingerprint(cfg)
    except DataError:  # the training market is not here (e.g. `backtest --data` elsewhere):
        return max(1, n_own + int(extra_trials)), sharpes  # the source's own record only
    record_selection_passes(fp, run_dir, cfg)
    n = max(n_own, ledger.count_trials(fp, ledger.ledger_url(cfg)))
    return max(1, n + int(extra_trials)), sharpes


def register_policy(
    checkpoint: str | Path,
    cfg: AppConfig,
    model_type: str | None = None,
    split: str = "test",
    run_dir: str | Path | None = None,
    bump: str | None = None,
    extra_trials: int = 0,
) -> tuple[ModelRecord, Any]:
    """Backtest a trained checkpoint on `split`, then register it graded by that backtest.

    The grade comes from the test split by default: checkpoints were selected on validation,
    so the test split is data no selection step saw (grading on `val` caps the grade at C).
    The trial count is every trial the ledger (:mod:`rl_trading.evaluation.ledger`) holds on
    the market (the run's validation passes, recorded first; tuning runs, walk-forwards,
    benchmarks, earlier test-split selections), plus `extra_trials`; the DSR is deflated for
    it. A registration graded on the test split is itself recorded as a selection.
    Preprocessing (scalers fit on the training split), the
    training-data fingerprint, the phase lineage and the config go with it. A checkpoint
    trained over a supervised CNN-LSTM encoder records it as `lineage["encoder"]` (name,
    version, sha256, frozen or fine-tuned); `model_type` None is `hybrid` for a fine-tuned
    encoder, else `hierarchical_ppo`.
    """
    import math

    from rl_trading.evaluation import ledger
    from rl_trading.evaluation.backtest import backtest, load_policy
    from rl_trading.registry import ModelRegistry
    from rl_trading.training.checkpoints import read_metadata

    encoder = read_metadata(checkpoint).get("encoder")
    if model_type is None:
        fine_tuned = bool(encoder) and encoder.get("mode") == "fine_tuned"
        model_type = "hybrid" if fine_tuned else "hierarchical_ppo"

    bars, train, _ = select_bars(cfg, None, split)
    pre = training_preprocessing(cfg, train)
    bundle = load_policy(checkpoint, cfg)
    bundle.preprocessing = pre
    state_dir = Path(run_dir) if run_dir else _run_dir_of(Path(checkpoint))
    registry = ModelRegistry(cfg=cfg)
    trials = selection_trials(state_dir)
    # the ledger: this run's selection passes, earlier test-split choices, tuning, benchmarks
    fp, url = ledger.market_fingerprint(cfg), ledger.ledger_url(cfg)
    record_selection_passes(fp, state_dir, cfg)
    n_trials = max(1, max(len(trials), ledger.count_trials(fp, url)) + int(extra_trials))
    if split == "test":  # a selection on the test split: counted for every later DSR
        pick = {"checkpoint": str(Path(checkpoint).resolve()), "model_type": model_type}
        ledger.record_trials(fp, "test_selection", [pick], source=model_type, url=url)
    ppy = float(pre["periods_per_year"])
    trial_sharpes = [s / math.sqrt(ppy) for s in trials if math.isfinite(s)]
    result = backtest(
        bundle,
        bars,
        cfg,
        seed=cfg.seed,
        n_trials=n_trials,
        trial_sharpes=trial_sharpes if len(trial_sharpes) >= 2 else None,
    )
    pm = result.metrics["policy"]
    lineage: dict[str, Any] = {"checkpoint": str(Path(checkpoint).resolve()), "eval_split": split}
    if state_dir is not None and (state_dir / "state.json").is_file():
        from rl_trading.training.state import RunState

        lineage["run_dir"] = str(state_dir.resolve())
        for name, ps in sorted(RunState.load(state_dir).phases.items()):
            lineage[name] = ps.best_checkpoint or ps.last_checkpoint
            if ps.mlflow_run_id:
                lineage[f"{name}_mlflow_run"] = ps.mlflow_run_id
    from rl_trading.data import synthetic_symbols

    lineage["synthetic_symbols"] = synthetic_symbols(bars)  # [] when every bar is real
    if encoder:
        lineage["encoder"] = encoder
    if cfg.supervised.signals_enabled:
        lineage["signals"] = [
            f"{m}_{tf}" for m in cfg.supervised.models for tf in cfg.supervised.timeframes
        ]
    signature = {
        "policies": sorted(bundle.modules),
        "features": pre["features"],
        "window_size": pre["window_size"],
        "model": cfg.policy.model,
        "per_policy": cfg.policy.per_policy,
        "action_type": cfg.env.action_type,
        "symbols": pre["symbols"],
    }
    if encoder:  # another encoder is another signature (a major version)
        signature["encoder"] = encoder.get("name")
    metrics = {**graded_metrics(pm, n_trials), "periods_per_year": ppy, "exposure": pm["exposure"]}
    rec = registry.register(
        checkpoint,
        model_type=model_type,
        kind="rl",
        metrics=metrics,
        lineage=lineage,
        data_fingerprint=pre["train_fingerprint"],
        preprocessing=pre,
        signature=signature,
        config=cfg,
        bump=bump,  # type: ignore[arg-type]
        untouched=split == "test",
        graded_split=split,
        n_trials=n_trials,
    )
    return rec, result


def register_supervised(results: Any, cfg: AppConfig) -> list[ModelRecord]:
    """Register every saved model of a `train_supervised` run, graded by its held-out accuracy
    over its own best baseline (majority class / previous direction); the Optuna trials tried
    per model are recorded as its trial count.

    Lineage records the trial's MLflow run and model folder; the data fingerprint and the
    preprocessing (features, horizon, scaler inside the pipeline) come from the saved metadata.
    """
    import json

    from rl_trading.registry import ModelRegistry

    registry = ModelRegistry(cfg=cfg)
    records = []
    for key, saved in results.saved_models().items():
        path = Path(saved["path"])
        meta_file = path / "metadata.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        metrics = {k: float(v) for k, v in saved["metrics"].items() if _is_number(v)}
        records.append(
            registry.register(
                path,
                model_type=key,  # e.g. analyst_1h: each model x timeframe is its own series
                kind="supervised",
                metrics=metrics,
                lineage={"model_dir": str(path.resolve()), "mlflow_run": saved["mlflow_run_id"]},
                data_fingerprint=meta.get("data_fingerprint"),
                signature={
                    "model": key,
                    "features": meta.get("features"),
                    "timeframe": meta.get("timeframe"),
                    "horizon": meta.get("horizon"),
                },
                config=cfg,
                run_id=None,
                untouched=True,  # the held-out part took no part in any choice
                graded_split="holdout",
                n_trials=int(getattr(results, "search_trials", 1) or 1),
            )
        )
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _run_dir_of(checkpoint: Path) -> Path | None:
    for parent in [checkpoint, *checkpoint.resolve().parents][:5]:
        if (parent / "state.json").is_file():
            return parent
    return None
