"""Portfolio risk for the hierarchical env: causal rolling covariance, VaR and order limits.

Exposures are fractions of equity (signed). Allocations are |exposure| / max_position_size,
i.e. shares of the deployable capital (they sum to at most 1 across instruments).
Limits, applied in this order to the target exposures before execution, each only scaling
orders down (never up) and each counted when it binds:

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

from statistics import NormalDist

import numpy as np

__all__ = ["RiskModel", "rolling_covariance"]


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
    mean_outer = (s[:, :, None] * s[:, None, :]) / counts
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = (ss - mean_outer) / np.maximum(counts - 1.0, 1.0)
    cov[counts[:, 0, 0] < 2] = 0.0
    # symmetric and PSD up to rounding: clip tiny negative variances
    idx = np.arange(n)
    cov[:, idx, idx] = np.maximum(cov[:, idx, idx], 0.0)
    return cov


class RiskModel:
    """Applies the sector, correlation and VaR limits to target exposures and counts them."""

    def __init__(
        self,
        cov: np.ndarray,
        max_position: float,
        max_var: float,
        confidence: float,
        max_corr_exposure: float,
        max_sector: float | None,
        sector_ids: np.ndarray | None,
    ) -> None:
        self.cov = cov
        var = np.einsum("tii->ti", cov)
        self.vol = np.sqrt(np.maximum(var, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = self.vol[:, :, None] * self.vol[:, None, :]
            self.corr = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)
        n = cov.shape[1]
        self.corr[:, np.arange(n), np.arange(n)] = 1.0
        self.z = NormalDist().inv_cdf(confidence)
        self.max_position = max_position
        self.max_var = max_var
        self.max_corr = max_corr_exposure
        self.max_sector = max_sector
        self.n = n
        self.sector_masks: list[np.ndarray] = []
        if max_sector is not None and sector_ids is not None:
            for sid in np.unique(sector_ids[sector_ids >= 0]):
                mask = sector_ids == sid
                self.sector_masks.append(mask)
        self.use_corr = n > 1 or max_corr_exposure < 1.0

    def var(self, t: int, exposure: np.ndarray) -> float:
        """Parametric one-bar VaR (fraction of equity) of `exposure` with the covariance at t."""
        v = float(exposure @ self.cov[t] @ exposure)
        return self.z * (v**0.5) if v > 0 else 0.0

    def limit(
        self, t: int, x: np.ndarray, max_position: np.ndarray | None = None
    ) -> tuple[np.ndarray, int, int, int, float]:
        """Scale target exposures `x` down to the limits at bar t.

        `max_position` (per instrument) replaces the scalar full position size that makes
        allocations (vol targeting). Returns (x, sector_scaledowns, correlation_scaledowns,
        var_scaledowns, var_after).
        """
        n_sector = n_corr = n_var = 0
        mp = self.max_position if max_position is None else max_position
        alloc = np.abs(x) / mp
        # the total bounds every sector sum and every correlated allocation
        total = float(np.add.reduce(alloc))
        if self.sector_masks and total > self.max_sector:
            for mask in self.sector_masks:
                sector_total = alloc[mask].sum()
                if sector_total > self.max_sector + 1e-12:
                    x[mask] *= self.max_sector / sector_total
                    n_sector += 1
            alloc = np.abs(x) / mp
            total = float(alloc.sum())
        if self.use_corr and total > self.max_corr:
            sign = np.sign(x)
            aligned = np.maximum(self.corr[t] * (sign[:, None] * sign), 0.0)  # = outer
            corr_alloc = aligned @ alloc
            over = corr_alloc > self.max_corr + 1e-12
            n_corr = int(np.count_nonzero(over))
            if n_corr:
                x[over] *= self.max_corr / corr_alloc[over]
        var = self.var(t, x)
        if var > self.max_var:
            x *= self.max_var / var
            var = self.max_var
            n_var = 1
        return x, n_sector, n_corr, n_var, var
