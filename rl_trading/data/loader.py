"""`load_market(cfg)`: the bars of `cfg.data.symbols` from the configured source, aligned.

Synthetic bars are never substituted silently: they come only from `source: synthetic` or,
for symbols without data, from the explicit `data.synthetic_fallback: true`. Every synthetic
frame is marked (`frame.attrs["synthetic"]`); `synthetic_symbols(market)` lists them for run
summaries, MLflow tags and the registry.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from rl_trading.config import AppConfig, check_symbol
from rl_trading.data.resample import align, resample
from rl_trading.data.schema import guess_timeframe, timeframe_delta
from rl_trading.data.synthetic import synthetic_market
from rl_trading.data.validation import check_spacing, read_bars
from rl_trading.errors import DataError

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


def sample_files() -> dict[tuple[str, str], Path]:
    """Bundled sample files keyed by (SYMBOL, timeframe)."""
    out = {}
    for path in sorted(SAMPLE_DIR.glob("*.csv.gz")):
        stem = path.name[: -len(".csv.gz")]
        symbol, _, timeframe = stem.rpartition("_")
        out[(symbol.upper(), timeframe)] = path
    return out


def to_timeframe(bars: pd.DataFrame, timeframe: str, source: str = "<bars>") -> pd.DataFrame:
    """Bars at `timeframe`: unchanged if already there, resampled if finer, else DataError."""
    have = guess_timeframe(bars.index)
    if have is None:
        return bars
    have_delta, want = timeframe_delta(have), timeframe_delta(timeframe)
    if have_delta == want:
        return bars
    if have_delta > want:
        raise DataError(f"{source}: bars are {have}, coarser than the requested {timeframe}")
    return resample(bars, timeframe)


def _sample_bars(symbol: str, timeframe: str) -> pd.DataFrame:
    files = sample_files()
    path = files.get((symbol.upper(), timeframe))
    if path is None:
        finer = [
            (timeframe_delta(tf), p)
            for (sym, tf), p in files.items()
            if sym == symbol.upper() and timeframe_delta(tf) < timeframe_delta(timeframe)
        ]
        if not finer:
            have = ", ".join(f"{s}@{t}" for s, t in sorted(files))
            raise DataError(f"no bundled sample for {symbol} at {timeframe} (have: {have})")
        path = max(finer)[1]
    return to_timeframe(read_bars(path), timeframe, str(path))


def _file_bars(cfg: AppConfig, symbol: str, path: str) -> pd.DataFrame:
    data = cfg.data
    bars = read_bars(Path(path).expanduser(), tz=data.tz, max_price=data.max_price)
    return to_timeframe(bars, data.timeframe, path)


SYNTHETIC_ATTR = "synthetic"


def synthetic_symbols(market: dict[str, pd.DataFrame]) -> list[str]:
    """The symbols of a `load_market` result whose bars are synthetic (in market order)."""
    return [s for s, frame in market.items() if frame.attrs.get(SYNTHETIC_ATTR, False)]


def _mark(bars: dict[str, pd.DataFrame], synthetic: set[str]) -> dict[str, pd.DataFrame]:
    for symbol, frame in bars.items():
        frame.attrs[SYNTHETIC_ATTR] = symbol in synthetic
    return bars


def load_market(cfg: AppConfig) -> dict[str, pd.DataFrame]:
    """Bars of every configured symbol from `cfg.data.source`, aligned by `cfg.data.gap_policy`.

    auto: files from `cfg.data.paths`; files / sql / sample / synthetic: only that source.
    A symbol without data (auto: no path; sql: no rows) is a DataError unless
    `data.synthetic_fallback` is true, which fills it with seeded synthetic bars (on the real
    bars' index when mixed) and logs a warning naming it; see `synthetic_symbols`.
    """
    data = cfg.data
    symbols = [check_symbol(s) for s in data.symbols]
    if not symbols:
        raise DataError("data.symbols is empty")
    syn = data.synthetic
    source = data.source
    bars: dict[str, pd.DataFrame] = {}
    rest: list[str] = []
    if source == "synthetic":
        bars = _synthetic(cfg, symbols, None)
    elif source == "sample":
        bars = {s: _sample_bars(s, data.timeframe) for s in symbols}
    elif source == "files":
        missing = [s for s in symbols if s not in data.paths]
        if missing:
            raise DataError(f"data.source is 'files' but data.paths has no file for {missing}")
        bars = {s: _file_bars(cfg, s, data.paths[s]) for s in symbols}
    elif source == "sql":
        from rl_trading.data.store import BarStore  # heavy: sqlalchemy

        store = BarStore(data.db_url, table=data.table)
        for s in symbols:
            frame = store.read(s, data.timeframe, max_price=data.max_price)
            if frame.empty:
                rest.append(s)
                continue
            check_spacing(frame, data.timeframe, f"{s} {data.timeframe} in {data.table}")
            bars[s] = frame
        if rest and not data.synthetic_fallback:
            raise DataError(
                f"no {data.timeframe} bars for {', '.join(rest)} in table {data.table} at "
                f"{store.safe_url} (import them with `rl-trading data import`, or set "
                "data.synthetic_fallback=true to use synthetic bars for them)"
            )
    elif source == "auto":
        bars = {s: _file_bars(cfg, s, data.paths[s]) for s in symbols if s in data.paths}
        rest = [s for s in symbols if s not in bars]
        if rest and not data.synthetic_fallback:
            raise DataError(
                f"no data for {', '.join(rest)}: data.paths has no file for them (source "
                "auto); add their files, use data.source=synthetic, or set "
                "data.synthetic_fallback=true to fill them with synthetic bars"
            )
    else:  # pragma: no cover - the config schema forbids other values
        raise DataError(f"unknown data.source '{source}'")
    if rest:
        index = None
        if bars:
            index = next(iter(align(bars, data.gap_policy, data.max_ffill_bars).values())).index
        bars.update(_synthetic(cfg, rest, index))
        log.warning(
            "synthetic bars (data.synthetic_fallback) for %s: no %s data", ", ".join(rest), source
        )
    bars = {s: bars[s] for s in symbols}
    synthetic = set(symbols) if source == "synthetic" else set(rest)
    log.info("loaded %d instruments from %s (seed %s)", len(bars), source, syn.seed)
    if len(bars) > 1:
        bars = align(bars, data.gap_policy, data.max_ffill_bars)
    return _mark(bars, synthetic)


def _synthetic(
    cfg: AppConfig, symbols: list[str], index: pd.DatetimeIndex | None
) -> dict[str, pd.DataFrame]:
    syn = cfg.data.synthetic
    return synthetic_market(
        symbols,
        n_bars=syn.n_bars,
        seed=syn.seed,
        timeframe=cfg.data.timeframe,
        start=syn.start,
        correlation=syn.correlation,
        regimes=syn.regimes,
        annual_vol=syn.annual_vol,
        signal_strength=syn.signal_strength,
        index=index,
    )
