"""Validation rules for bars and the few repairs that are safe (never inventing data).

Rules (name: meaning): missing_columns, unparseable_timestamp, missing_timezone (time of day
without a zone, unless assumed UTC), mixed_timezones, nan (missing or non-numeric value),
duplicate_timestamp, unsorted_timestamp, non_positive_price, high_below_low,
high_low_range (high/low do not contain open/close), negative_volume.
Rows are 1-based data rows (the header is not counted), as in the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rl_trading.data.schema import (
    BAR_COLUMNS,
    INDEX_NAME,
    PRICE_COLUMNS,
    as_bars,
    canonical_column,
)
from rl_trading.errors import DataError

RULES = [
    "missing_columns",
    "unparseable_timestamp",
    "missing_timezone",
    "mixed_timezones",
    "nan",
    "duplicate_timestamp",
    "unsorted_timestamp",
    "non_positive_price",
    "high_below_low",
    "high_low_range",
    "negative_volume",
]
_TZ_RE = re.compile(r"(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
_DATE_ONLY_RE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}$|^\d{8}$")


@dataclass(frozen=True)
class Issue:
    """One broken rule: first offending row (1-based data row), its timestamp, and a count."""

    rule: str
    row: int | None
    detail: str
    count: int = 1
    timestamp: str | None = None
    source: str = "<bars>"

    @property
    def message(self) -> str:
        """One line: file, row (and timestamp), rule and what is wrong."""
        where = f"row {self.row}" if self.row is not None else "header"
        if self.timestamp:
            where += f" ({self.timestamp})"
        return f"{self.source}: {where}: {self.rule}: {self.detail}"


def _raw_columns(raw: pd.DataFrame) -> dict[str, str]:
    """canonical name -> raw column name (first spelling wins)."""
    found: dict[str, str] = {}
    for col in raw.columns:
        name = canonical_column(col)
        if name and name not in found:
            found[name] = col
    return found


def _timestamp_text(raw: pd.DataFrame, cols: dict[str, str]) -> pd.Series | None:
    """The raw timestamp column; separate Date + Time columns are joined."""
    date_col = next((c for c in raw.columns if str(c).strip().lower() == "date"), None)
    time_col = next((c for c in raw.columns if str(c).strip().lower() == "time"), None)
    if date_col is not None and time_col is not None:
        return raw[date_col].astype("string") + " " + raw[time_col].astype("string")
    if "timestamp" in cols:
        return raw[cols["timestamp"]]
    if isinstance(raw.index, pd.DatetimeIndex):
        return pd.Series(raw.index, index=raw.index)
    return None


def _parse_timestamps(
    col: pd.Series, source: str, assume_utc: bool
) -> tuple[pd.DatetimeIndex, list[Issue]]:
    """Parse to a UTC index (NaT where unparseable) and the time-zone issues."""
    issues: list[Issue] = []
    n = len(col)
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(col).tz_convert("UTC").as_unit("ns"), issues
    if pd.api.types.is_datetime64_dtype(col.dtype):
        idx = pd.DatetimeIndex(col).as_unit("ns")
        if not assume_utc and n and not (idx[~idx.isna()] == idx[~idx.isna()].normalize()).all():
            issues.append(
                Issue(
                    "missing_timezone",
                    1,
                    "timestamps have no time zone (use --assume-utc to read them as UTC)",
                    n,
                    None,
                    source,
                )
            )
        return idx.tz_localize("UTC"), issues
    if pd.api.types.is_numeric_dtype(col.dtype):
        values = pd.to_numeric(col, errors="coerce")
        unit = "ms" if values.abs().max() > 1e11 else "s"
        return pd.DatetimeIndex(pd.to_datetime(values, unit=unit, utc=True)).as_unit("ns"), issues

    text = col.astype("string").str.strip()
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    retry = parsed.isna() & text.notna() & (text != "")
    if retry.any():
        parsed[retry] = pd.to_datetime(text[retry], utc=True, errors="coerce", format="mixed")
    idx = pd.DatetimeIndex(parsed).as_unit("ns")
    bad = np.flatnonzero(idx.isna())
    if len(bad):
        first = int(bad[0])
        issues.append(
            Issue(
                "unparseable_timestamp",
                first + 1,
                f"cannot parse timestamp {str(text.iloc[first])!r}",
                len(bad),
                None,
                source,
            )
        )
    ok = ~idx.isna()
    has_tz = text.str.contains(_TZ_RE, na=False).to_numpy()
    date_only = text.str.match(_DATE_ONLY_RE, na=False).to_numpy()
    naive = ok & ~has_tz & ~date_only
    if has_tz.any() and naive.any():
        first = int(np.flatnonzero(naive)[0])
        issues.append(
            Issue(
                "mixed_timezones",
                first + 1,
                f"timestamp {str(text.iloc[first])!r} has no time zone while others do",
                int(naive.sum()),
                None,
                source,
            )
        )
    elif naive.any() and not assume_utc:
        first = int(np.flatnonzero(naive)[0])
        issues.append(
            Issue(
                "missing_timezone",
                first + 1,
                f"timestamp {str(text.iloc[first])!r} has no time zone "
                "(add one, e.g. Z, or use --assume-utc to read them as UTC)",
                int(naive.sum()),
                None,
                source,
            )
        )
    return idx, issues


def inspect_raw(
    raw: pd.DataFrame, source: str = "<bars>", assume_utc: bool = False
) -> tuple[pd.DataFrame | None, list[Issue]]:
    """Map columns and parse a raw table: (bars in file order or None, structural issues)."""
    if isinstance(raw.index, pd.DatetimeIndex) and set(BAR_COLUMNS) <= set(raw.columns):
        frame = raw[BAR_COLUMNS].apply(pd.to_numeric, errors="coerce").astype("float64")
        idx = raw.index
        issues: list[Issue] = []
        if idx.tz is None:
            ts, issues = _parse_timestamps(pd.Series(idx), source, assume_utc)
        else:
            ts = idx.tz_convert("UTC").as_unit("ns")
        frame.index = pd.DatetimeIndex(ts).rename(INDEX_NAME)
        return frame, issues

    cols = _raw_columns(raw)
    ts_text = _timestamp_text(raw, cols)
    missing = [c for c in BAR_COLUMNS if c not in cols]
    if ts_text is None:
        missing.insert(0, "timestamp")
    if missing:
        have = ", ".join(str(c) for c in raw.columns) or "none"
        return None, [
            Issue(
                "missing_columns",
                None,
                f"missing column(s) {', '.join(missing)} (found: {have})",
                len(missing),
                None,
                source,
            )
        ]
    idx, issues = _parse_timestamps(ts_text.reset_index(drop=True), source, assume_utc)
    data = {
        c: pd.to_numeric(raw[cols[c]], errors="coerce").to_numpy(dtype="float64")
        for c in BAR_COLUMNS
    }
    frame = pd.DataFrame(data, index=idx.rename(INDEX_NAME))
    return frame, issues


def parse_bars(raw: pd.DataFrame, source: str = "<bars>", assume_utc: bool = False) -> pd.DataFrame:
    """Raw table -> bars in file order (not yet validated); DataError on structural problems."""
    frame, issues = inspect_raw(raw, source, assume_utc)
    if issues:
        raise DataError(_summary(issues))
    assert frame is not None
    return frame


def _first(mask: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(mask)
    return int(rows[0]), len(rows)


def _row_rules(frame: pd.DataFrame, source: str) -> list[Issue]:
    issues: list[Issue] = []
    values = frame[BAR_COLUMNS].to_numpy(dtype="float64")
    o, h, low, c, v = (values[:, i] for i in range(5))
    idx = frame.index
    stamps = idx.strftime("%Y-%m-%dT%H:%M:%SZ") if len(idx) else []

    def add(rule: str, mask: np.ndarray, detail) -> None:  # noqa: ANN001
        if mask.any():
            i, count = _first(mask)
            ts = stamps[i] if isinstance(stamps[i], str) else None
            issues.append(Issue(rule, i + 1, detail(i), count, ts, source))

    nan = np.isnan(values)
    add(
        "nan",
        nan.any(axis=1),
        lambda i: (
            "missing or non-numeric value in "
            + ", ".join(BAR_COLUMNS[j] for j in np.flatnonzero(nan[i]))
        ),
    )
    valid_ts = ~idx.isna()
    dup = np.asarray(idx.duplicated(keep="first")) & valid_ts
    add("duplicate_timestamp", dup, lambda i: "timestamp already appears on an earlier row")
    ns = idx.as_unit("ns").asi8.astype("float64")
    ns[~valid_ts] = np.nan
    running = pd.Series(ns).cummax().shift(1).to_numpy()
    unsorted = np.zeros(len(idx), bool)
    with np.errstate(invalid="ignore"):
        unsorted[1:] = (ns[1:] < running[1:]) & valid_ts[1:]
    add("unsorted_timestamp", unsorted, lambda i: "timestamp is earlier than the row before")
    prices = values[:, :4]
    with np.errstate(invalid="ignore"):
        nonpos = (prices <= 0).any(axis=1)
        add(
            "non_positive_price",
            nonpos,
            lambda i: (
                "price <= 0 in "
                + ", ".join(PRICE_COLUMNS[j] for j in np.flatnonzero(prices[i] <= 0))
            ),
        )
        add("high_below_low", h < low, lambda i: f"high {h[i]:g} < low {low[i]:g}")
        outside = (h < np.maximum(o, c)) | (low > np.minimum(o, c))
        add(
            "high_low_range",
            outside & ~(h < low),
            lambda i: (
                f"high/low [{low[i]:g}, {h[i]:g}] do not contain open {o[i]:g} and close {c[i]:g}"
            ),
        )
        add("negative_volume", v < 0, lambda i: f"volume {v[i]:g} < 0")
    return issues


def validate_bars(
    df: pd.DataFrame, source: str = "<bars>", assume_utc: bool = False
) -> list[Issue]:
    """Every broken rule (one Issue per rule: first row and count), sorted by first row."""
    frame, issues = inspect_raw(df, source, assume_utc)
    if frame is not None:
        issues = issues + _row_rules(frame, source)
    return sorted(issues, key=lambda it: (-1 if it.row is None else it.row, RULES.index(it.rule)))


def _summary(issues: list[Issue]) -> str:
    issues = sorted(issues, key=lambda it: (-1 if it.row is None else it.row, RULES.index(it.rule)))
    first = issues[0]
    others = sum(it.count for it in issues) - 1
    text = first.message
    if others > 0:
        kinds = ", ".join(
            f"{it.rule} x{it.count - (1 if it is first else 0)}"
            for it in issues
            if it.count - (1 if it is first else 0) > 0
        )
        text += f" (+{others} more: {kinds})"
    return text


def check_bars(df: pd.DataFrame, source: str = "<bars>", assume_utc: bool = False) -> pd.DataFrame:
    """Validated canonical bars, or DataError naming file, row and rule (+ count of others)."""
    issues = validate_bars(df, source, assume_utc)
    if issues:
        raise DataError(_summary(issues))
    frame, _ = inspect_raw(df, source, assume_utc)
    assert frame is not None
    return as_bars(frame)


def repair_bars(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Apply the safe fixes (sort, drop exact duplicate rows, widen high/low to contain
    open/close) and list what changed. NaN rows and conflicting duplicates are left alone."""
    frame, issues = inspect_raw(df)
    if frame is None:
        raise DataError(_summary(issues))
    changes: list[str] = []
    frame = frame.copy()
    if not frame.index.is_monotonic_increasing and not frame.index.hasnans:
        order = np.argsort(frame.index.asi8, kind="stable")
        moved = int((order != np.arange(len(order))).sum())
        frame = frame.iloc[order]
        changes.append(f"sorted by timestamp ({moved} rows moved)")
    keyed = frame.reset_index()
    exact = keyed.duplicated(keep="first").to_numpy()
    if exact.any():
        frame = frame[~exact]
        changes.append(f"dropped {int(exact.sum())} exact duplicate rows")
    o, h, low, c = (frame[k].to_numpy() for k in PRICE_COLUMNS)
    with np.errstate(invalid="ignore"):
        top = np.fmax(o, c)
        bottom = np.fmin(o, c)
        fix_h = h < top
        fix_l = low > bottom
    if fix_h.any() or fix_l.any():
        frame["high"] = np.where(fix_h, top, h)
        frame["low"] = np.where(fix_l, bottom, low)
        changes.append(
            f"widened high/low to contain open/close on {int((fix_h | fix_l).sum())} rows"
        )
    return frame, changes
