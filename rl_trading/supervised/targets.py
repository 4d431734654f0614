"""Classification targets: the direction of the forward return, with an optional dead zone.

Label of bar ``t`` is ``1`` when ``close[t + horizon] / close[t] - 1 > 0`` and ``0`` when it is
``< 0``. Bars whose forward return is exactly zero or smaller in size than ``dead_zone`` carry
no direction and get NaN (they are dropped, there is no neutral class); so do the last
``horizon`` bars, whose future is unknown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def forward_return(close: pd.Series, horizon: int) -> pd.Series:
    """Simple return from bar ``t`` to bar ``t + horizon`` (NaN for the last ``horizon`` bars)."""
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    close = close.astype("float64")
    return close.shift(-horizon) / close - 1.0


def direction_target(close: pd.Series, horizon: int = 1, dead_zone: float = 0.0) -> pd.Series:
    """Up (1.0) / down (0.0) label of the forward return; NaN inside the dead zone or unknown."""
    ret = forward_return(close, horizon)
    out = pd.Series(np.nan, index=close.index, dtype="float64", name="target")
    known = ret.notna() & (ret.abs() >= dead_zone) & (ret != 0.0)
    out[known & (ret > 0)] = 1.0
    out[known & (ret < 0)] = 0.0
    return out


def previous_direction(close: pd.Series, horizon: int = 1) -> pd.Series:
    """Direction of the return over the *past* ``horizon`` bars (1/0; NaN if flat or unknown).

    Used as the naive 'trend continues' baseline; it only looks backwards.
    """
    close = close.astype("float64")
    past = close / close.shift(horizon) - 1.0
    out = pd.Series(np.nan, index=close.index, dtype="float64", name="prev_direction")
    out[past > 0] = 1.0
    out[past < 0] = 0.0
    return out
