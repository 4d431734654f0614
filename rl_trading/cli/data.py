"""`rl-trading data ...`: validate, repair, import, inspect and synthesise market bars."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from rl_trading.cli.common import ConfigOpt, SetOpt, cli_config, console
from rl_trading.cli.output import JsonOpt, print_json
from rl_trading.config import zone
from rl_trading.data import (
    check_symbol,
    fingerprint,
    guess_timeframe,
    load_market,
    parse_timeframe,
    read_bars,
    synthetic_market,
    synthetic_symbols,
    timeframe_delta,
    write_bars,
)
from rl_trading.data.schema import read_raw
from rl_trading.data.validation import (
    DEFAULT_MAX_PRICE,
    check_bars,
    check_spacing,
    describe_outliers,
    outlier_returns,
    repair_bars,
)
from rl_trading.errors import ConfigError, DataError

MAX_SYNTH_BARS = 10_000_000
app = typer.Typer(
    help="Market data: validate, repair, import, inspect, synthesise.", no_args_is_help=True
)

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL (default: sqlite rl_trading.db in this directory)."),
]
AssumeUtcOpt = Annotated[
    bool, typer.Option("--assume-utc", help="Read time-zone-less timestamps as UTC.")
]
TzOpt = Annotated[
    str | None,
    typer.Option(
        "--tz",
        help="Exchange time zone (e.g. America/New_York): read naive timestamps, or those "
        "with the zone's own offsets, as wall-clock times there, DST-aware (Z/UTC kept).",
    ),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output file (never the input).")
]
MaxPriceOpt = Annotated[
    float | None,
    typer.Option("--max-price", help="Refuse prices above this (default data.max_price, 1e9)."),
]


def _time_options(assume_utc: bool, tz: str | None, max_price: float | None) -> float:
    """Check the time-zone and ceiling options; returns the price ceiling to use."""
    if assume_utc and tz:
        raise ConfigError("give either --assume-utc or --tz, not both")
    if tz:
        zone(tz)
    if max_price is not None and not max_price > 0:
        raise ConfigError(f"--max-price must be > 0 (got {max_price:g})")
    return DEFAULT_MAX_PRICE if max_price is None else max_price


def _check_out(paths: list[Path], overwrite: bool, source: Path | None = None) -> None:
    """Before any work: refuse an output that is the input file, or that exists already
    unless `overwrite` (a silent overwrite loses the data it held)."""
    for path in paths:
        if source is not None and path.exists() and path.resolve() == source.resolve():
            raise DataError(f"--out {path} is the input file: write the result elsewhere")
        if path.exists() and not overwrite:
            raise DataError(f"{path} exists already (--overwrite replaces it)")


def _ts(value) -> str:  # noqa: ANN001 - a pandas Timestamp or None
    """Compact UTC timestamp for tables (date only at midnight)."""
    if value is None:
        return "-"
    text = value.strftime("%Y-%m-%d %H:%M")
    return text[:10] if text.endswith("00:00") else text


def _summary_table(title: str, rows: list[tuple[str, str]]):  # noqa: ANN202 - rich Table

    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _describe(bars) -> list[tuple[str, str]]:  # noqa: ANN001 - a bars DataFrame

    tf = guess_timeframe(bars.index)
    gaps = 0
    if tf is not None and len(bars) > 1:
        gaps = int((bars.index.to_series().diff() > timeframe_delta(tf)).sum())
    return [
        ("rows", f"{len(bars):,}"),
        ("first", _ts(bars.index[0]) if len(bars) else "-"),
        ("last", _ts(bars.index[-1]) if len(bars) else "-"),
        ("timeframe (guess)", tf or "-"),
        ("gaps > 1 bar", f"{gaps:,}"),
        ("zero-volume bars", f"{int((bars['volume'] == 0).sum()):,}"),
    ]


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="CSV, CSV.gz or Parquet bars file.")],
    repair: Annotated[
        bool,
        typer.Option(help="Apply the safe fixes (sort, exact duplicates, swap/widen high-low)."),
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Where --repair writes the fixed file.")] = None,
    assume_utc: AssumeUtcOpt = False,
    tz: TzOpt = None,
    timeframe: Annotated[
        str | None, typer.Option(help="Check the bars' typical spacing is this timeframe.")
    ] = None,
    max_price: MaxPriceOpt = None,
    overwrite: OverwriteOpt = False,
    strict: Annotated[
        bool,
        typer.Option(help="Treat warnings (outlier returns) as errors: exit non-zero."),
    ] = False,
) -> None:
    """Check a bars file against every validation rule; optionally write a repaired copy.

    Returns far outside the series' usual moves (a robust z-score above 50, e.g. a close x100
    spike) are warnings, errors with --strict."""
    ceiling = _time_options(assume_utc, tz, max_price)
    if repair and out is None:
        raise DataError("--repair needs --out PATH for the repaired file")
    if repair and out is not None:
        _check_out([out], overwrite, source=path)
    if timeframe is not None:
        parse_timeframe(timeframe)
    source = str(path)
    raw = read_raw(path)
    if repair:
        fixed, changes = repair_bars(raw, assume_utc=assume_utc, tz=tz, source=source)
        bars = check_bars(fixed, source=source, max_price=ceiling)
        if timeframe is not None:
            check_spacing(bars, timeframe, source)
        write_bars(bars, out)
        for change in changes or ["nothing to repair"]:
            console.print(f"repaired: {change}", soft_wrap=True, highlight=False)
        console.print(f"wrote {out}")
    else:
        bars = check_bars(raw, source=source, assume_utc=assume_utc, tz=tz, max_price=ceiling)
        if timeframe is not None:
            check_spacing(bars, timeframe, source)
    outliers = outlier_returns(bars)
    if outliers and strict:
        raise DataError(describe_outliers(outliers, source) + " (--strict)")
    verdict = f"valid, {len(outliers)} warning(s)" if outliers else "valid"
    console.print(_summary_table(f"{path.name}: {verdict}", _describe(bars)))
    if outliers:
        console.print(
            f"[yellow]warning: {describe_outliers(outliers, source)}[/]",
            soft_wrap=True,
            highlight=False,
        )


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="CSV, CSV.gz or Parquet bars file.")],
    symbol: Annotated[str, typer.Option(help="Instrument symbol to store the bars under.")],
    timeframe: Annotated[str, typer.Option(help="Bar timeframe, e.g. 1m, 5m, 1h, 1d.")],
    db: DbOpt = None,
    assume_utc: AssumeUtcOpt = False,
    tz: TzOpt = None,
    max_price: MaxPriceOpt = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Overwrite stored bars at the same timestamps."),
    ] = False,
) -> None:
    """Validate a bars file and insert it into the SQL store (re-imports add nothing unless
    --replace, which overwrites the stored rows with the file's values)."""
    from rl_trading.data.store import BarStore  # heavy: sqlalchemy

    ceiling = _time_options(assume_utc, tz, max_price)
    check_symbol(symbol)
    parse_timeframe(timeframe)
    bars = read_bars(path, assume_utc=assume_utc, tz=tz, max_price=ceiling)
    check_spacing(bars, timeframe, str(path))
    store = BarStore(db)
    new = store.write(bars, symbol, timeframe, replace=replace, max_price=ceiling)
    replaced = store.last_write.replaced if store.last_write else 0
    what = f"{new:,} new, {replaced:,} replaced" if replace else f"{new:,} new"
    console.print(
        f"imported {path.name} as {symbol} {timeframe}: {what} of {len(bars):,} bars "
        f"into {store.safe_url}",
        soft_wrap=True,
        highlight=False,
    )


@app.command()
def delete(
    symbol: Annotated[str, typer.Option(help="Symbol of the series to delete.")],
    timeframe: Annotated[str, typer.Option(help="Timeframe of the series to delete.")],
    db: DbOpt = None,
) -> None:
    """Remove one stored series (symbol and timeframe) from the SQL store."""
    from rl_trading.data.store import BarStore  # heavy: sqlalchemy

    check_symbol(symbol)
    parse_timeframe(timeframe)
    store = BarStore(db)
    n = store.delete(symbol, timeframe)
    if n == 0:
        raise DataError(f"no {timeframe} bars for {symbol} in {store.safe_url}: nothing deleted")
    console.print(
        f"deleted {n:,} {symbol} {timeframe} bars from {store.safe_url}",
        soft_wrap=True,
        highlight=False,
    )


@app.command()
def info(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List the stored series: symbol, timeframe, rows and time range."""
    from rl_trading.data.store import BarStore  # heavy: sqlalchemy

    store = BarStore(db)
    items = store.info()
    if as_json:
        rows = [
            {
                "symbol": it.symbol,
                "timeframe": it.timeframe,
                "rows": it.rows,
                "first": None if it.first is None else str(it.first),
                "last": None if it.last is None else str(it.last),
            }
            for it in items
        ]
        print_json({"db": store.safe_url, "series": rows})
        return
    table = Table(title=escape(f"historical_bars in {store.safe_url}"))
    for col in ("symbol", "timeframe", "rows", "first", "last"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    for it in items:
        table.add_row(it.symbol, it.timeframe, f"{it.rows:,}", _ts(it.first), _ts(it.last))
    console.print(
        table if items else f"no bars stored in {store.safe_url}", soft_wrap=True, highlight=False
    )


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output file (one symbol) or folder (several).")],
    bars: Annotated[int, typer.Option(help="Bars per symbol.")] = 20_000,
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols.")] = "SYN",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    timeframe: Annotated[str, typer.Option(help="Bar timeframe.")] = "1m",
    signal_strength: Annotated[
        float, typer.Option(help="Planted trend drift in units of per-bar volatility (0 = none).")
    ] = 0.0,
    start: Annotated[str, typer.Option(help="First timestamp (UTC).")] = "2024-01-01",
    overwrite: OverwriteOpt = False,
) -> None:
    """Write seeded synthetic bars (GBM, volatility regimes, optional planted signal)."""
    if not 0 < bars <= MAX_SYNTH_BARS:
        raise DataError(f"--bars must be between 1 and {MAX_SYNTH_BARS:,} (got {bars})")
    parse_timeframe(timeframe)
    try:
        start_ts = pd.Timestamp(start)
    except (ValueError, TypeError):
        raise DataError(f"--start: cannot parse {start!r} as a date or timestamp") from None
    if start_ts is pd.NaT:
        raise DataError(f"--start: cannot parse {start!r} as a date or timestamp")
    names = [s.strip() for s in symbols.split(",") if s.strip()]
    if not names:
        raise DataError("--symbols is empty")
    for name in names:
        check_symbol(name)
    try:
        end = start_ts + pd.Timedelta(timeframe_delta(timeframe)) * bars
    except (OverflowError, ValueError):
        end = None
    if end is None or end.year > 2200:
        raise DataError(f"--start {start} + {bars:,} {timeframe} bars runs past the year 2200")
    one = len(names) == 1 and bool(out.suffix)
    targets = [out] if one else [out / f"{s.lower()}_{timeframe}.csv.gz" for s in names]
    _check_out(targets, overwrite)
    market = synthetic_market(
        names,
        n_bars=bars,
        seed=seed,
        timeframe=timeframe,
        start=start_ts,
        signal_strength=signal_strength,
    )
    paths = [write_bars(market[s], target) for s, target in zip(names, targets, strict=True)]
    for p in paths:
        console.print(f"wrote {p} ({bars:,} bars, seed {seed})")


@app.command()
def summary(config: ConfigOpt = None, sets: SetOpt = None, as_json: JsonOpt = False) -> None:
    """What `load_market` gives for a config: instruments, bars, range and fingerprint."""
    cfg = cli_config(config, sets)
    market = load_market(cfg)
    synthetic = set(synthetic_symbols(market))
    if as_json:
        print_json(
            {
                "source": cfg.data.source,
                "timeframe": cfg.data.timeframe,
                "fingerprint": fingerprint(market),
                "synthetic_symbols": sorted(synthetic),
                "symbols": {
                    sym: {
                        "bars": len(bars),
                        "first": str(bars.index[0]),
                        "last": str(bars.index[-1]),
                        "last_close": float(bars["close"].iloc[-1]),
                        "fingerprint": fingerprint(bars),
                    }
                    for sym, bars in market.items()
                },
            }
        )
        return
    table = Table(title=f"market: source={cfg.data.source}, timeframe={cfg.data.timeframe}")
    for col in ("symbol", "kind", "bars", "first", "last", "last close", "fingerprint"):
        table.add_column(col)
    for symbol, bars in market.items():
        table.add_row(
            symbol,
            "synthetic" if symbol in synthetic else "real",
            f"{len(bars):,}",
            _ts(bars.index[0]),
            _ts(bars.index[-1]),
            f"{bars['close'].iloc[-1]:.4g}",
            fingerprint(bars)[:12],
        )
    console.print(table)
    console.print(f"market fingerprint: {fingerprint(market)}", soft_wrap=True)
