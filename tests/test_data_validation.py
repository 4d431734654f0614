"""Every validation rule on a deliberately broken file; repairs; the real market folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rl_trading.data import read_bars, repair_bars, validate_bars, write_bars
from rl_trading.data.schema import read_raw
from rl_trading.errors import DataError

HEADER = "timestamp,open,high,low,close,volume"
GOOD = [
    "2024-01-02T00:00:00Z,10,11,9,10.5,100",
    "2024-01-02T00:01:00Z,10.5,11,10,10.8,120",
    "2024-01-02T00:02:00Z,10.8,11.2,10.6,11,90",
    "2024-01-02T00:03:00Z,11,11.5,10.9,11.2,0",
    "2024-01-02T00:04:00Z,11.2,11.3,11,11.1,50",
]


def _write(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _broken(row: int, line: str) -> list[str]:
    rows = list(GOOD)
    rows[row - 1] = line
    return rows


CASES = [
    # rule, bad data row (1-based), replacement line
    ("nan", 3, "2024-01-02T00:02:00Z,10.8,,10.6,11,90"),
    ("nan", 2, "2024-01-02T00:01:00Z,10.5,11,10,abc,120"),
    ("duplicate_timestamp", 3, "2024-01-02T00:01:00Z,10.8,11.2,10.6,11,90"),
    ("unsorted_timestamp", 4, "2024-01-01T23:00:00Z,11,11.5,10.9,11.2,0"),
    ("non_positive_price", 2, "2024-01-02T00:01:00Z,0,11,0,10.8,120"),
    ("high_below_low", 5, "2024-01-02T00:04:00Z,11.2,10,11.5,11.1,50"),
    ("high_low_range", 2, "2024-01-02T00:01:00Z,10.5,10.7,10,10.8,120"),
    ("negative_volume", 4, "2024-01-02T00:03:00Z,11,11.5,10.9,11.2,-5"),
    ("unparseable_timestamp", 3, "yesterday noon,10.8,11.2,10.6,11,90"),
]


@pytest.mark.parametrize(("rule", "row", "line"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_rule_names_file_row_and_rule(tmp_path, rule, row, line) -> None:
    path = _write(tmp_path, _broken(row, line))
    with pytest.raises(DataError) as info:
        read_bars(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg and f"row {row}" in msg and rule in msg, msg
    issues = validate_bars(read_raw(path), source=str(path))
    assert issues[0].rule == rule and issues[0].row == row


def test_mixed_timezones(tmp_path) -> None:
    rows = list(GOOD)
    rows[3] = "2024-01-02 00:03:00,11,11.5,10.9,11.2,0"
    path = _write(tmp_path, rows)
    with pytest.raises(DataError, match=r"row 4: mixed_timezones"):
        read_bars(path)


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        ("date,open,high,low,close,volume", ["01/03/2024,10,11,9,10,1", "13/03/2024,10,11,9,10,1"]),
        (
            "Date,Time,open,high,low,close,volume",
            ["01/03/2024,09:00,10,11,9,10,1", "04/03/2024,09:00,10,11,9,10,1"],
        ),
        ("timestamp,open,high,low,close,volume", ["1.3.24 09:00Z,10,11,9,10,1"]),
    ],
    ids=["day-first-daily", "date-and-time-columns", "dotted"],
)
def test_day_month_order_is_never_guessed(tmp_path, header, rows) -> None:
    """01/03/2024 is 1 March or 3 January: refused with the value, never parsed row by row
    (pandas' mixed formats read 01/03 as 3 January and 13/03 as 13 March in one file)."""
    path = _write(tmp_path, rows, header=header)
    for kwargs in ({}, {"assume_utc": True}, {"tz": "Europe/Paris"}, {"repair": True}):
        with pytest.raises(DataError) as info:
            read_bars(path, **kwargs)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg, msg
        assert "ambiguous day/month order" in msg and rows[0].split(",")[0] in msg, msg
        assert "ISO 8601" in msg


def test_one_non_iso_format_for_the_column(tmp_path) -> None:
    """A non-ISO format is guessed once (from the first value) and held for every row."""
    path = _write(tmp_path, ["Jan 02 2024,10,11,9,10,1", "Jan 03 2024,10,11,9,10,1"])
    bars = read_bars(path, assume_utc=True)
    assert list(bars.index.strftime("%Y-%m-%d")) == ["2024-01-02", "2024-01-03"]
    bad = _write(tmp_path, ["Jan 02 2024,10,11,9,10,1", "03 Jan 2024,10,11,9,10,1"])
    with pytest.raises(DataError, match=r"row 2: unparseable_timestamp"):
        read_bars(bad, assume_utc=True)


def test_missing_columns(tmp_path) -> None:
    path = _write(
        tmp_path, [r.rsplit(",", 1)[0] for r in GOOD], header="timestamp,open,high,low,close"
    )
    with pytest.raises(
        DataError, match=r"bars\.csv: header: missing_columns: missing column\(s\) volume"
    ):
        read_bars(path)


def test_count_of_other_problems(tmp_path) -> None:
    rows = list(GOOD)
    rows[1] = "2024-01-02T00:01:00Z,10.5,11,10,10.8,-1"
    rows[3] = "2024-01-02T00:03:00Z,11,11.5,10.9,11.2,-2"
    rows[4] = "2024-01-02T00:04:00Z,11.2,10,11.5,11.1,50"
    with pytest.raises(
        DataError,
        match=r"row 2 .*negative_volume.*\(\+2 more: negative_volume x1, high_below_low x1\)",
    ):
        read_bars(_write(tmp_path, rows))


def test_column_spellings_date_only_and_assume_utc(tmp_path) -> None:
    header = "Date,Open,High,Low,Close,Vol"
    daily = [f"2024-01-0{i},10,11,9,10.5,100" for i in range(2, 7)]
    bars = read_bars(_write(tmp_path, daily, header=header))
    assert list(bars.columns) == ["open", "high", "low", "close", "volume"]
    assert str(bars.index.tz) == "UTC" and bars.index[0] == pd.Timestamp("2024-01-02", tz="UTC")
    naive = [r.replace("Z", "") for r in GOOD]
    path = _write(tmp_path, naive, name="naive.csv")
    with pytest.raises(DataError, match=r"naive\.csv: row 1: missing_timezone.*--assume-utc"):
        read_bars(path)
    assert read_bars(path, assume_utc=True).index[0] == pd.Timestamp("2024-01-02", tz="UTC")
    offset = [r.replace("Z", "+01:00") for r in GOOD]
    assert read_bars(_write(tmp_path, offset, name="cet.csv")).index[0] == pd.Timestamp(
        "2024-01-01 23:00", tz="UTC"
    )


def test_parquet_and_gzip_roundtrip(tmp_path) -> None:
    bars = read_bars(_write(tmp_path, GOOD))
    for name in ("x.parquet", "x.csv.gz"):
        pd.testing.assert_frame_equal(read_bars(write_bars(bars, tmp_path / name)), bars)


def test_repair_fixes_only_the_safe_things(tmp_path) -> None:
    rows = [GOOD[0], GOOD[2], GOOD[1], GOOD[1], GOOD[3], GOOD[4]]  # unsorted + exact duplicate
    rows[4] = "2024-01-02T00:03:00Z,11,11.1,10.9,11.2,0"  # high below close
    path = _write(tmp_path, rows)
    with pytest.raises(DataError):
        read_bars(path)
    fixed, changes = repair_bars(read_raw(path))
    assert len(changes) == 3, changes
    assert fixed.index.is_monotonic_increasing and len(fixed) == 5
    assert fixed.loc["2024-01-02T00:03:00Z", "high"] == 11.2
    assert validate_bars(fixed) == []
    # NaN and conflicting duplicates are not fixable
    bad = _write(tmp_path, _broken(3, "2024-01-02T00:02:00Z,10.8,,10.6,11,90"), name="nan.csv")
    with pytest.raises(DataError, match="row 3.*nan"):
        read_bars(bad, repair=True)


def test_every_real_market_file_validates(market_dir) -> None:
    files = sorted(market_dir.glob("*.csv.gz"))
    assert len(files) >= 17
    for path in files:
        assert validate_bars(read_raw(path), source=str(path)) == [], path.name


def test_cli_validate_broken_file_one_line_no_traceback(tmp_path) -> None:
    path = _write(
        tmp_path, _broken(4, "2024-01-02T00:03:00Z,11,11.5,10.9,11.2,-5"), name="broken.csv"
    )
    exe = Path(sys.executable).parent / "rl-trading"
    proc = subprocess.run(
        [str(exe), "data", "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "broken.csv" in lines[0] and "row 4" in lines[0] and "negative_volume" in lines[0]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_epoch_timestamps_in_any_unit(tmp_path, unit) -> None:
    """Integer epoch timestamps: the unit follows the magnitude (us and ns were read as ms
    and ended in an 'internal error')."""
    idx = pd.date_range("2024-01-01", periods=3, freq="1D", tz="UTC")
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    frame = pd.DataFrame(
        {"timestamp": idx.as_unit("ns").asi8 // scale, "open": 10.0, "high": 11.0, "low": 9.0,
         "close": 10.0, "volume": 1.0}
    )  # fmt: skip
    frame.to_parquet(tmp_path / "epoch.parquet")
    assert read_bars(tmp_path / "epoch.parquet").index.equals(idx.rename("timestamp"))
