"""The bars schema: column names, timeframe strings, reading files and fingerprints.

Bars are a DataFrame with a UTC ``DatetimeIndex`` named ``timestamp`` (sorted, unique) and
float64 columns ``open, high, low, close, volume``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rl_trading.errors import DataError

BAR_COLUMNS: list[str] = ["open", "high", "low", "close", "volume"]
PRICE_COLUMNS: list[str] = ["open", "high", "low", "close"]
INDEX_NAME = "timestamp"

# Accepted spellings (compared lower-case, spaces/underscores removed) -> canonical name.
COLUMN_ALIASES: dict[str, str] = {
    "timestamp": "timestamp",
    "time": "timestamp",
    "date": "timestamp",
    "datetime": "timestamp",
    "datetimeutc": "timestamp",
    "ts": "timestamp",
    "open": "open",
    "o": "open",
    "high": "high",
    "h": "high",
    "low": "low",
    "l": "low",
    "close": "close",
    "c": "close",
    "adjclose": "adj_close",
    "volume": "volume",
    "vol": "volume",
    "v": "volume",
}

_TF_RE = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|t|h|hr|d|day|w|wk)\s*$", re.IGNORECASE)
_TF_UNITS = {
    "s": "s",
    "sec": "s",
    "m": "min",
    "min": "min",
    "t": "min",
    "h": "h",
    "hr": "h",
    "d": "D",
    "day": "D",
    "w": "W",
    "wk": "W",
}
_TF_SHORT = {"s": "s", "min": "m", "h": "h", "D": "d", "W": "w"}


def parse_timeframe(timeframe: str) -> tuple[int, str]:
    """Split a timeframe like ``"5m"``/``"1h"``/``"1d"`` into (count, pandas unit)."""
    match = _TF_RE.match(str(timeframe))
    if not match:
        raise DataError(
            f"unknown timeframe '{timeframe}' (use e.g. 1m, 2m, 5m, 15m, 30m, 1h, 4h, 1d)"
        )
    count = int(match.group(1))
    if count <= 0:
        raise DataError(f"timeframe '{timeframe}' must be positive")
    return count, _TF_UNITS[match.group(2).lower()]


def pandas_freq(timeframe: str) -> str:
    """Pandas frequency string for a timeframe (``"5m"`` -> ``"5min"``, ``"1d"`` -> ``"1D"``)."""
    count, unit = parse_timeframe(timeframe)
    return f"{count}{unit}"


def timeframe_delta(timeframe: str) -> pd.Timedelta:
    """Length of one bar of `timeframe` (a week is 7 days)."""
    count, unit = parse_timeframe(timeframe)
    if unit == "W":
        return pd.Timedelta(days=7 * count)
    return pd.Timedelta(count, unit=unit)


def format_timeframe(delta: pd.Timedelta) -> str:
    """Short timeframe name for a bar length (``5 minutes`` -> ``"5m"``)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def guess_timeframe(index: pd.DatetimeIndex) -> str | None:
    """Most common spacing between bars as a timeframe string (daily data with weekends: 1d)."""
    if len(index) < 2:
        return None
    diffs = pd.Series(np.diff(pd.DatetimeIndex(index).as_unit("ns").asi8))
    diffs = diffs[diffs > 0]
    if diffs.empty:
        return None
    mode = pd.Timedelta(int(diffs.mode().iloc[0]), unit="ns")
    return format_timeframe(mode)


def empty_bars() -> pd.DataFrame:
    """An empty, correctly typed bars frame."""
    index = pd.DatetimeIndex([], tz="UTC", name=INDEX_NAME).as_unit("ns")
    return pd.DataFrame({c: pd.Series([], dtype="float64") for c in BAR_COLUMNS}, index=index)


def as_bars(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame with a DatetimeIndex to the canonical schema (UTC, float64, column order)."""
    out = df[BAR_COLUMNS].astype("float64")
    index = pd.DatetimeIndex(out.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    out.index = index.as_unit("ns").rename(INDEX_NAME)
    return out


def canonical_column(name: object) -> str | None:
    """Canonical bars column for a header spelling, or None if it is not one we know."""
    key = re.sub(r"[\s_\-]", "", str(name)).lower()
    return COLUMN_ALIASES.get(key)


BARS_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip", ".txt", ".parquet", ".pq")


def read_raw(path: str | Path) -> pd.DataFrame:
    """Read a CSV / CSV.gz / Parquet file as-is (timestamps left as text), with clear errors.

    Only regular files with a bars suffix are opened (a device such as /dev/zero, a FIFO or a
    folder is refused at once instead of being read forever)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or Parquet file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file, expected a CSV or Parquet file")
    name = path.name.lower()
    if not name.endswith(BARS_SUFFIXES):
        raise DataError(f"{path}: not a bars file (expected one of {', '.join(BARS_SUFFIXES)})")
    try:
        if name.endswith((".parquet", ".pq")):
            raw = pd.read_parquet(path)
            if isinstance(raw.index, pd.DatetimeIndex):
                raw = raw.reset_index()
        else:
            raw = pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a data problem
        first = str(exc).strip().splitlines()
        raise DataError(f"{path}: cannot read file ({first[0] if first else exc})") from None
    return raw


def symbol_files(files: list[Path]) -> dict[str, Path]:
    """SYMBOL (file name up to the first `_` or `.`, upper case) -> file; DataError naming
    both files when two map to one symbol (keeping either would be a guess)."""
    out: dict[str, Path] = {}
    for f in files:
        sym = f.name.split(".")[0].split("_")[0].upper()
        if sym in out:
            raise DataError(
                f"{out[sym]} and {f} are both bars of {sym} (symbol = file name up to the "
                "first _ or .): keep one of them in the folder"
            )
        out[sym] = f
    return out


def write_bars(bars: pd.DataFrame, path: str | Path) -> Path:
    """Write bars as CSV (``.csv``/``.csv.gz``, ISO-8601 UTC timestamps) or Parquet.

    Written to a temporary file beside `path`, then renamed: an interrupted write never
    leaves a half-written file where `path` (maybe the data it came from) was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = as_bars(bars)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # same suffix: same format
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            out.to_parquet(tmp)
        else:
            text = out.copy()
            text.index = out.index.strftime("%Y-%m-%dT%H:%M:%SZ")
            text.index.name = INDEX_NAME
            text.to_csv(tmp, float_format="%.10g")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fingerprint(bars: pd.DataFrame | dict[str, pd.DataFrame]) -> str:
    """sha256 of the bars' index and values (dict: symbols in sorted order), for lineage."""
    digest = hashlib.sha256()
    frames = bars if isinstance(bars, dict) else {"": bars}
    for symbol in sorted(frames):
        frame = as_bars(frames[symbol])
        digest.update(symbol.encode())
        digest.update(np.ascontiguousarray(frame.index.asi8).tobytes())
        digest.update(np.ascontiguousarray(frame.to_numpy(dtype="float64")).tobytes())
    return digest.hexdigest()
