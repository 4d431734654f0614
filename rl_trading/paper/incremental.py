"""Streaming twins of the batch feature and risk arrays, for the live paper path: O(1) a bar.

`FeatureStream` advances one instrument's `rl_trading.data.features.compute_features` (then
the model's stored scaler) by one bar with the same floating-point operations, in the same
order, as pandas' rolling / exponential kernels run over the whole series (Kahan-compensated
running sums, Welford variance, the `adjust=False` EMA recursion), so its row of bar t equals
the batch row bit for bit: features at bar t use bars up to t only and are not recomputed
over a window that would round differently. `envs.risk.RollingCovariance` is the same for the
risk model's covariance, and `envs.risk.RollingVariance` for the sizing volatility
(env.vol_horizon_years). tests/test_paper.py checks them against the batch functions on
thousands of bars (flat stretches included), and that an env grown bar by bar (a restored
session replays its bars through the same streams) has the rows of one built over all bars.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from rl_trading.data.features import FEATURE_COLUMNS, WARMUP_BARS, FeatureScaler

_NAN = float("nan")


class _RollingMean:
    """pandas `Series.rolling(w).mean()` (aggregations.roll_mean), one value at a time."""

    def __init__(self, window: int) -> None:
        self.w = window
        self.vals: deque[float] = deque()
        self.nobs = self.neg = 0
        self.sum = self.comp_add = self.comp_rem = 0.0

    def push(self, val: float) -> float:
        self.vals.append(val)
        if len(self.vals) > self.w:
            old = self.vals.popleft()
            if old == old:
                self.nobs -= 1
                y = -old - self.comp_rem
                t = self.sum + y
                self.comp_rem = t - self.sum - y
                self.sum = t
                if math.copysign(1.0, old) < 0:
                    self.neg -= 1
        if val == val:
            self.nobs += 1
            y = val - self.comp_add
            t = self.sum + y
            self.comp_add = t - self.sum - y
            self.sum = t
            if math.copysign(1.0, val) < 0:
                self.neg += 1
        if self.nobs >= self.w and self.nobs > 0:
            result = self.sum / self.nobs
            if (self.neg == 0 and result < 0) or (self.neg == self.nobs and result > 0):
                result = 0.0  # all positive / all negative values: pandas' sign guard
            return result
        return _NAN


class _RollingStd:
    """pandas `Series.rolling(w).std(ddof=0)` (aggregations.roll_var, then a square root)."""

    def __init__(self, window: int, ddof: int = 0) -> None:
        self.w, self.ddof = window, ddof
        self.vals: deque[float] = deque()
        self.nobs = self.mean = self.ssqdm = self.comp_add = self.comp_rem = 0.0

    def push(self, val: float) -> float:
        self.vals.append(val)
        if len(self.vals) > self.w:
            old = self.vals.popleft()
            if old == old:
                self.nobs -= 1
                if self.nobs:
                    prev_mean = self.mean - self.comp_rem
                    y = old - self.comp_rem
                    t = y - self.mean
                    self.comp_rem = t + self.mean - y
                    self.mean = self.mean - t / self.nobs
                    self.ssqdm = self.ssqdm - (old - prev_mean) * (old - self.mean)
                else:
                    self.mean = self.ssqdm = 0.0
        if val == val:
            self.nobs += 1
            prev_mean = self.mean - self.comp_add
            y = val - self.comp_add
            t = y - self.mean
            self.comp_add = t + self.mean - y
            self.mean = self.mean + t / self.nobs
            self.ssqdm = self.ssqdm + (val - prev_mean) * (val - self.mean)
        if self.nobs >= max(self.w, 1) and self.nobs > self.ddof:
            var = 0.0 if self.nobs == 1 else self.ssqdm / (self.nobs - self.ddof)
            return math.sqrt(var) if var >= 0 else 0.0
        return _NAN


class _Ewm:
    """pandas `Series.ewm(..., adjust=False).mean()` (aggregations.ewm), one value at a time;
    `alpha` or `span` as pandas takes them (converted through the centre of mass as it is)."""

    def __init__(self, alpha: float | None = None, span: float | None = None) -> None:
        com = (span - 1) / 2 if span is not None else (1 - alpha) / alpha
        self.alpha = 1.0 / (1.0 + com)
        self.factor = 1.0 - self.alpha
        self.weighted = _NAN
        self.old_wt = 1.0
        self.started = False

    def push(self, cur: float) -> float:
        if not self.started:
            self.started, self.weighted, self.old_wt = True, cur, 1.0
            return cur
        if self.weighted == self.weighted:
            self.old_wt *= self.factor
            if cur == cur:
                if self.weighted != cur:
                    w = self.old_wt * self.weighted + self.alpha * cur
                    self.weighted = w / (self.old_wt + self.alpha)
                self.old_wt = 1.0
        elif cur == cur:
            self.weighted = cur
        return self.weighted


class FeatureStream:
    """One instrument's scaled feature rows, bar by bar: `push(open, high, low, close, volume)`
    returns the float32 row `envs.common.prepare_instrument` builds for that bar (zeros in the
    warm-up), for the features of FEATURE_COLUMNS (no supervised-signal columns)."""

    def __init__(self, scaler: FeatureScaler) -> None:
        self.scaler = scaler
        self.count = 0
        self.log_close: deque[float] = deque(maxlen=21)
        self.ret1: deque[float] = deque(maxlen=3)
        self.prev_close = _NAN
        self.ma = {w: _RollingMean(w) for w in (5, 10, 20)}
        self.vol20 = _RollingStd(20)
        self.vol_ma = _RollingMean(20)
        self.gain, self.loss = _Ewm(alpha=1 / 14), _Ewm(alpha=1 / 14)
        self.ema12, self.ema26, self.signal = _Ewm(span=12), _Ewm(span=26), _Ewm(span=9)

    def features(self, o: float, h: float, low: float, c: float, v: float, lc: float) -> dict:
        """Raw (unscaled) features of the next bar, except log_volume_ma20's log1p (returned
        as `vol_ma` for the caller's vectorised np.log1p)."""
        v = max(v, 0.0)
        prev_lc = self.log_close[-1] if self.log_close else _NAN
        r1 = lc - prev_lc
        self.log_close.append(lc)
        self.ret1.append(r1)
        k = len(self.log_close)
        lag = list(self.ret1)
        delta = c - self.prev_close
        self.prev_close = c
        vol_ma = self.vol_ma.push(v)
        gain = self.gain.push(max(delta, 0.0) if delta == delta else _NAN)
        loss = self.loss.push(max(-delta, 0.0) if delta == delta else _NAN)
        total = gain + loss
        e12, e26 = self.ema12.push(c), self.ema26.push(c)
        macd = (e12 - e26) / c
        signal = self.signal.push(macd)
        self.count += 1
        return {
            "log_ret_1": r1,
            "log_ret_1_lag1": lag[-2] if len(lag) >= 2 else _NAN,
            "log_ret_1_lag2": lag[-3] if len(lag) >= 3 else _NAN,
            "log_ret_5": lc - self.log_close[-6] if k >= 6 else _NAN,
            "log_ret_20": lc - self.log_close[-21] if k >= 21 else _NAN,
            "hl_range": (h - low) / c,
            "oc_change": (c - o) / c,
            "ma5_ratio": self.ma[5].push(c) / c - 1.0,
            "ma10_ratio": self.ma[10].push(c) / c - 1.0,
            "ma20_ratio": self.ma[20].push(c) / c - 1.0,
            "volatility_20": self.vol20.push(r1),
            "vol_ma": vol_ma,
            "volume_ratio": v / vol_ma if vol_ma > 0 else 1.0,
            "rsi_14": gain / total if total > 0 else 0.5,
            "macd": macd,
            "macd_signal": signal,
            "macd_hist": macd - signal,
        }


class MarketStream:
    """Every instrument's scaled feature rows, bar by bar (the live path's `prepare_instrument`
    twin): `push(ohlcv)` with an (n, 5) array of open, high, low, close, volume returns the
    (n, F) float32 rows of that bar."""

    def __init__(self, scalers: list[FeatureScaler]) -> None:
        self.streams = [FeatureStream(s) for s in scalers]
        self.scalers = scalers
        self.count = 0
        # each instrument's row in its scaler's column order (the batch's), scaled at once:
        # FeatureScaler.transform's elementwise steps on the stacked statistics
        self.columns = [list(s.columns or FEATURE_COLUMNS) for s in scalers]
        self.mean = np.stack([np.asarray(s.mean_, dtype=np.float64) for s in scalers])
        self.std = np.stack([np.asarray(s.std_, dtype=np.float64) for s in scalers])
        self.clip = np.array([[s.clip] for s in scalers])

    def push(self, ohlcv: np.ndarray) -> np.ndarray:
        ohlcv = np.asarray(ohlcv, dtype=np.float64)
        log_close = np.log(np.ascontiguousarray(ohlcv[:, 3]))
        raw = [
            st.features(*(float(x) for x in row[:5]), float(lc))
            for st, row, lc in zip(self.streams, ohlcv, log_close, strict=True)
        ]
        vol_ma = np.array([r["vol_ma"] for r in raw])
        log_vol = np.log1p(vol_ma)
        n_feat = len(FEATURE_COLUMNS)
        out = np.zeros((len(raw), n_feat), dtype=np.float32)
        warm = self.count < WARMUP_BARS
        self.count += 1
        if warm:
            return out
        for i, r in enumerate(raw):
            r["log_volume_ma20"] = float(log_vol[i])
        values = np.array(
            [[r[c] for c in cols] for r, cols in zip(raw, self.columns, strict=True)],
            dtype=np.float64,
        )
        z = (values - self.mean) / self.std
        z = np.where(np.isfinite(z), z, 0.0)
        out[:] = np.clip(z, -self.clip, self.clip).astype(np.float32)
        return out
