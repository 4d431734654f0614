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
    the configured embargo.
    """
    from rl_trading.data import align, read_bars, split_by_time
    from rl_trading.errors import DataError
    from rl_trading.supervised.signals import observed_market

    if data is not None:
        path = Path(data)
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        files = [f for f in files if f.name.endswith((".csv", ".csv.gz", ".parquet"))]
        if not files:
            raise DataError(f"no bars files (.csv, .csv.gz, .parquet) at {path}")
        bars = {f.name.split(".")[0].split("_")[0].upper(): read_bars(f) for f in files}
        if len(bars) > 1:
            bars = align(bars, policy=cfg.data.gap_policy, max_ffill=cfg.data.max_ffill_bars)
        return observed_market(cfg, bars), None, f"{path} ({len(bars)} instrument(s))"
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split '{split}' (train, val or test)")
    market = observed_market(cfg)
    parts = split_by_time(market, cfg.data.train_frac, cfg.data.val_frac, cfg.data.embargo_bars)
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
    from rl_trading.data import FEATURE_COLUMNS, WARMUP_BARS, fingerprint
    from rl_trading.data.features import signal_columns

    first = next(iter(train_bars.values()))
    return {
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


def register_policy(
    checkpoint: str | Path,
    cfg: AppConfig,
    model_type: str = "hierarchical_ppo",
    split: str = "val",
    run_dir: str | Path | None = None,
    bump: str | None = None,
) -> tuple[ModelRecord, Any]:
    """Backtest a trained checkpoint on `split`, then register it graded by that backtest.

    Preprocessing (scalers fit on the training split), the training-data fingerprint, the
    phase lineage (from the run dir's state.json) and the config go with it.
    """
    import json

    from rl_trading.evaluation.backtest import backtest, load_policy
    from rl_trading.registry import ModelRegistry

    bars, train, _ = select_bars(cfg, None, split)
    pre = training_preprocessing(cfg, train)
    bundle = load_policy(checkpoint, cfg)
    bundle.preprocessing = pre
    result = backtest(bundle, bars, cfg, seed=cfg.seed)
    pm = result.metrics["policy"]
    lineage: dict[str, Any] = {"checkpoint": str(Path(checkpoint).resolve()), "eval_split": split}
    state_dir = Path(run_dir) if run_dir else _run_dir_of(Path(checkpoint))
    if state_dir is not None and (state_dir / "state.json").is_file():
        phases = json.loads((state_dir / "state.json").read_text()).get("phases", {})
        lineage["run_dir"] = str(state_dir.resolve())
        for name, ps in sorted(phases.items()):
            lineage[name] = ps.get("best_checkpoint") or ps.get("last_checkpoint")
            if ps.get("mlflow_run_id"):
                lineage[f"{name}_mlflow_run"] = ps["mlflow_run_id"]
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
    metrics = {
        "sharpe": pm["sharpe_ratio"],
        "max_drawdown": pm["max_drawdown"],
        "total_return": pm["total_return"],
        "win_rate": pm["win_rate"],
        "sortino": pm["sortino_ratio"],
    }
    rec = ModelRegistry(cfg=cfg).register(
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
    )
    return rec, result


def register_supervised(results: Any, cfg: AppConfig) -> list[ModelRecord]:
    """Register every saved model of a `train_supervised` run, graded by held-out accuracy.

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
