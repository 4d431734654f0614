"""Cost and sizing parameters of the trading rules (the rules themselves: envs.engine).

`CostModel` turns the config's fee, slippage and spread into the one cost rate per unit of
traded notional, ``fee + (slippage_bps + spread_bps / 2) / 10_000``; `borrow_rate` the borrow
fee per bar of short notional; `vol_target_size` the full position size under env.vol_target.
Fills, stops, borrow, limits and rewards are applied by envs.engine with these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CostModel",
    "benchmark_exposures",
    "borrow_rate",
    "position_sizes",
    "sizing_window",
    "vol_target_size",
]


@dataclass(frozen=True)
class CostModel:
    """Proportional trading costs: fee plus slippage and half the spread, on traded notional."""

    fee: float = 0.001
    slippage_bps: float = 0.0
    spread_bps: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fee", "slippage_bps", "spread_bps"):
            if getattr(self, name) < 0:
                raise ValueError(f"cost model: {name} must be >= 0, got {getattr(self, name)}")

    @property
    def price_impact(self) -> float:
        """Fractional price concession per fill: (slippage + half spread) in bps / 10_000."""
        return (self.slippage_bps + 0.5 * self.spread_bps) * 1e-4

    @property
    def rate(self) -> float:
        """Total cost per unit of traded notional."""
        return self.fee + self.price_impact

    def cost(self, traded_notional: Any) -> Any:
        """Cost of trading `traded_notional` (float or array; sign ignored)."""
        return abs(traded_notional) * self.rate

    def fill_price(self, price: Any, delta_units: Any) -> Any:
        """Effective fill price including slippage and half spread (for reporting only)."""
        return price * (1.0 + np.sign(delta_units) * self.price_impact)


def sizing_window(risk_window: int, horizon_years: float | None, periods_per_year: float) -> int:
    """Bars of the causal volatility that sizes positions: env.vol_horizon_years x periods a
    year (at least `risk_window`), or `risk_window` without a horizon."""
    if horizon_years is None:
        return int(risk_window)
    return max(int(risk_window), round(float(horizon_years) * float(periods_per_year)))


def vol_target_size(ann_vol: np.ndarray, target: float, cap: float) -> np.ndarray:
    """Full position size (fraction of equity) under env.vol_target: target / the annualised
    volatility, capped at `cap` (vol_target_max_leverage), and `cap` where the vol is 0."""
    with np.errstate(divide="ignore"):
        return np.where(ann_vol > 0, np.minimum(target / ann_vol, cap), cap)


def position_sizes(
    vol: np.ndarray,
    periods_per_year: float,
    vol_target: float | None,
    cap: float,
    max_position: float,
) -> np.ndarray:
    """Full position size of each instrument at each bar (fraction of equity), from its causal
    per-bar volatility `vol` ([T, n]): `vol_target_size` of the annualised volatility under
    env.vol_target, else max_position_size."""
    if vol_target is None:
        return np.full(np.shape(vol), float(max_position))
    return vol_target_size(vol * math.sqrt(periods_per_year), vol_target, cap)


def benchmark_exposures(
    kind: str, sizes: np.ndarray, growth: np.ndarray | None = None
) -> np.ndarray:
    """Exposures of env.benchmark's portfolio at each bar ([T, n], fractions of equity) from the
    full position sizes: `equal_weight` 1/n of equity each, `vol_target` 1/n of each full size,
    `buy_and_hold` 1/n of equity bought at the first bar and never rebalanced (each weight
    drifts with `growth`, the close over the first bar's close, [T, n]: causal, and the
    benchmark never trades), `none` all 0."""
    n = sizes.shape[-1]
    if kind == "equal_weight":
        return np.full_like(sizes, 1.0 / n, dtype=np.float64)
    if kind == "vol_target":
        return sizes / n
    if kind == "buy_and_hold":
        if growth is None:
            raise ValueError("the buy_and_hold benchmark needs the prices' growth")
        g = np.asarray(growth, dtype=np.float64)
        total = g.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, g / total, 1.0 / n)
    return np.zeros_like(sizes, dtype=np.float64)


def growth_since(closes: np.ndarray, bought_at: np.ndarray, before: int) -> np.ndarray:
    """The buy_and_hold benchmark's `growth` ([T, n]): each close over the close of the bar it
    was bought at (`bought_at`, [n]); 1 on the first `before` rows, the bars before that one
    (no later price is read: causal)."""
    growth = closes / bought_at
    growth[:before] = 1.0
    return growth


def borrow_rate(borrow_bps_per_year: float, periods_per_year: float) -> float:
    """Borrow cost per bar as a fraction of the short notional: bps / 10_000 / bars per year."""
    if borrow_bps_per_year < 0:
        raise ValueError(f"borrow_bps_per_year must be >= 0, got {borrow_bps_per_year}")
    return borrow_bps_per_year * 1e-4 / periods_per_year
