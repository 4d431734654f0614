"""The one metrics module: performance ratios, risk measures and incremental reward terms.

Everything here is plain numpy on 1-D arrays of per-period returns or equity values, so
rewards (envs), Tune objectives (training / tuning) and reports (evaluation) agree exactly.

Conventions
-----------
* ``returns`` are simple per-period returns (``equity[t] / equity[t-1] - 1``) unless a function
  says otherwise; ``equity`` is a positive account-value curve, first value = starting equity.
* **Risk-free rate: 0 everywhere** (:data:`RISK_FREE_RATE`). The environments pay no interest
  on cash, so a strategy's return is already its excess return over holding cash; subtracting
  a rate from the whole equity would penalise a policy for the capital it keeps in cash.
  Validation, checkpoint selection, the PBT objective, grading, reports and
  ``DistributedTrainer.evaluate`` all call :func:`summarize`, which uses this convention.
* Annualisation uses one number of bars per year per run (``cfg.data.periods_per_year``,
  resolved from ``data.calendar`` by :func:`rl_trading.config.resolve_calendar`). Calendars:
  ``crypto`` (365 days x 24 h), ``fx`` (260 weekdays x 24 h), ``equity`` (252 days x 6.5 h;
  ``"1d"`` -> 252, ``"1m"`` -> 98,280) and ``auto``, measured from the training bars'
  timestamps by :func:`measure_periods_per_year` (bars per elapsed year). ``"24h"`` is an
  alias of ``crypto``. A number overrides every calendar.
* Every function returns a finite float (never NaN / inf): degenerate inputs (fewer than two
  points, zero volatility, no losses, ...) give the documented neutral value, usually 0.0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "active_metrics",
    "information_ratio",
    "tracking_error",
    "CALENDARS",
    "PROFIT_FACTOR_CAP",
    "RISK_FREE_RATE",
    "DifferentialSharpe",
    "RollingSharpe",
    "RollingSharpeArray",
    "annualized_return",
    "calmar_ratio",
    "conditional_value_at_risk",
    "deflated_sharpe_ratio",
    "trials_sharpe_variance",
    "diversification",
    "downside_penalty",
    "drawdown_penalty",
    "herfindahl",
    "log_returns",
    "max_drawdown",
    "max_drawdown_at_volatility",
    "expected_max_sharpe",
    "measure_periods_per_year",
    "periods_per_year",
    "probability_of_backtest_overfitting",
    "probabilistic_sharpe_ratio",
    "profit_factor",
    "sharpe_ratio",
    "simple_returns",
    "sortino_ratio",
    "summarize",
    "total_return",
    "turnover",
    "value_at_risk",
    "var_compliance_rate",
    "volatility",
    "win_rate",
]

#: Value reported by :func:`profit_factor` when there are gains but no losses (finite, JSON-safe).
PROFIT_FACTOR_CAP = 100.0
#: The one risk-free convention of every reported metric (see the module docstring).
RISK_FREE_RATE = 0.0
#: calendar -> (trading days per year, trading hours per day, weeks' bars per year factor).
CALENDARS: dict[str, tuple[float, float]] = {
    "crypto": (365.0, 24.0),
    "24h": (365.0, 24.0),
    "fx": (260.0, 24.0),
    "equity": (252.0, 6.5),
}
#: Gaps longer than this (data outages) are not counted as elapsed market time.
_OUTAGE_SECONDS = 7 * 86400.0
_EPS = 1e-12
_TF_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|t|h|hr|d|day|w|wk|mo|mon)\s*$", re.I)
_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "t": 60, "h": 3600, "hr": 3600}


def periods_per_year(
    timeframe: str | float | int, calendar: str = "crypto", override: float | None = None
) -> float:
    """Number of bars of `timeframe` ("1m", "5m", "1h", "1d", "1w", ...) in one year.

    `calendar`: crypto / 24h (365 days x 24 h), fx (260 days x 24 h) or equity (252 days of
    6.5 h). `override` (or a number passed as `timeframe`) is returned unchanged.
    """
    if override is not None:
        if override <= 0:
            raise ValueError(f"periods_per_year override must be positive, got {override}")
        return float(override)
    if isinstance(timeframe, int | float):
        if timeframe <= 0:
            raise ValueError(f"periods_per_year must be positive, got {timeframe}")
        return float(timeframe)
    if calendar not in CALENDARS:
        raise ValueError(f"unknown calendar '{calendar}' (use {', '.join(CALENDARS)})")
    days, hours = CALENDARS[calendar]
    match = _TF_RE.match(str(timeframe))
    if not match:
        raise ValueError(f"cannot parse timeframe '{timeframe}' (expected e.g. 1m, 15m, 1h, 1d)")
    qty, unit = float(match.group(1)), match.group(2).lower()
    if qty <= 0:
        raise ValueError(f"timeframe '{timeframe}' must be positive")
    if unit in ("d", "day"):
        return days / qty
    if unit in ("w", "wk"):
        return 52.0 / qty if days < 365.0 else days / (7.0 * qty)
    if unit in ("mo", "mon"):
        return 12.0 / qty
    seconds = qty * _SECONDS[unit]
    return days * hours * 3600.0 / seconds


def measure_periods_per_year(timestamps: Any) -> float:
    """Bars per year measured from a market's own timestamps: bars per elapsed year.

    (n - 1) bar intervals divided by the elapsed time in years of 365 days, where gaps
    longer than 7 days (data outages, not weekends or holidays) are left out of the elapsed
    time. Weekends, holidays, lunch breaks and session hours are thereby counted as the market
    has them: daily equities give ~252, 24/7 30-minute crypto 17,520 (a gap-free 24/7 market
    gives exactly the crypto calendar), hourly FX ~6,200 and 1-minute US equities ~97,000.
    ValueError for fewer than two distinct timestamps.
    """
    ns = pd.DatetimeIndex(timestamps).as_unit("ns").asi8
    if ns.size < 2:
        raise ValueError("need at least two bars to measure bars per year")
    gaps = np.diff(np.sort(ns)).astype(np.float64) / 1e9
    gaps = gaps[gaps > 0]
    elapsed = float(gaps[gaps <= _OUTAGE_SECONDS].sum())
    if elapsed <= 0:
        raise ValueError("timestamps span no time; cannot measure bars per year")
    n_intervals = int((gaps <= _OUTAGE_SECONDS).sum())
    return float(n_intervals / (elapsed / (365.0 * 86400.0)))


def _ppy(value: float | str) -> float:
    return periods_per_year(value) if isinstance(value, str) else float(value)


def _arr(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size and not np.all(np.isfinite(arr)):
        arr = arr[np.isfinite(arr)]
    return arr


def _active(returns: Any, benchmark_returns: Any) -> np.ndarray:
    """r - r_benchmark bar by bar, over the bars where both are finite (dropping them from
    each side separately would pair the rest with the wrong bars)."""
    r = np.asarray(returns, dtype=np.float64).reshape(-1)
    b = np.asarray(benchmark_returns, dtype=np.float64).reshape(-1)
    if r.shape != b.shape:
        raise ValueError(f"returns ({r.size}) and benchmark returns ({b.size}) differ in length")
    keep = np.isfinite(r) & np.isfinite(b)
    return r[keep] - b[keep]


# --------------------------------------------------------------------------------------------
# Returns
# --------------------------------------------------------------------------------------------


def simple_returns(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-period simple returns of an equity curve (length n-1; empty for < 2 points)."""
    eq = _arr(equity)
    if eq.size < 2:
        return np.zeros(0)
    prev = eq[:-1]
    out = np.zeros(eq.size - 1)
    np.divide(eq[1:], prev, out=out, where=prev > 0)
    out -= 1.0
    out[prev <= 0] = 0.0
    return out


def log_returns(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-period log returns of an equity curve; non-positive values are floored at 1e-12."""
    eq = np.maximum(_arr(equity), _EPS)
    if eq.size < 2:
        return np.zeros(0)
    return np.diff(np.log(eq))


def total_return(equity: Sequence[float] | np.ndarray) -> float:
    """Whole-period simple return `equity[-1] / equity[0] - 1` (0.0 for < 2 points)."""
    eq = _arr(equity)
    if eq.size < 2 or eq[0] <= 0:
        return 0.0
    return float(eq[-1] / eq[0] - 1.0)


def annualized_return(equity: Sequence[float] | np.ndarray, periods_per_year: float | str) -> float:
    """Geometric annualised return over the n-1 periods of the curve (0.0 for < 2 points).

    The exponent is capped so very short, very profitable curves give a huge but finite value.
    """
    eq = _arr(equity)
    if eq.size < 2 or eq[0] <= 0:
        return 0.0
    if eq[-1] <= 0:
        return -1.0
    growth = math.log(eq[-1] / eq[0]) * _ppy(periods_per_year) / (eq.size - 1)
    return float(math.expm1(min(growth, 700.0)))


def volatility(returns: Sequence[float] | np.ndarray, periods_per_year: float | str) -> float:
    """Annualised volatility: sample std (ddof=1) x sqrt(periods_per_year); 0.0 for < 2."""
    r = _arr(returns)
    if r.size < 2:
        return 0.0
    return float(np.std(r, ddof=1) * math.sqrt(_ppy(periods_per_year)))


# --------------------------------------------------------------------------------------------
# Ratios
# --------------------------------------------------------------------------------------------


def sharpe_ratio(
    returns: Sequence[float] | np.ndarray,
    periods_per_year: float | str,
    risk_free_rate: float = 0.0,
) -> float:
    """Annualised Sharpe: mean(r - rf/ppy) / std(r, ddof=1) x sqrt(ppy).

    0.0 for fewer than two returns or zero standard deviation.
    """
    r = _arr(returns)
    if r.size < 2:
        return 0.0
    ppy = _ppy(periods_per_year)
    excess = r - risk_free_rate / ppy
    std = float(np.std(excess, ddof=1))
    if std <= _EPS:
        return 0.0
    return float(np.mean(excess) / std * math.sqrt(ppy))


def tracking_error(
    returns: Sequence[float] | np.ndarray,
    benchmark_returns: Sequence[float] | np.ndarray,
    periods_per_year: float | str,
) -> float:
    """Annualised tracking error: std(r - r_benchmark, ddof=1) x sqrt(ppy) (0 for < 2 bars)."""
    active = _active(returns, benchmark_returns)
    if active.size < 2:
        return 0.0
    return float(np.std(active, ddof=1) * math.sqrt(_ppy(periods_per_year)))


def information_ratio(
    returns: Sequence[float] | np.ndarray,
    benchmark_returns: Sequence[float] | np.ndarray,
    periods_per_year: float | str,
) -> float:
    """Annualised information ratio: the Sharpe ratio of the active returns r - r_benchmark
    (0 when they never differ)."""
    return sharpe_ratio(_active(returns, benchmark_returns), periods_per_year)


def active_metrics(
    returns: Sequence[float] | np.ndarray,
    benchmark_returns: Sequence[float] | np.ndarray,
    periods_per_year: float | str,
) -> dict[str, float]:
    """information_ratio, tracking_error and the annualised mean active return of per-bar
    returns against a benchmark's over the same bars."""
    active = _active(returns, benchmark_returns)
    return {
        "information_ratio": information_ratio(returns, benchmark_returns, periods_per_year),
        "tracking_error": tracking_error(returns, benchmark_returns, periods_per_year),
        "active_return": float(np.mean(active) * _ppy(periods_per_year)) if active.size else 0.0,
    }


def sortino_ratio(
    returns: Sequence[float] | np.ndarray,
    periods_per_year: float | str,
    risk_free_rate: float = 0.0,
) -> float:
    """Annualised Sortino: mean excess / downside deviation x sqrt(ppy).

    Downside deviation = sqrt(mean(min(excess, 0)^2)) over all periods. 0.0 for fewer than two
    returns, for flat equity (all returns zero: as Sharpe, a strategy that never trades scores 0
    whatever the risk-free rate) or when there is no downside (no period below the risk-free
    rate).
    """
    r = _arr(returns)
    if r.size < 2 or float(np.max(np.abs(r))) <= _EPS:
        return 0.0
    ppy = _ppy(periods_per_year)
    excess = r - risk_free_rate / ppy
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
    if downside <= _EPS:
        return 0.0
    return float(np.mean(excess) / downside * math.sqrt(ppy))


def max_drawdown(equity: Sequence[float] | np.ndarray) -> float:
    """Largest peak-to-trough fall as a positive fraction of the peak (0.0 if never below)."""
    eq = _arr(equity)
    if eq.size < 2:
        return 0.0
    peak = np.maximum.accumulate(eq)
    dd = np.zeros_like(eq)
    np.divide(eq, peak, out=dd, where=peak > 0)
    dd = 1.0 - dd
    dd[peak <= 0] = 0.0
    return float(max(0.0, dd.max()))


def calmar_ratio(equity: Sequence[float] | np.ndarray, periods_per_year: float | str) -> float:
    """Annualised return / max drawdown (0.0 when there was no drawdown)."""
    mdd = max_drawdown(equity)
    if mdd <= _EPS:
        return 0.0
    return float(annualized_return(equity, periods_per_year) / mdd)


def win_rate(returns: Sequence[float] | np.ndarray) -> float:
    """Fraction of non-zero per-period returns that are positive (0.0 if none are non-zero).

    Per period, not per trade: flat periods (zero return, e.g. no position) are ignored.
    """
    r = _arr(returns)
    active = r[np.abs(r) > _EPS]
    if active.size == 0:
        return 0.0
    return float(np.mean(active > 0))


def profit_factor(returns: Sequence[float] | np.ndarray) -> float:
    """Sum of gains / |sum of losses|; 0.0 with no gains, PROFIT_FACTOR_CAP with no losses."""
    r = _arr(returns)
    gains = float(r[r > 0].sum())
    losses = float(-r[r < 0].sum())
    if gains <= 0:
        return 0.0
    if losses <= _EPS:
        return PROFIT_FACTOR_CAP
    return float(min(gains / losses, PROFIT_FACTOR_CAP))


def turnover_per_period(
    traded: Sequence[float] | np.ndarray, equity: Sequence[float] | np.ndarray
) -> np.ndarray:
    """traded_t / equity_t-1 for periods t >= 1, where traded_t is the notional bought plus
    sold during period t (currency, aligned with `equity`; row 0 is the start); 0 where the
    equity before it is not positive."""
    tr = np.nan_to_num(np.asarray(traded, dtype=np.float64).reshape(-1))
    eq = np.asarray(equity, dtype=np.float64).reshape(-1)
    if tr.shape != eq.shape:
        raise ValueError(f"turnover: {tr.size} traded values for {eq.size} equity values")
    prev = eq[:-1]
    return np.where(prev > 0, tr[1:] / np.where(prev > 0, prev, 1.0), 0.0)


def turnover(traded: Sequence[float] | np.ndarray, equity: Sequence[float] | np.ndarray) -> float:
    """Mean per-period traded amount as a fraction of equity: the mean of
    :func:`turnover_per_period`.

    Measured on the trades, not on changes of the held weights: a held position's weight
    moves with its price, which is no trade (buy-and-hold turns over once). 0.0 with fewer
    than two rows.
    """
    frac = turnover_per_period(traded, equity)
    return float(frac.mean()) if frac.size else 0.0


def max_drawdown_at_volatility(
    returns: Sequence[float] | np.ndarray, periods_per_year: float | str, annual_vol: float
) -> float:
    """Max drawdown of the returns scaled to an annualised volatility of `annual_vol`.

    Compares drawdowns at equal risk: a strategy mostly in cash has a small raw drawdown only
    because it holds little risk; scaled to the same volatility its drawdown shows how its
    losses cluster. 0.0 for fewer than two returns or zero volatility.
    """
    r = _arr(returns)
    vol = volatility(r, periods_per_year)
    if r.size < 2 or vol <= _EPS:
        return 0.0
    scaled = np.maximum(r * (annual_vol / vol), -1.0)
    return max_drawdown(np.concatenate([[1.0], np.cumprod(1.0 + scaled)]))


# --------------------------------------------------------------------------------------------
# Risk
# --------------------------------------------------------------------------------------------


def value_at_risk(returns: Sequence[float] | np.ndarray, confidence: float = 0.95) -> float:
    """Historical one-period VaR as a positive loss: -quantile(r, 1 - confidence), floored at 0.

    Uses numpy's default (linear interpolation) quantile. 0.0 for an empty series.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    r = _arr(returns)
    if r.size == 0:
        return 0.0
    return float(max(0.0, -np.quantile(r, 1.0 - confidence)))


def conditional_value_at_risk(
    returns: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> float:
    """Historical expected shortfall: -mean of the returns at or below the VaR quantile (>= 0)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    r = _arr(returns)
    if r.size == 0:
        return 0.0
    q = np.quantile(r, 1.0 - confidence)
    tail = r[r <= q]
    return float(max(0.0, -tail.mean())) if tail.size else 0.0


def var_compliance_rate(
    returns_or_breaches: Sequence[float] | np.ndarray,
    var_estimates: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Fraction of periods without a VaR breach (1.0 for no periods).

    Either pass a boolean breach array, or realised returns with the positive VaR estimate
    made before each period: a breach is a loss larger than the estimate (`-r > var`).
    """
    values = np.asarray(returns_or_breaches)
    if values.size == 0:
        return 1.0
    if var_estimates is None:
        breaches = values.astype(bool).reshape(-1)
    else:
        r = np.asarray(values, dtype=np.float64).reshape(-1)
        var = np.asarray(var_estimates, dtype=np.float64).reshape(-1)
        if var.size != r.size:
            raise ValueError(f"returns ({r.size}) and var_estimates ({var.size}) differ in length")
        breaches = -r > var
    return float(1.0 - breaches.mean())


def herfindahl(weights: Sequence[float] | np.ndarray) -> float:
    """Herfindahl concentration of |weights| normalised to sum 1 (1/n .. 1; 0.0 if all zero)."""
    w = np.abs(np.asarray(weights, dtype=np.float64).reshape(-1))
    total = float(w.sum())
    if not total > _EPS or not math.isfinite(total):
        w = np.abs(_arr(weights))
        total = float(w.sum())
        if total <= _EPS:
            return 0.0
    return float(np.dot(w, w)) / (total * total)


def diversification(weights: Sequence[float] | np.ndarray) -> float:
    """Diversification term 1 - Herfindahl (0 for one position or none, up to 1 - 1/n)."""
    h = herfindahl(weights)
    return 0.0 if h == 0.0 else float(1.0 - h)


# --------------------------------------------------------------------------------------------
# Incremental reward terms (called once per env step: plain Python floats, no numpy overhead)
# --------------------------------------------------------------------------------------------


def downside_penalty(r: float, target: float = 0.0) -> float:
    """Squared shortfall below `target`: max(target - r, 0)^2 (Sortino-style penalty)."""
    short = target - r
    return short * short if short > 0.0 else 0.0


def drawdown_penalty(equity: float, peak: float) -> float:
    """Current drawdown from the running peak as a positive fraction: max(0, 1 - equity/peak)."""
    if peak <= 0.0:
        return 0.0
    dd = 1.0 - equity / peak
    return dd if dd > 0.0 else 0.0


class DifferentialSharpe:
    """Moody & Saffell (1998) differential Sharpe ratio, an online Sharpe-gradient reward.

    Keeps EMAs A (mean) and B (second moment) with rate `eta`; `update(r)` returns
    D_t = (B dA - A dB / 2) / (B - A^2)^1.5 using the values before the update, then updates.
    Returns 0.0 while the variance estimate is ~0; clipped to +-`clip` (None: no clip).
    """

    __slots__ = ("eta", "clip", "a", "b")

    def __init__(self, eta: float = 0.01, clip: float | None = 10.0) -> None:
        if not 0.0 < eta < 1.0:
            raise ValueError(f"DifferentialSharpe eta must be in (0, 1), got {eta}")
        self.eta = float(eta)
        self.clip = clip
        self.a = 0.0
        self.b = 0.0

    def reset(self) -> None:
        """Forget the moment estimates (start of an episode)."""
        self.a = 0.0
        self.b = 0.0

    def update(self, r: float) -> float:
        """Differential Sharpe increment for return `r`, then update the moment estimates."""
        a, b = self.a, self.b
        da = r - a
        db = r * r - b
        var = b - a * a
        d = 0.0
        if var > 1e-16:
            d = (b * da - 0.5 * a * db) / (var * math.sqrt(var))
            if self.clip is not None:
                d = max(-self.clip, min(self.clip, d))
        self.a = a + self.eta * da
        self.b = b + self.eta * db
        return float(d)


class _RollingWindow:
    """Ring buffer of the last `window` returns with running sum and sum of squares.

    Shared by :class:`RollingSharpe` (floats in a list) and :class:`RollingSharpeArray`
    (one numpy row per step); subclasses set `_buf`, `_s`, `_ss` in their `reset()`.
    """

    __slots__ = ("window", "_buf", "_i", "_n", "_s", "_ss")

    def _push(self, r: Any) -> None:
        """Add `r` to the window, dropping the oldest entry once the window is full."""
        old = self._buf[self._i]
        if self._n == self.window:
            self._s -= old
            self._ss -= old * old
        else:
            self._n += 1
        self._buf[self._i] = r
        self._s += r
        self._ss += r * r
        self._i = (self._i + 1) % self.window


class RollingSharpe(_RollingWindow):
    """Rolling-window return statistics for Sharpe-style specialist rewards.

    `update(r)` adds `r` to a window of the last `window` returns and returns the
    volatility-scaled return r / max(std, min_std) (std of the window, ddof=0), whose sum
    over an episode approximates sqrt(n) x Sharpe. `sharpe()` is the window's mean / std.
    """

    __slots__ = ("min_std",)

    def __init__(self, window: int = 60, min_std: float = 1e-4) -> None:
        if window < 2:
            raise ValueError(f"RollingSharpe window must be >= 2, got {window}")
        self.window = int(window)
        self.min_std = float(min_std)
        self.reset()

    def reset(self) -> None:
        """Empty the window."""
        self._buf = [0.0] * self.window
        self._i = 0
        self._n = 0
        self._s = 0.0
        self._ss = 0.0

    def std(self) -> float:
        """Population std of the returns in the window (0.0 when fewer than two)."""
        if self._n < 2:
            return 0.0
        mean = self._s / self._n
        var = self._ss / self._n - mean * mean
        return math.sqrt(var) if var > 0.0 else 0.0

    def sharpe(self) -> float:
        """Per-period (not annualised) Sharpe of the window; 0.0 when std is ~0."""
        sd = self.std()
        return (self._s / self._n) / sd if sd > _EPS else 0.0

    def update(self, r: float) -> float:
        """Add `r` to the window and return r / max(window std, min_std)."""
        self._push(r)
        sd = self.std()
        return r / (sd if sd > self.min_std else self.min_std)


class RollingSharpeArray(_RollingWindow):
    """:class:`RollingSharpe` for `size` parallel return streams at once (one per instrument).

    `update(r, min_std)` takes an array of `size` returns (and a floor, scalar or per stream)
    and returns r / max(window std, min_std) elementwise, with the same window semantics.
    """

    __slots__ = ("size",)

    def __init__(self, window: int, size: int) -> None:
        if window < 2:
            raise ValueError(f"RollingSharpeArray window must be >= 2, got {window}")
        self.window = int(window)
        self.size = int(size)
        self.reset()

    def reset(self) -> None:
        """Empty the windows."""
        self._buf = np.zeros((self.window, self.size))
        self._i = 0
        self._n = 0
        self._s = np.zeros(self.size)
        self._ss = np.zeros(self.size)

    def std(self) -> np.ndarray:
        """Population std of each stream's window (zeros when fewer than two returns)."""
        if self._n < 2:
            return np.zeros(self.size)
        mean = self._s / self._n
        return np.sqrt(np.maximum(self._ss / self._n - mean * mean, 0.0))

    def sharpe(self) -> np.ndarray:
        """Per-period Sharpe of each stream's window (0 where the std is ~0)."""
        sd = self.std()
        mean = self._s / max(self._n, 1)
        return np.where(sd > _EPS, mean / np.where(sd > _EPS, sd, 1.0), 0.0)

    def update(self, r: np.ndarray, min_std: float | np.ndarray) -> np.ndarray:
        """Add one return per stream; return r / max(window std, min_std)."""
        self._push(r)
        return r / np.maximum(self.std(), min_std)


# --------------------------------------------------------------------------------------------
# Significance: Probabilistic and Deflated Sharpe Ratio (Bailey & Lopez de Prado 2012, 2014)
# --------------------------------------------------------------------------------------------

_EULER_GAMMA = 0.5772156649015329


def _norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_ppf(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
         3.754408661907416e00)  # fmt: skip
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2.0 * math.log(p))
        num = ((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]
        return num / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    if p > 1.0 - lo:
        return -_norm_ppf(1.0 - p)
    q = p - 0.5
    r = q * q
    num = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
    return num / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)


def _sharpe_moments(r: np.ndarray) -> tuple[float, float, float]:
    """Per-period (non-annualised) Sharpe, skewness and (non-excess) kurtosis of `r`."""
    sd = float(np.std(r, ddof=1)) if r.size > 1 else 0.0
    if sd <= _EPS:
        return 0.0, 0.0, 3.0
    z = (r - r.mean()) / np.std(r)
    return float(r.mean() / sd), float(np.mean(z**3)), float(np.mean(z**4))


def probabilistic_sharpe_ratio(
    returns: Sequence[float] | np.ndarray, sr_benchmark: float = 0.0
) -> float:
    """P(true Sharpe > `sr_benchmark`) given the sample's length, skew and kurtosis.

    Both Sharpes are per period (not annualised). PSR = Phi((SR - SR*) sqrt(T - 1) /
    sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)); 0.5 for fewer than three returns. A flat series
    (zero variance, Sharpe 0) is 0.5 against 0 and certain against any other benchmark: 0 when
    SR* > 0 (a flat policy never beats the luck of many trials), 1 when SR* < 0.
    """
    r = _arr(returns)
    if r.size < 3:
        return 0.5
    sr, skew, kurt = _sharpe_moments(r)
    if sr == 0.0 and float(np.std(r)) <= _EPS:
        return 0.5 if sr_benchmark == 0.0 else float(sr_benchmark < 0.0)
    denom = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr
    denom = math.sqrt(max(denom, _EPS))
    return float(_norm_cdf((sr - sr_benchmark) * math.sqrt(r.size - 1) / denom))


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """Expected maximum of `n_trials` per-period Sharpe estimates with true Sharpe 0.

    SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))); 0 for N <= 1.
    """
    if n_trials <= 1 or sr_variance <= 0:
        return 0.0
    n = float(n_trials)
    z1 = _norm_ppf(1.0 - 1.0 / n)
    z2 = _norm_ppf(1.0 - 1.0 / (n * math.e))
    return float(math.sqrt(sr_variance) * ((1.0 - _EULER_GAMMA) * z1 + _EULER_GAMMA * z2))


def trials_sharpe_variance(
    n_obs: int, trial_sharpes: Sequence[float] | np.ndarray | None = None
) -> float:
    """V[SR] of the trials for the DSR: the sample variance of the trials' per-period Sharpes,
    never below the no-skill variance of the estimator, 1 / (T - 1), for `n_obs` = T returns.

    Trials that are highly correlated (checkpoints of one run, seeds of one config) have a
    tiny Sharpe spread that would hardly deflate anything; the floor makes such a set count at
    least like independent no-skill strategies. Without two finite trial Sharpes it is the
    floor itself. The one estimator of every DSR in the project (docs/architecture.md).
    """
    null = 1.0 / max(int(n_obs) - 1, 1)
    if trial_sharpes is None:
        return null
    ts = _arr(trial_sharpes)
    ts = ts[np.isfinite(ts)]
    if ts.size < 2:
        return null
    return max(null, float(np.var(ts, ddof=1)))


def deflated_sharpe_ratio(
    returns: Sequence[float] | np.ndarray,
    n_trials: int,
    trial_sharpes: Sequence[float] | np.ndarray | None = None,
) -> float:
    """PSR against the Sharpe the best of `n_trials` null strategies would show by luck.

    The trials' Sharpe variance is :func:`trials_sharpe_variance` (the sample variance of
    `trial_sharpes`, per period, floored at the no-skill 1 / (T - 1)). With one trial the DSR
    equals the PSR against 0.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    r = _arr(returns)
    if r.size < 3:
        return 0.5
    var = trials_sharpe_variance(r.size, trial_sharpes)
    return probabilistic_sharpe_ratio(r, expected_max_sharpe(n_trials, var))


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def probability_of_backtest_overfitting(
    perf_matrix: Sequence[Sequence[float]] | np.ndarray,
    n_splits: int = 16,
    statistic: str = "sharpe",
) -> float:
    """Probability of Backtest Overfitting by CSCV (Bailey, Borwein, Lopez de Prado, Zhu 2017).

    `perf_matrix` is `[T periods, N configurations]` of per-period returns (N >= 2). The rows
    are cut into `n_splits` (even) contiguous blocks; for every way of choosing half of them
    as in-sample, the configuration with the best in-sample Sharpe is ranked out of sample
    (relative rank w = rank / (N + 1)). PBO is the share of splits with logit(w) <= 0, i.e. the
    in-sample winner ranking at or below the out-of-sample median. ~0.5 or more for pure noise,
    ~0 when one configuration is truly better. ValueError for too few rows or columns.
    `statistic="mean"` ranks by the mean instead of the Sharpe (rows that are already a score
    per period, e.g. a PBT member's validation objective per iteration).
    """
    m = np.asarray(perf_matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError(f"perf_matrix must be [T, N >= 2], got shape {m.shape}")
    if n_splits < 2 or n_splits % 2:
        raise ValueError(f"n_splits must be an even number >= 2, got {n_splits}")
    t_len, n_cfg = m.shape
    if statistic not in ("sharpe", "mean"):
        raise ValueError(f"statistic must be 'sharpe' or 'mean', got {statistic!r}")
    if t_len < 2 * n_splits and statistic == "sharpe":
        raise ValueError(f"perf_matrix has {t_len} rows; need >= {2 * n_splits} for {n_splits}")
    if t_len < n_splits:
        raise ValueError(f"perf_matrix has {t_len} rows; need >= {n_splits} for {n_splits}")
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    blocks = np.array_split(np.arange(t_len), n_splits)
    # per block sums of r and r^2 and counts: Sharpe of any union of blocks without re-slicing
    s1 = np.stack([m[b].sum(axis=0) for b in blocks])
    s2 = np.stack([(m[b] ** 2).sum(axis=0) for b in blocks])
    cnt = np.array([len(b) for b in blocks], dtype=np.float64)

    def _sharpe(sel: np.ndarray) -> np.ndarray:
        n = cnt[sel].sum()
        mean = s1[sel].sum(axis=0) / n
        if statistic == "mean":
            return mean
        var = np.maximum(s2[sel].sum(axis=0) / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)
        sd = np.sqrt(var)
        return np.where(sd > _EPS, mean / np.where(sd > _EPS, sd, 1.0), 0.0)

    everything = np.arange(n_splits)
    below = total = 0
    for combo in combinations(range(n_splits), n_splits // 2):
        ins = np.array(combo)
        oos = np.setdiff1d(everything, ins)
        sr_in, sr_out = _sharpe(ins), _sharpe(oos)
        best = int(np.argmax(sr_in))
        # rank 1 = worst out of sample; ties share the average rank
        rank = float((sr_out < sr_out[best]).sum() + 0.5 * ((sr_out == sr_out[best]).sum() + 1))
        w = rank / (n_cfg + 1.0)
        below += int(math.log(w / (1.0 - w)) <= 0.0)
        total += 1
    return float(below / total)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def summarize(
    equity: Sequence[float] | np.ndarray,
    traded: Sequence[float] | np.ndarray | None = None,
    periods_per_year: float | str = "1m",
    confidence: float = 0.95,
) -> dict[str, float]:
    """All headline metrics of an equity curve (and its traded notional) as finite floats.

    The one Sharpe of the project: rf = :data:`RISK_FREE_RATE` (0, see the module docstring).
    `periods_per_year` is the run's resolved number (a timeframe string is read on the crypto
    calendar). Keys: total_return, annualized_return, volatility, sharpe_ratio, sortino_ratio,
    calmar_ratio, max_drawdown, win_rate, profit_factor, value_at_risk,
    conditional_value_at_risk, psr (probabilistic Sharpe ratio vs 0), n_periods, final_equity
    (and turnover with `traded`, see :func:`turnover`).
    """
    eq = _arr(equity)
    ppy = _ppy(periods_per_year)
    r = simple_returns(eq)
    out = {
        "total_return": total_return(eq),
        "annualized_return": annualized_return(eq, ppy),
        "volatility": volatility(r, ppy),
        "sharpe_ratio": sharpe_ratio(r, ppy, RISK_FREE_RATE),
        "sortino_ratio": sortino_ratio(r, ppy, RISK_FREE_RATE),
        "calmar_ratio": calmar_ratio(eq, ppy),
        "max_drawdown": max_drawdown(eq),
        "win_rate": win_rate(r),
        "profit_factor": profit_factor(r),
        "value_at_risk": value_at_risk(r, confidence),
        "conditional_value_at_risk": conditional_value_at_risk(r, confidence),
        "psr": probabilistic_sharpe_ratio(r),
        "n_periods": float(r.size),
        "final_equity": float(eq[-1]) if eq.size else 0.0,
    }
    if traded is not None:
        out["turnover"] = turnover(traded, equity)
    return out
