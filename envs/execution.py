"""The one execution and cost model shared by the single and the hierarchical environment.

Timing: a target chosen after observing bar t is filled at bar t+1's **open**; P&L is then
marked at bar t+1's close. Fills happen at the open price; every fill pays, in cash,

    cost = |traded notional| x (fee + (slippage_bps + spread_bps / 2) / 10_000)

so slippage and half the spread are modelled as proportional costs (the reported effective
fill price is ``open x (1 +- (slippage_bps + spread_bps / 2) / 10_000)``). Positions are held
in units; shorts hold negative units and receive the sale proceeds in cash, so
``equity = cash + sum(units x price)`` always holds. The functions work on Python floats (single
env, fastest) and on numpy arrays (hierarchical env, one element per instrument).

Forward-filled bars (align's ``filled`` column: no trade happened) never fill anything: an
order for such a bar waits, unchanged, for the instrument's next real bar (the latest target
is what fills there), and stop-losses do not fire on them. The position is still marked at
their (repeated) close.

Stop-losses (``stop_loss_pct`` s > 0) are resting orders at the level ``entry x (1 - s)`` for a
long, ``entry x (1 + s)`` for a short (`stop_level`). After the open's fills, a position whose
bar trades through the level (low <= level for a long, high >= level for a short) is closed at
the level, or at the open when the bar gapped through it (the worse price for the holder:
min(level, open) for a long, max(level, open) for a short), paying the same cost rate.

Borrow cost (``borrow_bps_per_year`` b): every bar, short positions pay
``|short notional at the open, after its fills| x b / 10_000 / periods_per_year`` in cash
(`borrow_rate`), with periods_per_year from ``envs.common.env_periods_per_year``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CostModel",
    "borrow_rate",
    "rebalance",
    "stop_level",
    "stop_loss_fill",
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


def rebalance(units: Any, cash: float, target_units: Any, price: Any, rate: float) -> tuple:
    """Trade from `units` to `target_units` at `price`, paying `rate` x traded notional.

    Returns (new_units, new_cash, cost, traded_notional); arrays in, arrays out (cost and
    traded notional then per element, the cash is summed).
    """
    delta = target_units - units
    traded = abs(delta) * price
    cost = traded * rate
    if isinstance(delta, np.ndarray):
        new_cash = cash - float(np.dot(delta, price)) - float(cost.sum())
    else:
        new_cash = cash - delta * price - cost
    return target_units, new_cash, cost, traded


def stop_level(units: Any, entry_price: Any, stop_loss_pct: float) -> Any:
    """The stop price of a position: entry x (1 - s) for a long, entry x (1 + s) for a short."""
    return entry_price * (1.0 - stop_loss_pct * np.sign(units))


def stop_loss_fill(
    units: Any, entry_price: Any, open_: Any, low: Any, high: Any, stop_loss_pct: float
) -> tuple[Any, Any]:
    """(hit, fill price) of the stop-loss within one bar (see the module docstring).

    A long is hit when low <= level and fills at min(level, open); a short when high >= level
    and fills at max(level, open). Flat positions never hit; a 0 stop is off. Floats in ->
    (bool, float); arrays in -> (bool array, float array).
    """
    level = stop_level(units, entry_price, stop_loss_pct)
    if stop_loss_pct <= 0:
        hit = np.zeros(np.shape(units), dtype=bool) if isinstance(units, np.ndarray) else False
        return hit, level
    hit = ((units > 0) & (low <= level)) | ((units < 0) & (high >= level))
    price = np.where(units > 0, np.minimum(level, open_), np.maximum(level, open_))
    if not isinstance(units, np.ndarray):
        return bool(hit), float(price)
    return hit, price


def vol_target_size(ann_vol: np.ndarray, target: float, cap: float) -> np.ndarray:
    """Full position size (fraction of equity) under env.vol_target: target / the annualised
    volatility, capped at `cap` (vol_target_max_leverage), and `cap` where the vol is 0."""
    with np.errstate(divide="ignore"):
        return np.where(ann_vol > 0, np.minimum(target / ann_vol, cap), cap)


def borrow_rate(borrow_bps_per_year: float, periods_per_year: float) -> float:
    """Borrow cost per bar as a fraction of the short notional: bps / 10_000 / bars per year."""
    if borrow_bps_per_year < 0:
        raise ValueError(f"borrow_bps_per_year must be >= 0, got {borrow_bps_per_year}")
    return borrow_bps_per_year * 1e-4 / periods_per_year
