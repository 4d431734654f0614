"""Resampling to coarser bars and aligning several instruments on one index."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rl_trading.data.schema import (
    BAR_COLUMNS,
    INDEX_NAME,
    guess_timeframe,
    pandas_freq,
    timeframe_delta,
)
from rl_trading.errors import DataError

log = logging.getLogger(__name__)

# Boolean column `align` adds under the ffill policy: True on bars it forward-filled (no real
# trade happened; the envs never fill an order on them, see envs/execution.py).
FILLED_COLUMN = "filled"

_AGG = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}


def resample(bars: pd.DataFrame, timeframe: str, offset: str | None = None) -> pd.DataFrame:
    """Coarser OHLCV bars: left-closed, labelled by bin start (UTC; "1d" = UTC days).

    Open is the first, high the max, low the min, close the last, volume the sum; bins with no
    source bar are dropped. `offset` shifts the bin edges (e.g. "30min" for sessions that open
    at half past the hour). DataError unless `timeframe` is a whole multiple of the bars'
    (modal) spacing and every bar ends within its bin: a bin must never hold a bar that runs
    past its end (2m -> 5m bars would look ahead).
    """
    freq = pandas_freq(timeframe)
    if len(bars) >= 2:
        step = pd.Series(np.diff(bars.index.as_unit("ns").asi8)).min()
        if pd.Timedelta(int(step), unit="ns") > timeframe_delta(timeframe):
            raise DataError(f"cannot resample to {timeframe}: the bars are coarser already")
        _check_bins(bars.index, timeframe, freq, offset)
    out = (
        bars[BAR_COLUMNS]
        .resample(freq, label="left", closed="left", offset=offset)
        .agg(_AGG)
        .dropna(subset=["open", "close"])
    )
    out.index = out.index.rename(INDEX_NAME)
    return out.astype("float64")


def _check_bins(index: pd.DatetimeIndex, timeframe: str, freq: str, offset: str | None) -> None:
    """DataError unless the source spacing divides `timeframe` and each bar [t, t + spacing)
    lies inside its left-closed bin."""
    have = guess_timeframe(index)
    if have is None:
        return
    src, want = timeframe_delta(have), timeframe_delta(timeframe)
    if want % src:
        raise DataError(
            f"cannot resample {have} bars to {timeframe}: {timeframe} is not a whole multiple "
            f"of {have} (bins would hold bars running past their end); resample from a "
            "timeframe that divides it"
        )
    stamps = pd.Series(0, index=index)
    starts = stamps.resample(freq, label="left", closed="left", offset=offset).sum().index
    start = starts[np.searchsorted(starts.asi8, index.asi8, side="right") - 1]
    late = np.flatnonzero(index + src > start + want)
    if late.size:
        raise DataError(
            f"cannot resample {have} bars to {timeframe}: the bar at {index[late[0]]} runs past "
            f"the end of its {timeframe} bin ({late.size} such bars; the bars are not on the "
            f"{timeframe} grid{'' if offset else ', give an offset'})"
        )


@dataclass
class AlignReport:
    """What `align` did: bars filled per symbol and timestamps dropped."""

    policy: str
    n_bars: int
    filled: dict[str, int] = field(default_factory=dict)
    dropped: int = 0

    def __str__(self) -> str:
        filled = sum(self.filled.values())
        return f"align[{self.policy}]: {self.n_bars} bars, {filled} filled, {self.dropped} dropped"


def align(
    bars_by_symbol: dict[str, pd.DataFrame],
    policy: str = "ffill",
    max_ffill: int = 5,
    report: bool = False,
) -> dict[str, pd.DataFrame] | tuple[dict[str, pd.DataFrame], AlignReport]:
    """Put every instrument on one common index under an explicit gap policy.

    ffill: union index; a missing bar repeats the last close as open/high/low/close with volume 0
    for up to `max_ffill` consecutive bars; rows still missing for any symbol are dropped. A frame
    with filled bars carries a bool column `filled` (FILLED_COLUMN), True on them; a frame
    without the column has none (an incoming `filled` column is kept, so aligning aligned bars
    again loses no mark).
    inner / drop: keep only timestamps every symbol has (identical results; two names kept for
    configs; an incoming `filled` column is kept). With `report=True` returns (bars,
    AlignReport).
    """
    if not bars_by_symbol:
        raise DataError("no instruments to align")
    if policy not in ("ffill", "drop", "inner"):
        raise DataError(f"unknown gap policy '{policy}' (ffill, drop or inner)")
    indexes = [df.index for df in bars_by_symbol.values()]
    union = indexes[0]
    for idx in indexes[1:]:
        union = union.union(idx)
    out: dict[str, pd.DataFrame] = {}
    rep = AlignReport(policy, 0)
    if policy == "ffill":
        keep = np.ones(len(union), bool)
        fills: dict[str, np.ndarray] = {}
        marks: dict[str, np.ndarray] = {}
        for symbol, df in bars_by_symbol.items():
            frame = df[BAR_COLUMNS].reindex(union)
            missing = frame["close"].isna().to_numpy()
            marked = _filled_mask(df, union)
            close = frame["close"].ffill(limit=max_ffill) if max_ffill > 0 else frame["close"]
            fill = missing & close.notna().to_numpy()
            for col in ("open", "high", "low", "close"):
                frame[col] = np.where(fill, close.to_numpy(), frame[col].to_numpy())
            frame["volume"] = np.where(fill, 0.0, frame["volume"].to_numpy())
            keep &= frame["close"].notna().to_numpy()
            out[symbol] = frame
            fills[symbol] = fill
            marks[symbol] = fill | marked
        _check_interleaved({s: fills[s][keep] for s in out}, bars_by_symbol)
        for symbol, frame in out.items():
            rep.filled[symbol] = int((fills[symbol] & keep).sum())
            out[symbol] = frame[keep].astype("float64")
            if marks[symbol][keep].any() or FILLED_COLUMN in bars_by_symbol[symbol].columns:
                out[symbol][FILLED_COLUMN] = marks[symbol][keep]
        rep.dropped = int((~keep).sum())
    else:
        common = indexes[0]
        for idx in indexes[1:]:
            common = common.intersection(idx)
        for symbol, df in bars_by_symbol.items():
            out[symbol] = df[BAR_COLUMNS].loc[common].astype("float64")
            if FILLED_COLUMN in df.columns:
                out[symbol][FILLED_COLUMN] = _filled_mask(df, common)
        rep.dropped = len(union) - len(common)
    for symbol in out:
        out[symbol].index = out[symbol].index.rename(INDEX_NAME)
    rep.n_bars = len(next(iter(out.values())))
    if rep.n_bars == 0:
        raise DataError(f"no common bars left after aligning {', '.join(bars_by_symbol)}")
    log.info("%s", rep)
    return (out, rep) if report else out


MIN_OWN_SHARE = 0.5


def _check_interleaved(
    fills: dict[str, np.ndarray], bars_by_symbol: dict[str, pd.DataFrame]
) -> None:
    """DataError when forward fill makes up half or more of a symbol's aligned bars: its own
    bars are at most MIN_OWN_SHARE of the common index. Two grids that share no timestamp
    (one stamped at :30, one at :00) interleave, their own shares sum to 100%, so one of them
    is always at most half."""
    low = {
        s: 1 - float(f.mean()) for s, f in fills.items() if len(f) and 1 - f.mean() <= MIN_OWN_SHARE
    }
    if not low:
        return
    shares = ", ".join(f"{s} {share:.0%}" for s, share in low.items())
    stamps = ", ".join(
        f"{s} {df.index[0].strftime('%H:%M')}" for s, df in bars_by_symbol.items() if len(df)
    )
    raise DataError(
        f"align: forward fill would make up most bars: own bars on only {shares} of the "
        f"common index (needs over {MIN_OWN_SHARE:.0%}); the grids are offset or the sessions "
        f"barely overlap (first bars at {stamps}): resample them onto one grid (resample "
        "offset=) or use gap_policy inner"
    )


def _filled_mask(df: pd.DataFrame, index: pd.Index) -> np.ndarray:
    """The `filled` marks `df` already carries, on `index` (False where it has none)."""
    if FILLED_COLUMN not in df.columns:
        return np.zeros(len(index), dtype=bool)
    marks = df[FILLED_COLUMN].astype(bool).reindex(index, fill_value=False)
    return marks.to_numpy(dtype=bool)
