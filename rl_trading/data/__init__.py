"""Market data: reading and validating bars, synthetic markets, resampling, alignment, splits.

Light imports only (pandas/numpy); the SQL store is imported lazily as `rl_trading.data.store`.
"""

from __future__ import annotations

from typing import Any

from rl_trading.config import check_symbol
from rl_trading.data.features import FEATURE_COLUMNS, WARMUP_BARS, FeatureScaler, compute_features
from rl_trading.data.loader import (
    SAMPLE_DIR,
    load_market,
    sample_files,
    synthetic_symbols,
    to_timeframe,
)
from rl_trading.data.resample import FILLED_COLUMN, AlignReport, align, resample
from rl_trading.data.schema import (
    BAR_COLUMNS,
    as_bars,
    empty_bars,
    fingerprint,
    guess_timeframe,
    pandas_freq,
    parse_timeframe,
    timeframe_delta,
    write_bars,
)
from rl_trading.data.splits import (
    Fold,
    Splits,
    decision_history,
    env_history,
    single_decision_history,
    split_by_time,
    split_for_env,
    take_part,
    walk_forward_splits,
)
from rl_trading.data.synthetic import bars_per_year, synthetic_bars, synthetic_market
from rl_trading.data.validation import Issue, check_bars, read_bars, repair_bars, validate_bars

__all__ = [
    "BAR_COLUMNS",
    "FEATURE_COLUMNS",
    "FILLED_COLUMN",
    "SAMPLE_DIR",
    "WARMUP_BARS",
    "AlignReport",
    "FeatureScaler",
    "Fold",
    "Issue",
    "Splits",
    "align",
    "as_bars",
    "bars_per_year",
    "check_bars",
    "check_symbol",
    "compute_features",
    "empty_bars",
    "fingerprint",
    "guess_timeframe",
    "load_market",
    "pandas_freq",
    "parse_timeframe",
    "read_bars",
    "repair_bars",
    "resample",
    "sample_files",
    "split_by_time",
    "split_for_env",
    "take_part",
    "decision_history",
    "single_decision_history",
    "env_history",
    "synthetic_bars",
    "synthetic_market",
    "synthetic_symbols",
    "timeframe_delta",
    "to_timeframe",
    "validate_bars",
    "walk_forward_splits",
    "write_bars",
]


def __getattr__(name: str) -> Any:
    """Lazy access to `BarStore` so importing the package does not import SQLAlchemy."""
    if name == "BarStore":
        from rl_trading.data.store import BarStore  # heavy: sqlalchemy

        return BarStore
    raise AttributeError(f"module 'rl_trading.data' has no attribute {name!r}")
