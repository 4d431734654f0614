"""The one execution and cost model shared by the single and the hierarchical environment.

Timing: a target chosen after observing bar t is filled at bar t+1's **open**; P&L is then
marked at bar t+1's close. Fills happen at the open price; every fill pays, in cash,

    cost = |traded notional| x (fee + (slippage_bps + spread_bps / 2) / 10_000)

so slippage and half the spread are modelled as proportional costs (the reported effective
fill price is ``open x (1 +- (slippage_bps + spread_bps / 2) / 10_000)``). Positions are held
in units; shorts hold negative units and receive the sale proceeds in cash, so
``equity = cash + sum(units x price)`` always holds. The functions work on Python floats (single
env, fastest) and on numpy arrays (hierarchical env, one element per instrument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CostModel", "rebalance", "stop_loss_hit"]


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


def stop_loss_hit(units: Any, price: Any, entry_price: Any, stop_loss_pct: float) -> Any:
    """Whether a position has lost at least `stop_loss_pct` of its entry notional.

    Tests ``sign(units) x (price / entry - 1) <= -stop_loss_pct`` without dividing, as
    ``units x (price - entry) <= -stop x |units| x entry``; flat positions never hit, a 0 stop
    is off. Floats in -> bool out; arrays in -> boolean array out.
    """
    if stop_loss_pct <= 0:
        return np.zeros(np.shape(units), dtype=bool) if isinstance(units, np.ndarray) else False
    return (units * (price - entry_price) <= -stop_loss_pct * abs(units) * entry_price) & (
        units != 0
    )
