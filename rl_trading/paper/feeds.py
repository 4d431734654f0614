"""Bar feeds for paper sessions: a replay of the model's own data, a SQL table, a file.

Every feed answers `poll(after)`: the bars it has now with a timestamp after `after`, per
symbol. `complete_bars` turns that into whole bars (every symbol at one timestamp), which is
all the loop ever processes. How real-feed faults are handled (docs/paper_trading.md):

* duplicate or late bar (timestamp at or before the last processed one): ignored, logged;
* out-of-order rows inside one poll: sorted by timestamp;
* a timestamp some symbols lack while a later one is complete: dropped, logged (the engine
  needs every instrument at each bar; a missing bar is never invented);
* a gap (more than the timeframe between bars, beyond weekends for daily bars): processed as
  the next bar (the engine's rules hold across it), logged;
* no new bar for `paper.stale_after_s`: the loop halts the session (stale-data breaker).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from rl_trading.data import read_bars
from rl_trading.data.schema import BAR_COLUMNS, read_raw, symbol_files, timeframe_delta
from rl_trading.data.store import BarStore
from rl_trading.data.validation import DEFAULT_MAX_PRICE, check_bars, parse_bars
from rl_trading.errors import DataError

Bar = tuple[pd.Timestamp, dict[str, dict]]  # timestamp, {symbol: {column: value}}


class Feed(Protocol):
    """Where new bars come from."""

    name: str
    exhausted: bool  # True when no bar will ever come again (end of a replay)

    def poll(self, after: pd.Timestamp | None) -> dict[str, pd.DataFrame]:
        """Bars with a timestamp after `after`, per symbol (possibly empty frames)."""
        ...


def _after(frame: pd.DataFrame, after: pd.Timestamp | None) -> pd.DataFrame:
    frame = frame.sort_index(kind="stable")
    frame = frame[~frame.index.duplicated(keep="last")]
    return frame if after is None else frame[frame.index > after]


def complete_bars(
    frames: dict[str, pd.DataFrame], symbols: list[str]
) -> tuple[list[Bar], list[pd.Timestamp]]:
    """(whole bars in time order, timestamps dropped as incomplete because a later bar is
    complete). A trailing incomplete timestamp is kept back: its other rows may still come."""
    if any(s not in frames or frames[s].empty for s in symbols):
        return [], []
    indexes = [frames[s].index.unique() for s in symbols]  # index operations: no per-row
    stamps = indexes[0]  # Timestamp objects on a long replay
    for other in indexes[1:]:
        stamps = stamps.union(other)
    stamps = stamps.sort_values()
    whole = np.logical_and.reduce([stamps.isin(i) for i in indexes])
    if not whole.any():
        return [], []
    index = stamps[whole]
    last = index[-1]
    dropped = list(stamps[~whole & (stamps < last)])
    full = list(index)
    records = {s: _records(frames[s].loc[index]) for s in symbols}
    return [(ts, {s: records[s][i] for s in symbols}) for i, ts in enumerate(full)], dropped


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """`frame.to_dict("records")` (Python scalars), column by column: several times faster
    on a long replay."""
    cols = list(frame.columns)
    values = zip(*(frame[c].tolist() for c in cols), strict=True)
    return [dict(zip(cols, row, strict=True)) for row in values]


def check_timeframe(frames: dict[str, pd.DataFrame], timeframe: str, label: str) -> None:
    """DataError when the feed's bar spacing is not the model's timeframe."""
    delta = timeframe_delta(timeframe)
    for sym, frame in frames.items():
        if len(frame) < 3:
            continue
        spacing = pd.Series(frame.index).diff().dropna().median()
        if spacing != delta:
            raise DataError(
                f"{label}: {sym} bars are {spacing} apart but the model trades {timeframe} "
                f"bars ({delta}): feed the model's timeframe"
            )


def is_gap(prev: pd.Timestamp, ts: pd.Timestamp, timeframe: str) -> bool:
    """More than one bar between `prev` and `ts` (daily bars: more than a long weekend)."""
    return (ts - prev) > _gap_limit(timeframe)


@functools.lru_cache(maxsize=16)
def _gap_limit(timeframe: str) -> pd.Timedelta:
    delta = timeframe_delta(timeframe)
    return delta * 4 if delta >= pd.Timedelta(days=1) else delta * 1.5


class ReplayFeed:
    """The model's own bars released one at a time (`speed` bars/s; 0 = as fast as possible).

    `history` is the whole replay, which lets the loop build the env once (every env array is
    causal, tests/test_paper.py checks that a prefix gives the same rows)."""

    name = "replay"

    def __init__(self, bars: dict[str, pd.DataFrame], speed: float = 0.0) -> None:
        self.history = bars
        self.speed = float(speed)
        self.exhausted = False
        self._t0 = time.monotonic()
        self._released = 0
        self._index = next(iter(bars.values())).index

    def poll(self, after: pd.Timestamp | None) -> dict[str, pd.DataFrame]:
        start = 0 if after is None else int(self._index.searchsorted(after, side="right"))
        if self.speed > 0:
            due = int((time.monotonic() - self._t0) * self.speed) + 1
            stop = min(len(self._index), start + max(0, due - self._released))
            self._released += stop - start
        else:
            stop = len(self._index)
        if stop >= len(self._index):
            self.exhausted = True
        return {s: f.iloc[start:stop] for s, f in self.history.items()}


class SqlFeed:
    """New rows of `historical_bars` (rl_trading.data.store) for the model's series."""

    name = "sql"

    def __init__(
        self,
        url: str | None,
        symbols: list[str],
        timeframe: str,
        max_price: float | None = None,
    ) -> None:
        self.store = BarStore(url)
        self.symbols, self.timeframe = symbols, timeframe
        self.max_price = DEFAULT_MAX_PRICE if max_price is None else max_price
        self.exhausted = False

    def check(self) -> None:
        """DataError naming the model's series the table does not hold (at its timeframe)."""
        info = self.store.info()
        have = {(i.symbol, i.timeframe) for i in info}
        missing = [s for s in self.symbols if (s, self.timeframe) not in have]
        if missing:
            other = sorted({f"{i.symbol}@{i.timeframe}" for i in info if i.symbol in missing})
            hint = f" (the store has {', '.join(other)})" if other else ""
            raise DataError(
                f"{self.store.safe_url} has no {self.timeframe} bars for {missing}: the model "
                f"trades {self.symbols} at {self.timeframe}{hint}"
            )

    def poll(self, after: pd.Timestamp | None) -> dict[str, pd.DataFrame]:
        out = {}
        for sym in self.symbols:
            frame = self.store.read(sym, self.timeframe, start=after, max_price=self.max_price)
            out[sym] = _after(frame, after)
        return out


class FileFeed:
    """A CSV / Parquet bars file per symbol (a folder of `SYMBOL_*.csv`), re-read as it grows.

    Each file is validated whole at every poll, as the training loader reads it (`data.tz`,
    `data.max_price`). A half-written last line (a writer mid-append) waits for the next poll
    when the rows before it are whole; a file that breaks a rule otherwise (a duplicated or
    out-of-order row, a NaN price) stops the session with its one-line error once it has
    failed `FAIL_POLLS` polls in a row (a file being rewritten gets that long)."""

    name = "file"
    FAIL_POLLS = 3

    def __init__(
        self,
        path: Path,
        symbols: list[str],
        tz: str | None = None,
        max_price: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.symbols = symbols
        self.tz = tz
        self.max_price = DEFAULT_MAX_PRICE if max_price is None else max_price
        self.failures: dict[str, int] = {}
        self.exhausted = False
        files = (
            sorted(p for p in self.path.iterdir() if p.is_file())
            if self.path.is_dir()
            else [self.path]
        )
        self.files = symbol_files(
            [f for f in files if f.name.endswith((".csv", ".csv.gz", ".parquet"))]
        )
        missing = [s for s in symbols if s not in self.files]
        if missing:
            raise DataError(
                f"{self.path} has no bars file for {missing} (the model trades {symbols}; "
                "one file per symbol, named SYMBOL_*.csv or .parquet)"
            )

    def _read(self, sym: str) -> pd.DataFrame:
        """The symbol's whole bars; without a half-written last line; DataError otherwise."""
        path = self.files[sym]
        try:
            return read_bars(path, tz=self.tz, max_price=self.max_price)
        except DataError as exc:
            first = exc
        try:  # the rows before the last one, whole: the last one is being written
            raw = read_raw(path)
            bars = parse_bars(raw.iloc[:-1], source=str(path), tz=self.tz)
            return check_bars(bars, source=str(path), tz=self.tz, max_price=self.max_price)
        except DataError:
            raise first from None

    def poll(self, after: pd.Timestamp | None) -> dict[str, pd.DataFrame]:
        out = {}
        for sym in self.symbols:
            try:
                frame = self._read(sym)
                self.failures[sym] = 0
            except DataError as exc:
                self.failures[sym] = self.failures.get(sym, 0) + 1
                if self.failures[sym] >= self.FAIL_POLLS:
                    raise DataError(f"paper file feed: {str(exc).splitlines()[0]}") from None
                frame = pd.DataFrame(columns=BAR_COLUMNS, index=pd.DatetimeIndex([], tz="UTC"))
            out[sym] = _after(frame, after)
        return out
