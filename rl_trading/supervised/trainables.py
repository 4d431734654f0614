"""The supervised stage on Ray Tune: one trial per model x timeframe, optional search.

`train_supervised(cfg, ...)` prepares the feature frames once in the driver, hands them to the
trials through the object store (`tune.with_parameters`), runs the trials in parallel (1 CPU
each), and collects one record per model x timeframe (metrics, baselines, saved path, MLflow
run id) into ``<run_dir>/results.json``.

Every trial reports each CV fold, each CNN-LSTM epoch and its end, each with a `Checkpoint`
(see `supervised_trial`). With ``optimize=True`` each model x timeframe is a search over its
hyperparameters (OptunaSearch, `n_trials` samples) scored by time-series CV accuracy on the
training part only, with ASHA stopping trials whose running CV accuracy falls behind; the best
finished trial's checkpoint is the model that is installed and registered (no refit). The
held-out test score never takes part in any choice.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rl_trading import ledger, ray_utils
from rl_trading.config import AppConfig
from rl_trading.data import load_market
from rl_trading.data.schema import timeframe_delta
from rl_trading.errors import DataError, RLTradingError
from rl_trading.ray_utils import fit_trial_runners
from rl_trading.supervised.dataset import TimeframeFrames, infer_timeframe, prepare_timeframes
from rl_trading.supervised.models import MODEL_TYPES, default_params, search_space
from rl_trading.supervised.storage import (
    default_models_dir,
    install_model_folder,
    save_model,
    write_model_folder,
)
from rl_trading.tracking import configure_mlflow, ensure_experiment, mlflow_run

SEARCH_METRIC = "cv_accuracy_mean"
# Metrics shown while trials run and in the final table.
SHOWN_METRICS = [
    "accuracy",
    "f1",
    "cv_accuracy_mean",
    "majority_accuracy",
    "prev_direction_accuracy",
]


@dataclass
class SupervisedRecord:
    """Outcome of one model x timeframe: status, metrics, where the model and run are."""

    model_type: str
    timeframe: str
    status: str  # "ok", "skipped" or "error"
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    model_path: str | None = None
    mlflow_run_id: str | None = None
    note: str = ""
    checkpoint: str | None = None  # the trial's Tune checkpoint (the model + metadata.json)


@dataclass
class SupervisedResults:
    """All records of one `train supervised` run and where its `results.json` is."""

    records: list[SupervisedRecord]
    run_dir: Path
    results_path: Path
    search_trials: int = 1  # configurations tried per model x timeframe (Optuna n_trials)

    def saved_models(self) -> dict[str, dict[str, Any]]:
        """``{"<model>_<tf>": {"path": ..., "metrics": ..., "mlflow_run_id": ...}}`` of the
        models that were saved (for the registry): `path` is the trial's Tune checkpoint (the
        best trial's under --optimize), `model_path` the installed copy `load_model` reads."""
        return {
            f"{r.model_type}_{r.timeframe}": {
                "path": r.checkpoint or r.model_path,
                "model_path": r.model_path,
                "metrics": r.metrics,
                "mlflow_run_id": r.mlflow_run_id,
            }
            for r in self.records
            if r.status == "ok" and r.model_path
        }


# --------------------------------------------------------------------------------------------
# The trial (runs in a Ray worker)
# --------------------------------------------------------------------------------------------


def _log_to_mlflow(
    settings: dict[str, Any],
    model_type: str,
    timeframe: str,
    params: dict[str, Any],
    result: Any,
    saved_path: Path | None,
    stage: str,
) -> str:
    """One MLflow run per trial: params, metrics, importances, model folder; returns run id."""
    import mlflow  # heavy: mlflow

    last_exc: Exception | None = None
    for attempt in range(4):  # SQLite may be briefly locked by a parallel trial
        try:
            with mlflow_run(
                settings["experiment"],
                run_name=f"{model_type}_{timeframe}",
                params={"model_type": model_type, "timeframe": timeframe, **params},
                tags={
                    "stage": f"supervised_{stage}",
                    "model_type": model_type,
                    "timeframe": timeframe,
                },
                tracking_uri=settings["tracking_uri"],
            ) as run:
                mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
                if result.importances:
                    mlflow.log_dict(result.importances, "feature_importances.json")
                mlflow.log_dict(result.info, "lineage.json")
                if saved_path is not None:
                    mlflow.log_artifacts(str(saved_path), artifact_path="model")
                return run.info.run_id
        except Exception as exc:  # noqa: BLE001 - retried, then re-raised
            last_exc = exc
            time.sleep(1.0 + attempt)
    raise RuntimeError(f"MLflow logging failed: {last_exc}") from last_exc


def supervised_trial(
    config: dict[str, Any], frames_by_tf: dict[str, TimeframeFrames], settings: dict[str, Any]
) -> None:
    """Tune function trainable: fit + score one model on one timeframe, reporting as it goes.

    One `tune.report` per CV fold (the running CV summary, the search metric), per epoch of the
    CNN-LSTM's final fit (validation loss and the net so far) and a last one with every metric;
    each carries a `Checkpoint`, so a scheduler (ASHA under `--optimize`) can stop a poor trial
    early and `result.checkpoint` is the trial's model (the last one: the finished model, in
    the layout `storage.load_saved` reads, with its `metadata.json`).
    """
    import torch  # heavy: torch
    from ray import tune  # heavy: ray

    from rl_trading.supervised.fitting import fit_and_score  # heavy: sklearn

    torch.set_num_threads(1)
    job = config.get("job", config)  # final runs grid over "job"; searches are flat
    model_type, timeframe = job["model_type"], job["timeframe"]
    params = {**settings["params"][model_type], **job.get("hp", {})}
    stage = job.get("stage", "final")
    cv: dict[str, float] = {}

    def report(metrics: dict[str, Any], write: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def on_fold(running: dict[str, float]) -> None:
        cv.update(running)
        progress = {**running, "report": "cv_fold"}
        report(progress, lambda d: (d / "progress.json").write_text(json.dumps(progress)))

    def on_epoch(model: Any, epoch: int, val_loss: float | None) -> None:
        progress = {**cv, "report": "epoch", "epoch": epoch}
        if val_loss is not None:
            progress["val_loss"] = val_loss
        meta = {"epoch": epoch, "val_loss": val_loss, "params": params}
        report(progress, lambda d: write_model_folder(model, model_type, timeframe, meta, d))

    result = fit_and_score(
        model_type,
        frames_by_tf[timeframe],
        params,
        test_size=settings["test_size"],
        cv_splits=settings["cv_splits"],
        horizon=settings["horizon"],
        seed=settings["seed"],
        on_fold=on_fold,
        on_epoch=on_epoch,
    )
    metadata = {
        **result.info,
        "horizon": settings["horizon"],
        "dead_zone": settings["dead_zone"],
        "metrics": result.metrics,
        "feature_importances": result.importances,
    }
    saved_path = None
    if stage == "final":  # a search trial's model is installed only if it is the best one
        saved_path = save_model(
            result.model, model_type, timeframe, metadata, settings["models_dir"]
        )
    run_id = ""
    if settings.get("tracking_uri"):
        run_id = _log_to_mlflow(settings, model_type, timeframe, params, result, saved_path, stage)
    final = {
        **result.metrics,
        "report": "final",
        "model_path": str(saved_path) if saved_path else "",
        "mlflow_run_id": run_id,
    }
    report(final, lambda d: write_model_folder(result.model, model_type, timeframe, metadata, d))


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def plan_jobs(
    models: list[str], frames_by_tf: dict[str, TimeframeFrames]
) -> tuple[list[tuple[str, str]], list[SupervisedRecord]]:
    """(model, timeframe) pairs to train, and 'skipped' records for what cannot be trained.

    Analyst: every usable timeframe. Tactician and CNN-LSTM: the finest usable timeframe.
    """
    usable = sorted((tf for tf, f in frames_by_tf.items() if f.frames), key=timeframe_delta)
    skipped = [
        SupervisedRecord(m, tf, "skipped", note=f.note)
        for tf, f in frames_by_tf.items()
        if not f.frames
        for m in models
        if m == "analyst"
    ]
    jobs: list[tuple[str, str]] = []
    for model in models:
        if model not in MODEL_TYPES:
            raise RLTradingError(f"unknown model '{model}' (choose from {', '.join(MODEL_TYPES)})")
        if not usable:
            skipped.append(SupervisedRecord(model, "-", "skipped", note="no usable timeframe"))
            continue
        targets = usable if model == "analyst" else usable[:1]
        jobs += [(model, tf) for tf in targets]
    return jobs, skipped


def _trial_name(trial: Any) -> str:
    """Readable trial names: ``<model>_<timeframe>_<trial id>``."""
    job = trial.config.get("job", trial.config)
    return f"{job.get('model_type')}_{job.get('timeframe')}_{trial.trial_id}"


def _run_tuner(
    trainable: Any,
    param_space: dict[str, Any],
    run_dir: Path,
    name: str,
    tune_config: Any,
    verbose: int,
) -> Any:
    from ray import tune  # heavy: ray

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=name,
            storage_path=str((run_dir / "tune").resolve()),
            verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=0),
            # every report carries one; the newest is the trial's model (the finished one)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    return tuner.fit()


def max_reports(model: str, cv_splits: int, max_epochs: int) -> int:
    """Most reports a trial makes: one per CV fold, per CNN-LSTM epoch, and the final one."""
    return cv_splits + (max_epochs if model == "cnn_lstm" else 0) + 1


def search_tune_config(model: str, n_trials: int, seed: int, max_t: int) -> Any:
    """Optuna proposes the hyperparameters, ASHA stops trials whose running CV accuracy (the
    search metric, reported per fold / epoch) trails the others at a rung."""
    from ray import tune  # heavy: ray
    from ray.tune.schedulers import ASHAScheduler  # heavy: ray
    from ray.tune.search.optuna import OptunaSearch  # heavy: ray

    return tune.TuneConfig(
        search_alg=OptunaSearch(metric=SEARCH_METRIC, mode="max", seed=seed),
        scheduler=ASHAScheduler(
            time_attr="training_iteration",
            metric=SEARCH_METRIC,
            mode="max",
            max_t=max_t,  # never cuts a trial that is still improving past its last report
            grace_period=1,
            reduction_factor=2,
        ),
        num_samples=n_trials,
        reuse_actors=True,
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_name,
    )


def best_finished(grid: Any, model: str, tf: str) -> Any:
    """The finished trial (final report, checkpoint) with the best CV accuracy; trials ASHA
    stopped early only carry a running CV mean and are not candidates."""
    done = [
        r
        for r in grid
        if r.error is None
        and r.checkpoint is not None
        and (r.metrics or {}).get("report") == "final"
        and math.isfinite(float(r.metrics.get(SEARCH_METRIC, float("nan"))))
    ]
    if not done:
        raise RLTradingError(f"hyperparameter search for {model} {tf} produced no finished trial")
    return max(done, key=lambda r: float(r.metrics[SEARCH_METRIC]))


def _search_best(
    trainable: Any,
    model: str,
    tf: str,
    n_trials: int,
    seed: int,
    max_t: int,
    run_dir: Path,
    verbose: int,
) -> Any:
    """Search `model`'s hyperparameters on `tf` by CV accuracy; the best finished trial."""
    space = {
        "model_type": model,
        "timeframe": tf,
        "stage": "search",
        "hp": search_space(model),
    }
    grid = _run_tuner(
        trainable,
        space,
        run_dir,
        f"search_{model}_{tf}",
        search_tune_config(model, n_trials, seed, max_t),
        verbose,
    )
    return best_finished(grid, model, tf)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def train_supervised(
    cfg: AppConfig,
    *,
    models: list[str] | None = None,
    timeframes: list[str] | None = None,
    optimize: bool = False,
    n_trials: int | None = None,
    run_dir: str | Path | None = None,
    bars: dict[str, pd.DataFrame] | None = None,
    models_dir: str | Path | None = None,
    tracking: bool = True,
    verbose: int = 1,
    notify: Callable[[str], None] | None = None,
) -> SupervisedResults:
    """Train (and optionally search) the supervised models as parallel Tune trials.

    Each trial takes one CPU; `notify` gets the line saying how many run at a time (a Ray
    without a CPU is a one-line ConfigError, never a wait).

    `bars` defaults to `load_market(cfg)`; models go to `models_dir` (default
    ``<workspace>/models/supervised``); each trial is an MLflow run unless `tracking` is off.
    """
    from ray import tune  # heavy: ray

    sup = cfg.supervised
    models = list(models or sup.models)
    timeframes = list(timeframes or sup.timeframes)
    if bars is None:
        bars = load_market(cfg)
    if not bars:
        raise DataError("no bars to train the supervised models on")
    for symbol, frame in bars.items():
        if len(frame) < 3:
            raise DataError(f"{symbol}: too few bars ({len(frame)}) for supervised training")
        infer_timeframe(frame)
    run_dir = Path(run_dir) if run_dir is not None else cfg.resolved_run_dir()
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    models_dir = Path(models_dir).resolve() if models_dir else default_models_dir()

    frames_by_tf = prepare_timeframes(bars, timeframes, sup.horizon, sup.dead_zone)
    jobs, records = plan_jobs(models, frames_by_tf)

    settings: dict[str, Any] = {
        "params": {m: default_params(m, cfg) for m in MODEL_TYPES},
        "test_size": sup.test_size,
        "cv_splits": sup.cv_splits,
        "horizon": sup.horizon,
        "dead_zone": sup.dead_zone,
        "seed": sup.random_state,
        "models_dir": str(models_dir),
        "tracking_uri": None,
        "experiment": f"{cfg.train.experiment_name}-supervised",
    }
    if tracking:
        settings["tracking_uri"] = configure_mlflow(cfg.tracking.tracking_uri)
        ensure_experiment(settings["experiment"])  # created once here, not racing in trials

    if jobs:
        cluster = ray_utils.init_ray(cfg.resources.address, cfg.resources.num_cpus)
        _, line = fit_trial_runners(
            cluster, 0, 1.0, trial_cpus=1.0, n_trials=len(jobs), what="supervised trials"
        )
        if notify is not None:
            notify(line)
        used = {tf for _, tf in jobs}
        trainable = tune.with_parameters(
            supervised_trial,
            frames_by_tf={tf: frames_by_tf[tf] for tf in used},
            settings=settings,
        )
        trials = 1
        if optimize:
            trials = n_trials or cfg.tuning.n_trials
            max_epochs = int(settings["params"]["cnn_lstm"].get("max_epochs", 0))
            best = []
            for model, tf in jobs:
                max_t = max_reports(model, sup.cv_splits, max_epochs)
                res = _search_best(
                    trainable, model, tf, trials, sup.random_state, max_t, run_dir, verbose
                )
                installed = install_model_folder(res.checkpoint.path, model, tf, models_dir)
                best.append((res, installed))
            records += _collect([r for r, _ in best], settings, [p for _, p in best])
            # the search's configurations into the trial ledger, keyed by the market's bars
            configs = [
                {"model": model, "timeframe": tf, "trial": i}
                for model, tf in jobs
                for i in range(trials)
            ]
            ledger.record_trials(
                ledger.market_fingerprint(cfg, bars),
                "optuna",
                configs,
                str(run_dir),
                url=ledger.ledger_url(cfg),
            )
        else:
            job_cfgs = [
                {"model_type": m, "timeframe": tf, "stage": "final", "hp": {}} for m, tf in jobs
            ]
            grid = _run_tuner(
                trainable,
                {"job": tune.grid_search(job_cfgs)},
                run_dir,
                "final",
                tune.TuneConfig(
                    reuse_actors=True,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                verbose,
            )
            records += _collect(grid, settings)
    results_path = run_dir / "results.json"
    payload = {
        "records": [_jsonable(r.__dict__) for r in records],
        "optimize": optimize,
        "search_trials": trials if optimize else 1,
        "config": cfg.supervised.model_dump(mode="json"),
        "models_dir": str(models_dir),
    }
    results_path.write_text(json.dumps(payload, indent=2, default=str))
    return SupervisedResults(records, run_dir, results_path, trials if optimize else 1)


def _collect(
    grid: Any, settings: dict[str, Any], installed: list[Path] | None = None
) -> list[SupervisedRecord]:
    """One record per trial result; `installed`: where each (best search) trial's model went."""
    out = []
    for i, res in enumerate(grid):
        job = (res.config or {}).get("job", res.config or {})
        model, tf = job.get("model_type", "?"), job.get("timeframe", "?")
        params = {**settings["params"].get(model, {}), **job.get("hp", {})}
        if res.error is not None or not res.metrics:
            msg = str(res.error).strip().splitlines()[-1] if res.error else "no result"
            out.append(SupervisedRecord(model, tf, "error", params=params, note=msg[:300]))
            continue
        m = res.metrics
        metrics = {
            k: float(v)
            for k, v in m.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in _TUNE_KEYS
        }
        out.append(
            SupervisedRecord(
                model,
                tf,
                "ok",
                metrics=metrics,
                params=params,
                model_path=str(installed[i]) if installed else (m.get("model_path") or None),
                mlflow_run_id=m.get("mlflow_run_id") or None,
                checkpoint=res.checkpoint.path if res.checkpoint is not None else None,
            )
        )
    order = {name: i for i, name in enumerate(MODEL_TYPES)}
    return sorted(out, key=lambda r: (order.get(r.model_type, 9), r.timeframe))


_TUNE_KEYS = {
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "training_iteration",
    "pid",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "epoch",
    "val_loss",
}
