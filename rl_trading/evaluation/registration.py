"""Registering what was trained: a checkpoint graded by its backtest, supervised models graded by
their held-out accuracy, each with its preprocessing, lineage and trial count."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_trading import ledger
from rl_trading.artifacts import read_metadata
from rl_trading.data import fingerprint, synthetic_symbols
from rl_trading.evaluation.backtest import backtest, load_policy
from rl_trading.evaluation.selection import (
    _run_dir_of,
    graded_metrics,
    record_selection_passes,
    select_bars,
    selection_trials,
)
from rl_trading.registry import ModelRegistry
from rl_trading.training.preprocessing import training_preprocessing
from rl_trading.training.state import RunState

if TYPE_CHECKING:
    from rl_trading.config import AppConfig
    from rl_trading.registry import ModelRecord


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
    The trial count is every trial the ledger (:mod:`rl_trading.ledger`) holds on
    the market (the run's validation passes, recorded first; tuning runs, walk-forwards,
    benchmarks, earlier test-split selections), plus `extra_trials`; the DSR is deflated for
    it. A registration graded on the test split is itself recorded as a selection.
    The checkpoint's own stored preprocessing (scalers fit on its training split) grades it
    and is registered with its training-data fingerprint: the market may have grown since, and
    refitting would describe data the policy never saw. When today's training split differs
    from the stored one, the current `split` is still graded (the stored training range must
    not overlap it: one-line DataError before the backtest) and the lineage notes the change.
    Only a checkpoint without stored preprocessing gets it computed from today's training
    split. The phase lineage and the config go with it. A checkpoint
    trained over a supervised CNN-LSTM encoder records it as `lineage["encoder"]` (name,
    version, sha256, frozen or fine-tuned); `model_type` None is `hybrid` for a fine-tuned
    encoder, else `hierarchical_ppo`.
    """
    meta = read_metadata(checkpoint)
    encoder = meta.get("encoder")
    if model_type is None:
        fine_tuned = bool(encoder) and encoder.get("mode") == "fine_tuned"
        model_type = "hybrid" if fine_tuned else "hierarchical_ppo"

    bars, train, _ = select_bars(cfg, None, split)
    bundle = load_policy(checkpoint, cfg)
    stored = bundle.preprocessing or meta.get("preprocessing")
    pre = stored or training_preprocessing(cfg, train)  # recomputed only when none was stored
    bundle.preprocessing = pre
    train_now = fingerprint(train) if train else None
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
        allow_overlap=False,  # a grade on bars the policy was trained on is no grade
    )
    pm = result.metrics["policy"]
    lineage: dict[str, Any] = {"checkpoint": str(Path(checkpoint).resolve()), "eval_split": split}
    if state_dir is not None and (state_dir / "state.json").is_file():
        lineage["run_dir"] = str(state_dir.resolve())
        for name, ps in sorted(RunState.load(state_dir).phases.items()):
            lineage[name] = ps.best_checkpoint or ps.last_checkpoint
            if ps.mlflow_run_id:
                lineage[f"{name}_mlflow_run"] = ps.mlflow_run_id

    if train_now and pre.get("train_fingerprint") != train_now:
        lineage["train_split_now"] = train_now  # the market changed since training
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
