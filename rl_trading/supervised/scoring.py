"""Honest scores for the direction classifiers: held-out metrics, time-series CV and baselines.

Every model is reported next to two naive baselines so a reader sees whether it beats chance:
``majority`` (always the most frequent class of the *training* labels) and ``prev_direction``
(the direction of the past ``horizon`` bars continues; flat/unknown past falls back to the
training majority class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import TimeSeriesSplit

METRIC_NAMES = ("accuracy", "precision", "recall", "f1")


def classification_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of the 'up' class (1); 0.0 where undefined."""
    yt = np.asarray(y_true, dtype=int)
    yp = np.asarray(y_pred, dtype=int)
    if yt.size == 0:
        raise ValueError("no samples to score")
    return {
        "accuracy": float(accuracy_score(yt, yp)),
        "precision": float(precision_score(yt, yp, zero_division=0)),
        "recall": float(recall_score(yt, yp, zero_division=0)),
        "f1": float(f1_score(yt, yp, zero_division=0)),
    }


def majority_class(y_train: Sequence[float]) -> int:
    """Most frequent class of the training labels (ties go to 'up')."""
    y = np.asarray(y_train, dtype=int)
    return int(y.mean() >= 0.5) if y.size else 1


def baseline_metrics(
    y_train: Sequence[float], y_test: Sequence[float], prev_direction_test: Sequence[float]
) -> dict[str, float]:
    """Metrics of the majority-class and previous-direction baselines on the test labels.

    Keys are prefixed ``majority_`` and ``prev_direction_``.
    """
    maj = majority_class(y_train)
    yt = np.asarray(y_test, dtype=int)
    prev = np.asarray(prev_direction_test, dtype=float)
    prev = np.where(np.isnan(prev), maj, prev).astype(int)
    out: dict[str, float] = {}
    for name, pred in (("majority", np.full_like(yt, maj)), ("prev_direction", prev)):
        for key, value in classification_metrics(yt, pred).items():
            out[f"{name}_{key}"] = value
    return out


def time_groups_split(
    times: np.ndarray, n_splits: int, gap: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """TimeSeriesSplit over the *unique timestamps* (several symbols share one), with a gap.

    ``gap`` timestamps between each fold's train and validation parts keep overlapping forward
    returns out of training (embargo). Returns row-index pairs.
    """
    uniq, inverse = np.unique(times, return_inverse=True)
    splitter = TimeSeriesSplit(n_splits=n_splits, gap=gap)
    folds = []
    for tr_t, va_t in splitter.split(uniq):
        tr_mask = np.isin(inverse, tr_t)
        va_mask = np.isin(inverse, va_t)
        folds.append((np.flatnonzero(tr_mask), np.flatnonzero(va_mask)))
    return folds


def time_series_cv(
    make_model: Callable[[], Any],
    x: np.ndarray,
    y: np.ndarray,
    times: np.ndarray,
    n_splits: int,
    gap: int,
    on_fold: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Accuracy/F1 mean and std over time-ordered folds of the *training* data only.

    `on_fold` gets the running summary (over the folds so far) after each fold, e.g. to report
    it to a Tune scheduler that may stop a poor trial early.
    """
    accs, f1s = [], []

    def summary() -> dict[str, float]:
        return {
            "cv_accuracy_mean": float(np.mean(accs)),
            "cv_accuracy_std": float(np.std(accs)),
            "cv_f1_mean": float(np.mean(f1s)),
            "cv_folds": len(accs),
        }

    for tr, va in time_groups_split(times, n_splits, gap):
        if len(np.unique(y[tr])) < 2 or len(va) == 0:
            continue
        model = make_model()
        model.fit(x[tr], y[tr])
        m = classification_metrics(y[va], model.predict(x[va]))
        accs.append(m["accuracy"])
        f1s.append(m["f1"])
        if on_fold is not None:
            on_fold(summary())
    if not accs:
        return {"cv_accuracy_mean": float("nan"), "cv_accuracy_std": float("nan"), "cv_folds": 0}
    return summary()
