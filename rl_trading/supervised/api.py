"""Python API over the saved supervised models: `load_model` and `predict_proba`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_trading.data.features import FEATURE_COLUMNS, compute_features
from rl_trading.errors import DataError
from rl_trading.supervised.dataset import bars_at_timeframe
from rl_trading.supervised.models import make_windows
from rl_trading.supervised.storage import load_saved


def load_model(
    model_type: str, timeframe: str, models_dir: str | Path | None = None
) -> tuple[Any, Any]:
    """Load the current saved model as ``(model, preprocessor)``.

    - analyst / tactician: ``(pipeline.named_steps["model"], pipeline)``: the bare sklearn
      classifier and the whole fitted ``Pipeline`` (scaler + model); predict with the pipeline.
    - cnn_lstm: ``(torch module, FeatureScaler)``: the network (eval mode, input
      ``(batch, window, n_features)`` already scaled) and the scaler fitted on its train rows.
    """
    saved = load_saved(model_type, timeframe, models_dir)
    est = saved.estimator
    if model_type == "cnn_lstm":
        return est.net, est.scaler
    return est.named_steps["model"], est


def feature_matrix(
    bars: pd.DataFrame, model_type: str, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for every bar (2-D rows or 3-D windows) and the mask of bars past warm-up."""
    feats = compute_features(bars)[list(FEATURE_COLUMNS)].astype("float64")
    feats = feats.replace([np.inf, -np.inf], np.nan)
    valid = feats.notna().all(axis=1).to_numpy()
    values = feats.ffill().fillna(0.0).to_numpy()
    if model_type == "cnn_lstm":
        first = int(np.argmax(valid)) if valid.any() else len(values)
        windows = np.zeros((len(values), window, values.shape[1]))
        windows[first:] = make_windows(values[first:], window)
        valid = valid & (np.arange(len(values)) >= first)
        return windows, valid
    return values, valid


def predict_proba(
    model_type: str,
    timeframe: str,
    bars: pd.DataFrame,
    models_dir: str | Path | None = None,
) -> pd.Series:
    """P(next move up) of the saved model for every bar of `bars` at `timeframe`.

    `bars` finer than `timeframe` are resampled first (the result is indexed by the coarser
    bars); bars still in the feature warm-up get NaN.
    """
    saved = load_saved(model_type, timeframe, models_dir)
    tf_bars = bars_at_timeframe(bars, timeframe)
    if tf_bars is None:
        raise DataError(f"bars are coarser than the model timeframe {timeframe}")
    window = int(saved.metadata.get("params", {}).get("window", 1))
    x, valid = feature_matrix(tf_bars, model_type, window)
    out = pd.Series(np.nan, index=tf_bars.index, name=f"{model_type}_{timeframe}_p_up")
    if valid.any():
        out[valid] = saved.estimator.predict_proba(x[valid])[:, 1]
    return out
