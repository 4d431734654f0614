"""Fit one model on one timeframe and score it honestly (held-out test, CV, baselines).

This is the work of one Tune trial, kept free of Ray so it is testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rl_trading.supervised.dataset import (
    TimeframeFrames,
    build_dataset,
    train_test_split_by_time,
)
from rl_trading.supervised.models import make_model
from rl_trading.supervised.scoring import (
    baseline_metrics,
    classification_metrics,
    time_series_cv,
)


@dataclass
class FitResult:
    """A fitted model, its scalar metrics, feature importances and lineage facts."""

    model: Any
    metrics: dict[str, float]
    importances: dict[str, float]
    info: dict[str, Any]


def _iso(ns: int) -> str:
    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def fit_and_score(
    model_type: str,
    frames: TimeframeFrames,
    params: dict[str, Any],
    *,
    test_size: float,
    cv_splits: int,
    horizon: int,
    seed: int,
    run_cv: bool = True,
    on_fold: Callable[[dict[str, float]], None] | None = None,
    on_epoch: Callable[[Any, int, float | None], None] | None = None,
) -> FitResult:
    """Time-ordered split (last `test_size` of timestamps is test, `horizon` embargo), CV on the
    training part only, final fit on the whole training part, metrics vs both baselines.

    Progress hooks (a Tune trial reports through them): `on_fold(running CV summary)` after
    each CV fold, `on_epoch(model, epoch, val_loss)` after each epoch of the CNN-LSTM's final fit.
    """
    ds = build_dataset(frames, model_type, window=int(params.get("window", 1)))
    gap = horizon
    train, test = train_test_split_by_time(ds.times, test_size, gap)
    if len(np.unique(ds.y[train])) < 2:
        raise ValueError("training labels contain a single class")

    def make() -> Any:
        return make_model(model_type, params, seed)

    metrics: dict[str, float] = {}
    if run_cv:
        metrics.update(
            time_series_cv(
                make, ds.x[train], ds.y[train], ds.times[train], cv_splits, gap, on_fold=on_fold
            )
        )
    model = make()
    if on_epoch is not None and model_type == "cnn_lstm":
        model.fit(ds.x[train], ds.y[train], on_epoch=lambda e, v: on_epoch(model, e, v))
    else:
        model.fit(ds.x[train], ds.y[train])
    pred = model.predict(ds.x[test])
    metrics.update(classification_metrics(ds.y[test], pred))
    metrics.update(baseline_metrics(ds.y[train], ds.y[test], ds.prev_direction[test]))
    best_baseline = max(metrics["majority_accuracy"], metrics["prev_direction_accuracy"])
    metrics["best_baseline_accuracy"] = best_baseline
    metrics["accuracy_edge"] = metrics["accuracy"] - best_baseline
    metrics["beats_baselines"] = float(metrics["accuracy"] > best_baseline)
    metrics["test_up_fraction"] = float(ds.y[test].mean())
    metrics["n_train"] = float(len(train))
    metrics["n_test"] = float(len(test))

    importances: dict[str, float] = {}
    inner = model.named_steps.get("model") if hasattr(model, "named_steps") else None
    if inner is not None and hasattr(inner, "feature_importances_"):
        importances = {
            name: float(v)
            for name, v in zip(ds.feature_names, inner.feature_importances_, strict=True)
        }
    info = {
        "features": ds.feature_names,
        "symbols": sorted(frames.frames),
        "train_range": [_iso(ds.times[train][0]), _iso(ds.times[train][-1])],
        "test_range": [_iso(ds.times[test][0]), _iso(ds.times[test][-1])],
        "data_fingerprint": frames.fingerprint,
        "params": params,
        "seed": seed,
    }
    if model_type == "cnn_lstm":
        info["epochs_trained"] = model.epochs_trained
    return FitResult(model, metrics, importances, info)
