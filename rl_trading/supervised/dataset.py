"""Supervised datasets: causal features + direction targets per timeframe, time-ordered splits.

Features come only from :mod:`rl_trading.data.features`. Several symbols are pooled into one
dataset per timeframe (rows sorted by time); every split is by timestamp, never by row, so a
test row is always later than every training row, with an embargo of ``horizon`` timestamps
between them (the training labels' forward returns never reach into the test period).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rl_trading.data import fingerprint, resample
from rl_trading.data.features import FEATURE_COLUMNS, compute_features
from rl_trading.data.schema import timeframe_delta
from rl_trading.supervised.models import make_windows
from rl_trading.supervised.targets import direction_target, previous_direction

MIN_ROWS = 300  # fewer labelled rows than this and a timeframe is skipped


@dataclass
class TimeframeFrames:
    """Per-symbol frames of one timeframe: feature columns + ``target`` + ``prev_direction``."""

    timeframe: str
    frames: dict[str, pd.DataFrame]
    feature_names: list[str]
    fingerprint: str
    note: str = ""


@dataclass
class Dataset:
    """Arrays for one model: ``x`` (2-D rows or 3-D windows), labels, times, baseline inputs."""

    x: np.ndarray
    y: np.ndarray
    times: np.ndarray  # int64 nanoseconds, non-decreasing
    prev_direction: np.ndarray
    feature_names: list[str]
    extra: dict[str, object] = field(default_factory=dict)


def infer_timeframe(bars: pd.DataFrame) -> pd.Timedelta:
    """The bars' spacing: the median difference of the index."""
    diffs = bars.index.to_series().diff().dropna()
    if diffs.empty:
        raise ValueError("need at least two bars to infer the timeframe")
    return pd.Timedelta(diffs.median())


def bars_at_timeframe(
    bars: pd.DataFrame, timeframe: str, base_delta: pd.Timedelta | None = None
) -> pd.DataFrame | None:
    """`bars` at `timeframe` (resampled when coarser); None when finer than the base bars."""
    base = base_delta if base_delta is not None else infer_timeframe(bars)
    target = timeframe_delta(timeframe)
    if target < base:
        return None
    if target == base:
        return bars
    return resample(bars, timeframe)


def feature_frame(bars: pd.DataFrame, horizon: int, dead_zone: float) -> pd.DataFrame:
    """Causal features of `bars` plus ``target`` and ``prev_direction``; warm-up rows dropped.

    Rows whose target is NaN (dead zone, last ``horizon`` bars) are *kept* here so windows stay
    contiguous; models drop them when they build their arrays.
    """
    feats = compute_features(bars)[list(FEATURE_COLUMNS)].astype("float64")
    feats = feats.replace([np.inf, -np.inf], np.nan)
    valid = feats.notna().all(axis=1).to_numpy()
    first = int(np.argmax(valid)) if valid.any() else len(feats)
    out = feats.iloc[first:].ffill().fillna(0.0)  # ffill is causal; isolated gaps only
    out["target"] = direction_target(bars["close"], horizon, dead_zone).iloc[first:]
    out["prev_direction"] = previous_direction(bars["close"], horizon).iloc[first:]
    return out


def prepare_timeframes(
    bars_by_symbol: dict[str, pd.DataFrame],
    timeframes: list[str],
    horizon: int,
    dead_zone: float,
) -> dict[str, TimeframeFrames]:
    """Feature frames for every timeframe; skipped ones carry a `note` and no frames."""
    out: dict[str, TimeframeFrames] = {}
    for tf in timeframes:
        frames: dict[str, pd.DataFrame] = {}
        prints = []
        note = ""
        for symbol, bars in bars_by_symbol.items():
            tf_bars = bars_at_timeframe(bars, tf)
            if tf_bars is None:
                note = f"skipped: {tf} is finer than the base bars"
                frames = {}
                break
            frame = feature_frame(tf_bars, horizon, dead_zone)
            frames[symbol] = frame
            prints.append(f"{symbol}:{fingerprint(tf_bars)}")
        if frames:
            labelled = sum(int(f["target"].notna().sum()) for f in frames.values())
            if labelled < MIN_ROWS:
                note = f"skipped: {tf} has only {labelled} labelled bars (< {MIN_ROWS})"
                frames = {}
        digest = hashlib.sha256("|".join(sorted(prints)).encode()).hexdigest()
        out[tf] = TimeframeFrames(tf, frames, list(FEATURE_COLUMNS), digest, note)
    return out


def build_dataset(frames: TimeframeFrames, model_type: str, window: int = 1) -> Dataset:
    """Pool the symbols into arrays for `model_type` (3-D windows for ``cnn_lstm``)."""
    xs, ys, ts, prev = [], [], [], []
    for frame in frames.frames.values():
        feats = frame[frames.feature_names].to_numpy(dtype=np.float64)
        if model_type == "cnn_lstm":
            feats = make_windows(feats, window)
        mask = frame["target"].notna().to_numpy()
        xs.append(feats[mask])
        ys.append(frame["target"].to_numpy()[mask].astype(int))
        ts.append(frame.index.asi8[mask])
        prev.append(frame["prev_direction"].to_numpy()[mask])
    times = np.concatenate(ts)
    order = np.argsort(times, kind="stable")
    return Dataset(
        x=np.concatenate(xs)[order],
        y=np.concatenate(ys)[order],
        times=times[order],
        prev_direction=np.concatenate(prev)[order],
        feature_names=list(frames.feature_names),
    )


def train_test_split_by_time(
    times: np.ndarray, test_size: float, gap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of train (earliest) and test (last ``test_size`` of timestamps), embargoed."""
    uniq = np.unique(times)
    n_test = max(1, int(round(len(uniq) * test_size)))
    cut = len(uniq) - n_test
    train_end = cut - gap
    if train_end <= 0:
        raise ValueError("not enough timestamps for the train/test split")
    train = np.flatnonzero(times < uniq[train_end])
    test = np.flatnonzero(times >= uniq[cut])
    return train, test
