"""Validation rules for bars and the few repairs that are safe (never inventing data).

Rules (name: meaning): missing_columns, unparseable_timestamp, missing_timezone (time of day
without a zone, unless assumed UTC), mixed_timezones, no_rows (header only),
nan (missing or non-numeric value), non_finite (inf), absurd_value (a price above
`max_price` or a volume above 1e18),
duplicate_timestamp, unsorted_timestamp, non_positive_price, high_below_low,
high_low_range (high/low do not contain open/close), negative_volume.
Rows are 1-based data rows (the header is not counted), as in the file.

Timestamps are ISO 8601 or one other format held for the whole column; numeric day/month
dates (01/03/2024) are refused as ambiguous, never guessed row by row.

Exchange-local timestamps: with `tz` (an IANA zone such as America/New_York), naive timestamps
and those written with one of the zone's own offsets are read as wall-clock times in that zone
(DST-aware); explicit UTC (Z, UTC, GMT) and offsets the zone never uses are instants, kept as
written (as tz-aware Parquet is). Without `tz`, a single fixed offset kept across a DST change
of a zone using it logs a warning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from rl_trading import metrics
from rl_trading.config import zone
from rl_trading.data.schema import (
    BAR_COLUMNS,
    INDEX_NAME,
    PRICE_COLUMNS,
    as_bars,
    canonical_column,
    guess_timeframe,
    read_raw,
    timeframe_delta,
)
from rl_trading.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_MAX_PRICE = 1e9  # the default price ceiling (data.max_price, --max-price)
MAX_VOLUME = 1e18
RULES = [
    "missing_columns",
    "unparseable_timestamp",
    "missing_timezone",
    "mixed_timezones",
    "no_rows",
    "nan",
    "non_finite",
    "absurd_value",
    "duplicate_timestamp",
    "unsorted_timestamp",
    "non_positive_price",
    "high_below_low",
    "high_low_range",
    "negative_volume",
]
_TZ_RE = re.compile(r"(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
_DATE_ONLY_RE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}$|^\d{8}$")
# Numeric dates led by day and month in either order (01/03/2024, 1.3.24, 01-03-2024)
_DAY_MONTH_RE = re.compile(r"^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}(?!\d)")


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


def _to_datetime(text: pd.Series, utc: bool) -> pd.Series:
    """ISO 8601 first, then one format guessed from the first other value for the rest (NaT
    where neither fits). Never guessed row by row, and numeric day/month forms (01/03/2024:
    1 March or 3 January?) are never parsed: they stay NaT and are refused as ambiguous."""
    parsed = pd.to_datetime(text, utc=utc, errors="coerce", format="ISO8601")
    retry = parsed.isna() & text.notna() & (text != "")
    retry &= ~text.str.match(_DAY_MONTH_RE, na=False)
    if retry.any():
        fmt = guess_datetime_format(str(text[retry].iloc[0]))
        if fmt is not None:
            parsed[retry] = pd.to_datetime(text[retry], utc=utc, errors="coerce", format=fmt)
    return parsed


def _unparseable(idx: pd.DatetimeIndex, text: pd.Series, source: str) -> list[Issue]:
    """One `unparseable_timestamp` issue naming the first bad row and the count (or none)."""
    bad = np.flatnonzero(idx.isna())
    if not len(bad):
        return []
    first = int(bad[0])
    shown = str(text.iloc[first])
    msg = f"cannot parse timestamp {shown!r}"
    if _DAY_MONTH_RE.match(shown):
        msg = (
            f"ambiguous day/month order in timestamp {shown!r} (d/m/Y or m/d/Y?): "
            "write the timestamps as ISO 8601 (YYYY-MM-DD)"
        )
    return [Issue("unparseable_timestamp", first + 1, msg, len(bad), None, source)]


def _localize(
    naive: pd.DatetimeIndex, tz: str, text: pd.Series | None, source: str
) -> tuple[pd.DatetimeIndex, list[Issue]]:
    """Wall-clock times in `tz` -> UTC; nonexistent (spring-forward) or ambiguous (fall-back)
    times that cannot be told apart are issues, never shifted silently."""
    zone(tz)
    try:
        local = naive.tz_localize(tz, ambiguous="infer", nonexistent="raise")
    except Exception as exc:  # noqa: BLE001 - pytz/pandas raise several kinds
        bad = None
        for i, ts in enumerate(naive):
            if ts is pd.NaT:
                continue
            try:
                pd.DatetimeIndex([ts]).tz_localize(tz, ambiguous="raise", nonexistent="raise")
            except Exception:  # noqa: BLE001
                bad = i
                break
        shown = str(text.iloc[bad]) if text is not None and bad is not None else str(exc)
        issue = Issue(
            "unparseable_timestamp",
            None if bad is None else bad + 1,
            f"{shown!r} is not a unique wall-clock time in {tz} (DST change: {exc})",
            1,
            None,
            source,
        )
        return pd.DatetimeIndex([pd.NaT] * len(naive), tz="UTC").as_unit("ns"), [issue]
    return local.tz_convert("UTC").as_unit("ns"), []


# Exchange zones checked when a file keeps one fixed UTC offset across a DST change.
_DST_ZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Athens",
    "Australia/Sydney",
    "Pacific/Auckland",
)
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})$")


def _fixed_offset_warning(text: pd.Series, idx: pd.DatetimeIndex, source: str) -> None:
    """Log a warning when every timestamp has the same non-zero offset, and a zone using that
    offset changes its offset (DST) within the data: probably local wall-clock times."""
    offsets = text.str.extract(_OFFSET_RE)
    if len(text) < 2 or offsets.isna().any().any():
        return
    keys = offsets.drop_duplicates()
    if len(keys) != 1:
        return
    sign, hh, mm = keys.iloc[0]
    minutes = (1 if sign == "+" else -1) * (int(hh) * 60 + int(mm))
    valid = idx[~idx.isna()]
    if minutes == 0 or len(valid) < 2:
        return
    probes = pd.date_range(valid.min(), valid.max(), periods=50).append(
        pd.DatetimeIndex([valid.max()])
    )
    for name in _DST_ZONES:
        offs = {int(p.tz_convert(name).utcoffset().total_seconds() // 60) for p in probes}
        if len(offs) > 1 and minutes in offs:
            label = f"{sign}{hh}:{mm}"
            log.warning(
                "%s: every timestamp carries the fixed offset %s, but %s changes its offset "
                "(DST) within these dates: if they are exchange-local wall-clock times, read "
                "them with --tz %s (data.tz)",
                source,
                label,
                name,
                name,
            )
            return


def _zone_offsets(tz: str, years: range) -> set[int]:
    """The UTC offsets (minutes) `tz` uses in `years` (mid-January and mid-July probes)."""
    probes = [pd.Timestamp(f"{y}-{m}-15", tz="UTC") for y in years for m in (1, 7)]
    return {int(p.tz_convert(tz).utcoffset().total_seconds() // 60) for p in probes}


def _parse_in_zone(text: pd.Series, tz: str, source: str) -> tuple[pd.DatetimeIndex, list[Issue]]:
    """Exchange-local wall-clock times in `tz` -> UTC. Naive times, and times whose written
    offset is one of the zone's own (standard or DST: a file keeping -05:00 all year in New
    York), are wall-clock; explicit UTC (Z, UTC, GMT) and other offsets are instants and are
    kept as written, as tz-aware Parquet timestamps are (dropping them would move the bars)."""
    zone(tz)
    absolute = _to_datetime(text, utc=True)
    offsets = text.str.extract(_OFFSET_RE)
    sign = offsets[0].map({"+": 1.0, "-": -1.0}).astype("float64")
    minutes = sign * (offsets[1].astype("float64") * 60 + offsets[2].astype("float64"))
    has_tz = text.str.contains(_TZ_RE, na=False).to_numpy()
    valid = absolute.dropna()
    years = range(valid.min().year - 1, valid.max().year + 2) if len(valid) else range(0)
    own = _zone_offsets(tz, years) if len(years) else set()
    instant = has_tz & ~minutes.isin(own).to_numpy()
    wall = text.str.replace(_TZ_RE, "", regex=True).str.strip().mask(instant)
    naive = _to_datetime(wall, utc=False)
    idx, issues = _localize(pd.DatetimeIndex(naive).as_unit("ns"), tz, text, source)
    if instant.any() and not issues:
        kept = pd.DatetimeIndex(_to_datetime(text[instant], utc=True)).as_unit("ns")
        values = idx.to_numpy().copy()
        values[instant] = kept.to_numpy()
        idx = pd.DatetimeIndex(values, tz="UTC").as_unit("ns")
    issues += _unparseable(idx if not issues else pd.DatetimeIndex(naive), text, source)
    return idx, issues


# Epoch timestamp unit by magnitude: seconds below 1e11 (year 5138), then ms, us, ns.
_EPOCH_UNITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", 1e20))


def _parse_timestamps(
    col: pd.Series, source: str, assume_utc: bool, tz: str | None = None
) -> tuple[pd.DatetimeIndex, list[Issue]]:
    """Parse to a UTC index (NaT where unparseable) and the time-zone issues."""
    issues: list[Issue] = []
    n = len(col)
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(col).tz_convert("UTC").as_unit("ns"), issues
    if pd.api.types.is_datetime64_dtype(col.dtype):
        idx = pd.DatetimeIndex(col).as_unit("ns")
        if tz is not None:
            return _localize(idx, tz, None, source)
        # a naive datetime column (Parquet timestamps without a zone) is refused like naive
        # CSV text, midnight included; only plain dates (a Parquet date column) are UTC days
        if not assume_utc and n:
            issues.append(
                Issue(
                    "missing_timezone",
                    1,
                    "timestamps have no time zone (use --assume-utc to read them as UTC, "
                    "or --tz ZONE for exchange-local times)",
                    n,
                    None,
                    source,
                )
            )
        return idx.tz_localize("UTC"), issues
    if pd.api.types.is_numeric_dtype(col.dtype):
        values = pd.to_numeric(col, errors="coerce")
        top = float(values.abs().max()) if values.notna().any() else 0.0  # s < 1e11: year 5138
        unit = next((u for u, limit in _EPOCH_UNITS if top < limit), None)
        if unit is None:
            raise DataError(f"{source}: epoch timestamp {top:g} is too large for any unit")
        return pd.DatetimeIndex(pd.to_datetime(values, unit=unit, utc=True)).as_unit("ns"), issues

    text = col.astype("string").str.strip()
    if tz is not None:
        return _parse_in_zone(text, tz, source)
    idx = pd.DatetimeIndex(_to_datetime(text, utc=True)).as_unit("ns")
    _fixed_offset_warning(text, idx, source)
    issues += _unparseable(idx, text, source)
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
    raw: pd.DataFrame, source: str = "<bars>", assume_utc: bool = False, tz: str | None = None
) -> tuple[pd.DataFrame | None, list[Issue]]:
    """Map columns and parse a raw table: (bars in file order or None, structural issues)."""
    if isinstance(raw.index, pd.DatetimeIndex) and set(BAR_COLUMNS) <= set(raw.columns):
        frame = raw[BAR_COLUMNS].apply(pd.to_numeric, errors="coerce").astype("float64")
        idx = raw.index
        issues: list[Issue] = []
        if idx.tz is None:
            ts, issues = _parse_timestamps(pd.Series(idx), source, assume_utc, tz)
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
    idx, issues = _parse_timestamps(ts_text.reset_index(drop=True), source, assume_utc, tz)
    data = {
        c: pd.to_numeric(raw[cols[c]], errors="coerce").to_numpy(dtype="float64")
        for c in BAR_COLUMNS
    }
    frame = pd.DataFrame(data, index=idx.rename(INDEX_NAME))
    return frame, issues


def parse_bars(
    raw: pd.DataFrame, source: str = "<bars>", assume_utc: bool = False, tz: str | None = None
) -> pd.DataFrame:
    """Raw table -> bars in file order (not yet validated); DataError on structural problems."""
    frame, issues = inspect_raw(raw, source, assume_utc, tz)
    if issues:
        raise DataError(_summary(issues))
    assert frame is not None
    return frame


def _first(mask: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(mask)
    return int(rows[0]), len(rows)


def _row_rules(frame: pd.DataFrame, source: str, max_price: float) -> list[Issue]:
    issues: list[Issue] = []
    if len(frame) == 0:
        return [Issue("no_rows", None, "no data rows (header only)", 1, None, source)]
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
    inf = np.isinf(values)
    add(
        "non_finite",
        inf.any(axis=1),
        lambda i: "infinite value in " + ", ".join(BAR_COLUMNS[j] for j in np.flatnonzero(inf[i])),
    )
    with np.errstate(invalid="ignore"):
        huge = np.zeros_like(values, dtype=bool)
        huge[:, :4] = np.isfinite(values[:, :4]) & (values[:, :4] > max_price)
        huge[:, 4] = np.isfinite(values[:, 4]) & (values[:, 4] > MAX_VOLUME)
    add(
        "absurd_value",
        huge.any(axis=1),
        lambda i: (
            ", ".join(f"{BAR_COLUMNS[j]} {values[i, j]:g}" for j in np.flatnonzero(huge[i]))
            + f" above the ceiling (price {max_price:g}, volume {MAX_VOLUME:g}; "
            "raise data.max_price / --max-price if real)"
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
    df: pd.DataFrame,
    source: str = "<bars>",
    assume_utc: bool = False,
    tz: str | None = None,
    max_price: float = DEFAULT_MAX_PRICE,
) -> list[Issue]:
    """Every broken rule (one Issue per rule: first row and count), sorted by first row."""
    frame, issues = inspect_raw(df, source, assume_utc, tz)
    if frame is not None:
        issues = issues + _row_rules(frame, source, max_price)
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


def check_bars(
    df: pd.DataFrame,
    source: str = "<bars>",
    assume_utc: bool = False,
    tz: str | None = None,
    max_price: float = DEFAULT_MAX_PRICE,
) -> pd.DataFrame:
    """Validated canonical bars, or DataError naming file, row and rule (+ count of others)."""
    frame, issues = inspect_raw(df, source, assume_utc, tz)
    if frame is not None:
        issues = issues + _row_rules(frame, source, max_price)
    if issues:
        raise DataError(_summary(issues))
    assert frame is not None
    return as_bars(frame)


def check_spacing(bars: pd.DataFrame, timeframe: str, source: str = "<bars>") -> None:
    """DataError unless the typical (modal) spacing of the bars is the declared `timeframe`.

    Gaps such as nights, weekends and holidays are allowed: only the most common spacing
    counts, so daily bars declared as 1m (or minute bars declared as 1d) are refused.
    """
    want = timeframe_delta(timeframe)
    have = guess_timeframe(bars.index)
    if have is None or timeframe_delta(have) == want:
        return
    raise DataError(
        f"{source}: bars are typically {have} apart, not the declared timeframe {timeframe} "
        f"(use --timeframe {have}, or resample them first)"
    )


# Robust z-score of a close-to-close log return that is flagged: on the bundled samples and
# the real-market folder (daily to 1-minute, equities, FX, crypto) no return within a session
# exceeds ~32, while a close x2 is ~70-100 and a close x100 ~440.
OUTLIER_Z = 50.0


@dataclass(frozen=True)
class Outlier:
    """One bar whose close-to-close return is far outside the series' usual moves."""

    timestamp: pd.Timestamp
    close: float
    previous: float
    z: float


def outlier_returns(bars: pd.DataFrame, threshold: float = OUTLIER_Z) -> list[Outlier]:
    """Bars whose close-to-close log return has a robust z-score (distance from the median in
    units of 1.4826 x the median absolute deviation) above `threshold`, largest first.

    A close x100 spike passes every row rule (positive, high >= close ...) yet wrecks every
    return-based number; real crashes can be flagged too, so these are warnings by default.
    Returns across a gap (more than 1.5 x the usual spacing: overnight, weekends) are left out:
    a session's opening jump is a real move.
    """
    close = bars["close"].to_numpy(dtype="float64")
    if close.size < 3 or (close <= 0).any():
        return []
    steps = np.diff(pd.DatetimeIndex(bars.index).as_unit("ns").asi8)
    usual = float(np.median(steps))
    r = np.diff(np.log(close))
    r[steps > 1.5 * usual] = np.nan
    keep = np.flatnonzero(np.isfinite(r))
    if keep.size < 2:
        return []
    r = r[keep]
    med = float(np.median(r))
    scale = 1.4826 * float(np.median(np.abs(r - med)))
    if scale <= 0:  # mostly unchanged closes (quiet minute bars): the mean deviation instead
        scale = 1.2533 * float(np.mean(np.abs(r - med)))
    if scale <= 0:
        return []
    z = np.abs(r - med) / scale
    hits = np.flatnonzero(z > threshold)
    at = keep[hits]  # return i is bar i + 1 against bar i
    out = [
        Outlier(bars.index[i + 1], close[i + 1], close[i], float(z[j]))
        for i, j in zip(at, hits, strict=True)
    ]
    return sorted(out, key=lambda o: -o.z)


def describe_outliers(outliers: list[Outlier], source: str, threshold: float = OUTLIER_Z) -> str:
    """One line naming the count and the largest outliers."""
    shown = ", ".join(
        f"{o.timestamp} close {o.close:g} after {o.previous:g} (z {o.z:.0f})" for o in outliers[:3]
    )
    more = f" and {len(outliers) - 3} more" if len(outliers) > 3 else ""
    return (
        f"{source}: {len(outliers)} outlier return(s) (robust z-score above {threshold:g}): "
        f"{shown}{more}"
    )


def check_fits_model(
    bars: pd.DataFrame,
    timeframe: str,
    periods_per_year: float | None,
    source: str = "<bars>",
    tolerance: float = 1.33,
) -> None:
    """DataError unless `bars` are spaced like the model's `timeframe` and keep its calendar:
    bars per year measured from their timestamps within `tolerance` x the model's
    `periods_per_year` (None: not checked). Weekly bars scored as daily, or 24/7 bars scored on
    an equity calendar, would misstate every annualised number."""
    have_tf = guess_timeframe(bars.index)
    if have_tf is not None and timeframe_delta(have_tf) != timeframe_delta(timeframe):
        raise DataError(
            f"{source}: bars are typically {have_tf} apart, the model was trained on "
            f"{timeframe} bars; evaluate {timeframe} bars (resample them first)"
        )
    if periods_per_year is None or len(bars) < 2:
        return
    try:
        have = metrics.measure_periods_per_year(bars.index)
    except ValueError:
        return
    ratio = have / float(periods_per_year)
    if 1 / tolerance <= ratio <= tolerance:
        return
    raise DataError(
        f"{source}: bars come at about {have:,.0f} per year, the model's calendar has "
        f"{periods_per_year:,.0f}; evaluate bars of the model's market, or score them on their "
        f"own calendar with --set data.periods_per_year={have:.0f}"
    )


def _changed_rows(frame: pd.DataFrame, mask: np.ndarray, what) -> str:  # noqa: ANN001
    """`what(i)` for the first few rows of `mask`, with the timestamp, and a count."""
    rows = np.flatnonzero(mask)
    shown = [f"{frame.index[i].strftime('%Y-%m-%dT%H:%M:%SZ')} {what(i)}" for i in rows[:5]]
    more = f"; +{len(rows) - 5} more" if len(rows) > 5 else ""
    return "; ".join(shown) + more


def repair_bars(
    df: pd.DataFrame, assume_utc: bool = False, tz: str | None = None, source: str = "<bars>"
) -> tuple[pd.DataFrame, list[str]]:
    """Apply the safe fixes and list exactly what changed: sort, drop exact duplicate rows,
    swap high and low where that makes the bar consistent, widen high/low to contain
    open/close. A high < low bar that a swap does not fix is refused (DataError); NaN rows
    and conflicting duplicates are left alone (validation still refuses them)."""
    frame, issues = inspect_raw(df, source, assume_utc=assume_utc, tz=tz)
    if issues:  # structure (columns, timestamps) first: nothing to repair before that
        raise DataError(_summary(issues))
    assert frame is not None
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
        inverted = h < low
        swap_ok = inverted & (low >= top) & (h <= bottom)
    stuck = inverted & ~swap_ok
    if stuck.any():
        i = int(np.flatnonzero(stuck)[0])
        raise DataError(
            f"{source}: cannot repair: {frame.index[i].strftime('%Y-%m-%dT%H:%M:%SZ')} has high "
            f"{h[i]:g} < low {low[i]:g}, and swapping them would not contain open {o[i]:g} "
            f"and close {c[i]:g} ({int(stuck.sum())} such rows); fix the source"
        )
    if swap_ok.any():
        detail = _changed_rows(frame, swap_ok, lambda i: f"high {h[i]:g} <-> low {low[i]:g}")
        h, low = np.where(swap_ok, low, h), np.where(swap_ok, h, low)
        frame["high"], frame["low"] = h, low
        changes.append(f"swapped high and low on {int(swap_ok.sum())} rows: {detail}")
    with np.errstate(invalid="ignore"):
        fix_h = h < top
        fix_l = low > bottom
    if fix_h.any() or fix_l.any():
        new_h = np.where(fix_h, top, h)
        new_l = np.where(fix_l, bottom, low)

        def what(i: int) -> str:
            parts = []
            if fix_h[i]:
                parts.append(f"high {h[i]:g} -> {new_h[i]:g}")
            if fix_l[i]:
                parts.append(f"low {low[i]:g} -> {new_l[i]:g}")
            return ", ".join(parts)

        detail = _changed_rows(frame, fix_h | fix_l, what)
        frame["high"], frame["low"] = new_h, new_l
        changes.append(
            f"widened high/low to contain open/close on {int((fix_h | fix_l).sum())} rows: {detail}"
        )
    return frame, changes


def read_bars(
    path: str | Path,
    *,
    assume_utc: bool = False,
    repair: bool = False,
    validate: bool = True,
    tz: str | None = None,
    max_price: float | None = None,
) -> pd.DataFrame:
    """Read and validate one bars file; `DataError` naming file, row and rule on a problem.

    Time-zone-less timestamps with a time of day are an error unless `assume_utc` or `tz`
    (exchange-local wall-clock times, DST-aware); plain dates (daily files) are read as UTC
    days. With `repair`, safe fixes are applied first. `max_price`: the price ceiling.
    """
    source = str(path)
    raw = read_raw(path)
    bars = parse_bars(raw, source=source, assume_utc=assume_utc, tz=tz)
    if repair:
        bars, _ = repair_bars(bars)
    if validate:
        ceiling = DEFAULT_MAX_PRICE if max_price is None else max_price
        return check_bars(bars, source=source, max_price=ceiling)
    return bars
