"""The one causal feature module, shared by the environments and the supervised models.

Every feature at bar t uses only bars up to and including t (rolling windows, recursive
exponential averages, backward shifts; nothing centred, nothing shifted forward). The first
``WARMUP_BARS`` rows are set to NaN on purpose; from there on every value is finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

FEATURE_COLUMNS: list[str] = [
    "log_ret_1",  # log(close_t / close_{t-1})
    "log_ret_1_lag1",  # log_ret_1 at t-1
    "log_ret_1_lag2",  # log_ret_1 at t-2
    "log_ret_5",  # log(close_t / close_{t-5})
    "log_ret_20",  # log(close_t / close_{t-20})
    "hl_range",  # (high - low) / close
    "oc_change",  # (close - open) / close
    "ma5_ratio",  # SMA5(close) / close - 1
    "ma10_ratio",  # SMA10(close) / close - 1
    "ma20_ratio",  # SMA20(close) / close - 1
    "volatility_20",  # rolling std of log_ret_1 over 20 bars
    "log_volume_ma20",  # log1p(SMA20(volume))
    "volume_ratio",  # volume / SMA20(volume); 1 when the average is 0
    "rsi_14",  # Wilder RSI(14) scaled to [0, 1]; 0.5 when flat
    "macd",  # (EMA12 - EMA26) / close
    "macd_signal",  # EMA9 of macd
    "macd_hist",  # macd - macd_signal
]

# Longest dependency chain: EMA26 + signal EMA9 (-1); 40 leaves the EMAs time to settle too.
WARMUP_BARS: int = 40

# Extra observation columns carried with the bars: out-of-sample supervised-model
# probabilities (rl_trading.supervised.signals), already in [0, 1] and appended unscaled.
SIGNAL_PREFIX = "sig_"
SIGNAL_NEUTRAL = 0.5


def signal_columns(frame: pd.DataFrame) -> list[str]:
    """The supervised-signal columns (``sig_*``) of a bars frame, in order."""
    return [c for c in frame.columns if str(c).startswith(SIGNAL_PREFIX)]


def cross_sectional(features: np.ndarray) -> np.ndarray:
    """Each instrument's features minus the instruments' mean at the same bar.

    `features`: (n instruments, T bars, F) scaled features. Uses bar t of every instrument
    only (no look-ahead); zeros for a single instrument.
    """
    return (features - features.mean(axis=0, keepdims=True)).astype(features.dtype, copy=False)


TREND_CLIP = 5.0


def trend_sums(close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running sums from the first bar of the one-bar simple returns and of their squares,
    each (T, n) float64 (0 at bar 0): what `trend_rows` reads. A live feed extends them one
    bar at a time with the same additions (`sum[t] = sum[t-1] + r_t`)."""
    c = np.asarray(close, dtype=np.float64)
    if c.ndim == 1:
        c = c[:, None]
    r = np.zeros_like(c)
    r[1:] = c[1:] / c[:-1] - 1.0
    return np.cumsum(r, axis=0), np.cumsum(r * r, axis=0)


def _tstat(drift: np.ndarray, dsq: np.ndarray, k: int) -> np.ndarray:
    """t-statistic of k returns summing to `drift` with squares summing to `dsq` (elementwise
    arithmetic only, so a row and a whole array give the same bits)."""
    var = dsq / k - (drift / k) ** 2
    sd = np.sqrt(np.maximum(var, 0.0)) * np.sqrt(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(sd > 0, drift / np.where(sd > 0, sd, 1.0), np.sign(drift) * TREND_CLIP)
    return np.clip(stat, -TREND_CLIP, TREND_CLIP)


def trend_rows(
    sums: np.ndarray, squares: np.ndarray, windows: Sequence[int], t: int | None = None
) -> np.ndarray:
    """`trend_strength` from `trend_sums`: every row (n, T, len(windows)), or only bar `t`'s
    (n, len(windows)), the same bits either way."""
    t_len, n = sums.shape
    if t is not None:
        row = np.zeros((n, len(windows)), dtype=np.float32)
        for j, k in enumerate(int(w) for w in windows):
            if t >= k:
                row[:, j] = _tstat(sums[t] - sums[t - k], squares[t] - squares[t - k], k)
        return row
    out = np.zeros((n, t_len, len(windows)), dtype=np.float32)
    for j, k in enumerate(int(w) for w in windows):
        if k < t_len:
            out[:, k:, j] = _tstat(sums[k:] - sums[:-k], squares[k:] - squares[:-k], k).T
    return out


def trend_strength(close: np.ndarray, windows: Sequence[int]) -> np.ndarray:
    """Each instrument's drift over the last k bars as a t-statistic, for each k in `windows`.

    `close`: (T, n) closes. Row t, window k: the sum of the last k one-bar simple returns over
    (their standard deviation x sqrt(k)), clipped to +-`TREND_CLIP` (a drift without noise is
    the clip); 0 before bar k and on a flat window. A forward-filled bar is a zero return
    (its move lands on the next real bar). Returns (n, T, len(windows)) float32. Bar t uses
    closes up to t only, and the running sums run from the first bar, so the rows of a
    truncated series are the rows of the whole one bit for bit (a live feed's rows equal a
    backtest's).
    """
    return trend_rows(*trend_sums(close), windows)


def compute_features(bars: pd.DataFrame) -> pd.DataFrame:
    """Causal features of one instrument's bars: same index, float64, `FEATURE_COLUMNS` order.

    Rows before `WARMUP_BARS` are NaN; every later value is finite for valid bars.
    """
    close = bars["close"].to_numpy(dtype="float64")
    open_ = bars["open"].to_numpy(dtype="float64")
    high = bars["high"].to_numpy(dtype="float64")
    low = bars["low"].to_numpy(dtype="float64")
    volume = np.maximum(bars["volume"].to_numpy(dtype="float64"), 0.0)

    c = pd.Series(close)
    log_close = np.log(c)
    ret1 = log_close.diff()
    out: dict[str, Any] = {
        "log_ret_1": ret1,
        "log_ret_1_lag1": ret1.shift(1),
        "log_ret_1_lag2": ret1.shift(2),
        "log_ret_5": log_close.diff(5),
        "log_ret_20": log_close.diff(20),
        "hl_range": (high - low) / close,
        "oc_change": (close - open_) / close,
    }
    for window in (5, 10, 20):
        out[f"ma{window}_ratio"] = c.rolling(window).mean() / c - 1.0
    out["volatility_20"] = ret1.rolling(20).std(ddof=0)

    vol_ma = pd.Series(volume).rolling(20).mean().to_numpy()
    out["log_volume_ma20"] = np.log1p(vol_ma)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["volume_ratio"] = np.where(vol_ma > 0, volume / np.where(vol_ma > 0, vol_ma, 1), 1.0)

    delta = c.diff()
    gain = delta.clip(lower=0.0).ewm(alpha=1 / 14, adjust=False).mean().to_numpy()
    loss = (-delta).clip(lower=0.0).ewm(alpha=1 / 14, adjust=False).mean().to_numpy()
    total = gain + loss
    with np.errstate(divide="ignore", invalid="ignore"):
        out["rsi_14"] = np.where(total > 0, gain / np.where(total > 0, total, 1), 0.5)

    ema12 = c.ewm(span=12, adjust=False).mean()
    ema26 = c.ewm(span=26, adjust=False).mean()
    macd = (ema12 - ema26) / c
    signal = macd.ewm(span=9, adjust=False).mean()
    out["macd"] = macd
    out["macd_signal"] = signal
    out["macd_hist"] = macd - signal

    frame = pd.DataFrame(
        {k: np.asarray(v, dtype="float64") for k, v in out.items()}, index=bars.index
    )[FEATURE_COLUMNS]
    frame.iloc[:WARMUP_BARS] = np.nan
    return frame


class FeatureScaler:
    """Per-column standardisation fit on a training slice only, clipped; saved with models."""

    def __init__(self, clip: float = 10.0) -> None:
        self.clip = float(clip)
        self.columns: list[str] | None = None
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        """Whether `fit` (or `from_dict`) has set the statistics."""
        return self.mean_ is not None

    def fit(self, df: pd.DataFrame | np.ndarray) -> FeatureScaler:
        """Learn mean/std per column from `df` (the training slice); NaN rows are ignored."""
        values = np.asarray(df, dtype="float64")
        if values.ndim == 1:
            values = values[:, None]
        finite = np.isfinite(values)
        if not finite.any(axis=0).all():
            raise ValueError("FeatureScaler.fit: a column has no finite value")
        masked = np.where(finite, values, np.nan)
        self.mean_ = np.nanmean(masked, axis=0)
        std = np.nanstd(masked, axis=0)
        self.std_ = np.where(std > 1e-12, std, 1.0)
        self.columns = list(df.columns) if isinstance(df, pd.DataFrame) else None
        return self

    def transform(self, df: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Standardised float32 array, clipped to +-clip; non-finite inputs become 0 (the mean)."""
        if self.mean_ is None or self.std_ is None:
            raise ValueError("FeatureScaler.transform called before fit")
        if isinstance(df, pd.DataFrame) and self.columns is not None:
            df = df[self.columns]
        values = np.asarray(df, dtype="float64")
        z = (values - self.mean_) / self.std_
        z = np.where(np.isfinite(z), z, 0.0)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def fit_transform(self, df: pd.DataFrame | np.ndarray) -> np.ndarray:
        """`fit` then `transform` on the same (training) data."""
        return self.fit(df).transform(df)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable statistics, to save next to a model."""
        if self.mean_ is None or self.std_ is None:
            raise ValueError("FeatureScaler.to_dict called before fit")
        return {
            "columns": self.columns,
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureScaler:
        """Rebuild a fitted scaler from `to_dict` output."""
        scaler = cls(clip=float(data.get("clip", 10.0)))
        scaler.columns = list(data["columns"]) if data.get("columns") is not None else None
        scaler.mean_ = np.asarray(data["mean"], dtype="float64")
        scaler.std_ = np.asarray(data["std"], dtype="float64")
        return scaler
