"""`load_market(cfg)`: the bars of `cfg.data.symbols` from the configured source, aligned."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from rl_trading.config import AppConfig
from rl_trading.data.resample import align, resample
from rl_trading.data.schema import guess_timeframe, read_bars, timeframe_delta
from rl_trading.data.synthetic import synthetic_market
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


def _file_bars(symbol: str, path: str, timeframe: str) -> pd.DataFrame:
    return to_timeframe(read_bars(Path(path).expanduser()), timeframe, path)


def load_market(cfg: AppConfig) -> dict[str, pd.DataFrame]:
    """Bars of every configured symbol from `cfg.data.source`, aligned by `cfg.data.gap_policy`.

    auto: files from `cfg.data.paths`, seeded synthetic bars for the other symbols (on the real
    files' index when mixed); files / sql / sample / synthetic: only that source.
    """
    data = cfg.data
    symbols = list(data.symbols)
    if not symbols:
        raise DataError("data.symbols is empty")
    syn = data.synthetic
    source = data.source
    bars: dict[str, pd.DataFrame] = {}
    if source == "synthetic":
        bars = _synthetic(cfg, symbols, None)
    elif source == "sample":
        bars = {s: _sample_bars(s, data.timeframe) for s in symbols}
    elif source == "files":
        missing = [s for s in symbols if s not in data.paths]
        if missing:
            raise DataError(f"data.source is 'files' but data.paths has no file for {missing}")
        bars = {s: _file_bars(s, data.paths[s], data.timeframe) for s in symbols}
    elif source == "sql":
        from rl_trading.data.store import BarStore

        store = BarStore(data.db_url, table=data.table)
        for s in symbols:
            frame = store.read(s, data.timeframe)
            if frame.empty:
                raise DataError(
                    f"no {data.timeframe} bars for {s} in table {data.table} "
                    "(import them with `rl-trading data import`)"
                )
            bars[s] = frame
    elif source == "auto":
        real = {s: _file_bars(s, data.paths[s], data.timeframe) for s in symbols if s in data.paths}
        rest = [s for s in symbols if s not in real]
        if rest:
            index = None
            if real:
                index = align(real, data.gap_policy, data.max_ffill_bars)
                index = next(iter(index.values())).index
            bars.update(_synthetic(cfg, rest, index))
        bars.update(real)
        bars = {s: bars[s] for s in symbols}
    else:  # pragma: no cover - the config schema forbids other values
        raise DataError(f"unknown data.source '{source}'")
    log.info("loaded %d instruments from %s (seed %s)", len(bars), source, syn.seed)
    if len(bars) == 1:
        return bars
    return align(bars, data.gap_policy, data.max_ffill_bars)


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
