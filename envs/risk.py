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


def rolling_covariance(returns: np.ndarray, window: int) -> np.ndarray:
    """(T, n, n) covariance of the rows t-window+1..t of `returns` (T, n), ddof=1, causal.

    Rows before a full window use the rows available (zeros before two rows).
    """
    t_len, n = returns.shape
    cs = np.cumsum(returns, axis=0)
    outer = returns[:, :, None] * returns[:, None, :]
    css = np.cumsum(outer, axis=0)
    s = cs.copy()
    ss = css.copy()
    s[window:] -= cs[:-window]
    ss[window:] -= css[:-window]
    counts = np.minimum(np.arange(1, t_len + 1), window).astype(np.float64)[:, None, None]
    return _covariance_of_sums(s, ss, counts)


def rolling_variance(returns: np.ndarray, window: int) -> np.ndarray:
    """(T, n) variances of the rows t-window+1..t of `returns` (T, n), ddof=1, causal: the
    diagonal of `rolling_covariance` bit for bit (the same sums and formula per element),
    without its (T, n, n) arrays (a year of minute bars is ~10^5 rows)."""
    t_len = returns.shape[0]
    cs = np.cumsum(returns, axis=0)
    css = np.cumsum(returns * returns, axis=0)
    s = cs.copy()
    ss = css.copy()
    s[window:] -= cs[:-window]
    ss[window:] -= css[:-window]
    counts = np.minimum(np.arange(1, t_len + 1), window).astype(np.float64)[:, None]
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


class RollingCovariance:
    """`rolling_covariance` one row at a time (a live feed): `push(returns_row)` gives the
    covariance of that bar, equal bit for bit to the batch row (the same running sums, in the
    same order, and the same formula)."""

    def __init__(self, n: int, window: int) -> None:
        self.window = window
        self.count = 0
        self.cs: list[np.ndarray] = []  # running sums of the last window + 1 bars
        self.css: list[np.ndarray] = []
        self._cs, self._css = np.zeros(n), np.zeros((n, n))

    def push(self, returns: np.ndarray) -> np.ndarray:
        r = np.asarray(returns, dtype=np.float64)
        self._cs = self._cs + r if self.count else r.copy()
        outer = r[:, None] * r[None, :]
        self._css = self._css + outer if self.count else outer
        self.count += 1
        self.cs.append(self._cs)
        self.css.append(self._css)
        s, ss = self._cs.copy(), self._css.copy()
        if len(self.cs) > self.window:
            s -= self.cs[0]
            ss -= self.css[0]
            del self.cs[0], self.css[0]
        counts = np.full((1, 1, 1), float(min(self.count, self.window)))
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
        self.count = 0
        self.cs: deque[np.ndarray] = deque()  # running sums of the last window + 1 bars
        self.css: deque[np.ndarray] = deque()
        self._cs, self._css = np.zeros(n), np.zeros(n)

    def push(self, returns: np.ndarray) -> np.ndarray:
        r = np.asarray(returns, dtype=np.float64)
        self._cs = self._cs + r if self.count else r.copy()
        sq = r * r
        self._css = self._css + sq if self.count else sq
        self.count += 1
        self.cs.append(self._cs)
        self.css.append(self._css)
        s, ss = self._cs.copy(), self._css.copy()
        if len(self.cs) > self.window:
            s -= self.cs.popleft()
            ss -= self.css.popleft()
        counts = np.full((1, 1), float(min(self.count, self.window)))
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
