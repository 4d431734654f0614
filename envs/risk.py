"""Portfolio risk inputs for the hierarchical env: causal rolling covariance, vols, VaR.

The limits are applied by envs.engine.risk_limits (the one copy of the trading rules), with
these estimates. Exposures are fractions of equity (signed). Allocations are |exposure| / full
position size, i.e. shares of the deployable capital. Limits, applied in this order to the
target exposures before execution, each only scaling orders down (never up) and each counted
when it binds (with env.risk_limits active in benchmark-relative mode, the sector and
correlation limits scale the active weights x - b instead: an underweight bet is cut back
toward the benchmark too, which can raise an exposure; VaR still scales the book down):

1. sector: the allocations of one sector (cfg.env.sectors; unmapped symbols are unconstrained)
   sum to at most ``max_sector_allocation``; the sector's orders are scaled pro rata.
2. correlation: the correlated allocation of instrument i,
   ``c_i = sum_j max(0, rho_ij sign(x_i) sign(x_j)) a_j`` (j = i included), i.e. the capital that
   moves with i, is at most ``max_correlation_exposure``; x_i is scaled by cap / c_i.
3. VaR: the parametric one-bar VaR ``z_conf x sqrt(x' Sigma x)`` (Sigma: covariance of simple
   close-to-close returns over the last ``risk_window`` bars up to t) is at most
   ``max_portfolio_var``; all orders are scaled by limit / VaR.
"""

from __future__ import annotations

from collections import deque
from statistics import NormalDist

import numpy as np

__all__ = [
    "RiskModel",
    "RollingCovariance",
    "RollingVariance",
    "causal_volatility",
    "rolling_covariance",
    "rolling_variance",
]


def _window_sums(rows: np.ndarray, window: int) -> np.ndarray:
    """Sums of the rows t-window+1..t of `rows` (T, ...) along axis 0: the cumulative sum minus
    the one `window` rows back (the running sums `WindowSums` streams, in the same order)."""
    cs = np.cumsum(rows, axis=0)
    s = cs.copy()
    s[window:] -= cs[:-window]
    return s


def _window_counts(t_len: int, window: int) -> np.ndarray:
    """Rows in each bar's window (T,): min(t + 1, window)."""
    return np.minimum(np.arange(1, t_len + 1), window).astype(np.float64)


def rolling_covariance(returns: np.ndarray, window: int) -> np.ndarray:
    """(T, n, n) covariance of the rows t-window+1..t of `returns` (T, n), ddof=1, causal.

    Rows before a full window use the rows available (zeros before two rows).
    """
    s = _window_sums(returns, window)
    ss = _window_sums(returns[:, :, None] * returns[:, None, :], window)
    counts = _window_counts(len(returns), window)[:, None, None]
    return _covariance_of_sums(s, ss, counts)


def rolling_variance(returns: np.ndarray, window: int) -> np.ndarray:
    """(T, n) variances of the rows t-window+1..t of `returns` (T, n), ddof=1, causal: the
    diagonal of `rolling_covariance` bit for bit (the same sums and formula per element),
    without its (T, n, n) arrays (a year of minute bars is ~10^5 rows)."""
    s = _window_sums(returns, window)
    ss = _window_sums(returns * returns, window)
    counts = _window_counts(len(returns), window)[:, None]
    return _variance_of_sums(s, ss, counts)


def _variance_of_sums(s: np.ndarray, ss: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`_covariance_of_sums`' diagonal from the windows' sums `s`, sums of squares `ss` (T, n)
    and row counts (T, 1): element for element the same operations."""
    mean_sq = (s * s) / counts
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (ss - mean_sq) / np.maximum(counts - 1.0, 1.0)
    var[counts[:, 0] < 2] = 0.0
    return np.maximum(var, 0.0)


def _covariance_of_sums(s: np.ndarray, ss: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Covariances (ddof=1) from the windows' sums `s` (T, n), sums of outer products `ss`
    (T, n, n) and row counts (T, 1, 1): the one formula of both `rolling_covariance` and
    `RollingCovariance`."""
    n = s.shape[1]
    mean_outer = (s[:, :, None] * s[:, None, :]) / counts
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = (ss - mean_outer) / np.maximum(counts - 1.0, 1.0)
    cov[counts[:, 0, 0] < 2] = 0.0
    # symmetric and PSD up to rounding: clip tiny negative variances
    idx = np.arange(n)
    cov[:, idx, idx] = np.maximum(cov[:, idx, idx], 0.0)
    return cov


class WindowSums:
    """`_window_sums` one row at a time: `push(row)` gives the sum of the last `window` rows
    pushed, as the running (cumulative) sum minus the one `window` rows back, so the value
    equals the batch row bit for bit. Keeps the last window + 1 cumulative sums."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.count = 0
        self._cum: deque[np.ndarray] = deque()
        self._last: np.ndarray | None = None

    def push(self, row: np.ndarray) -> np.ndarray:
        self._last = row.copy() if self._last is None else self._last + row
        self.count += 1
        self._cum.append(self._last)
        s = self._last.copy()
        if len(self._cum) > self.window:
            s -= self._cum.popleft()
        return s


class RollingCovariance:
    """`rolling_covariance` one row at a time (a live feed): `push(returns_row)` gives the
    covariance of that bar, equal bit for bit to the batch row (the same running sums, in the
    same order, and the same formula)."""

    def __init__(self, n: int, window: int) -> None:
        self.window = window
        self._s, self._ss = WindowSums(window), WindowSums(window)

    def push(self, returns: np.ndarray) -> np.ndarray:
        r = np.asarray(returns, dtype=np.float64)
        s, ss = self._s.push(r), self._ss.push(r[:, None] * r[None, :])
        counts = np.full((1, 1, 1), float(min(self._s.count, self.window)))
        return _covariance_of_sums(s[None], ss[None], counts)[0]


def causal_volatility(closes: np.ndarray, window: int) -> np.ndarray:
    """(T, n) per-bar volatility of close-to-close returns over the last `window` bars up to t
    (the diagonal of `rolling_covariance`, via `rolling_variance`), for callers that need no
    covariance."""
    closes = np.asarray(closes, dtype=np.float64).reshape(len(closes), -1)
    rets = np.zeros_like(closes)
    rets[1:] = closes[1:] / closes[:-1] - 1.0
    return np.sqrt(rolling_variance(rets, window))


class RollingVariance:
    """`rolling_variance` one row at a time (a live feed): `push(returns_row)` gives that bar's
    variances, equal bit for bit to the batch row (the same running sums and formula); it
    keeps 2 x n numbers a bar of its window, not `RollingCovariance`'s n x n."""

    def __init__(self, n: int, window: int) -> None:
        self.window = window
        self._s, self._ss = WindowSums(window), WindowSums(window)

    def push(self, returns: np.ndarray) -> np.ndarray:
        r = np.asarray(returns, dtype=np.float64)
        s, ss = self._s.push(r), self._ss.push(r * r)
        counts = np.full((1, 1), float(min(self._s.count, self.window)))
        return _variance_of_sums(s[None], ss[None], counts)[0]


class RiskModel:
    """The causal risk estimates of every bar: covariance, volatilities, correlations and the
    VaR quantile. The limits themselves are one of the trading rules: envs.engine.risk_limits."""

    def __init__(self, cov: np.ndarray, confidence: float) -> None:
        self.cov = cov
        var = np.einsum("tii->ti", cov)
        self.vol = np.sqrt(np.maximum(var, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = self.vol[:, :, None] * self.vol[:, None, :]
            self.corr = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)
        n = cov.shape[1]
        self.corr[:, np.arange(n), np.arange(n)] = 1.0
        self.z = NormalDist().inv_cdf(confidence)
        self.n = n

    def var(self, t: int, exposure: np.ndarray) -> float:
        """Parametric one-bar VaR (fraction of equity) of `exposure` with the covariance at t."""
        v = float(exposure @ self.cov[t] @ exposure)
        return self.z * (v**0.5) if v > 0 else 0.0
