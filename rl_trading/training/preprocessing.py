"""What a policy needs to see data as it did in training (stored with every checkpoint and
registered model): features, window, fitted scalers, training range. Light (no Ray), so
evaluation and the registry read it without the training machinery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envs.common import prepare_instrument
from rl_trading.config import periods_per_year_of
from rl_trading.data import FEATURE_COLUMNS, WARMUP_BARS, fingerprint
from rl_trading.data.features import signal_columns

if TYPE_CHECKING:
    import pandas as pd

    from rl_trading.config import AppConfig


def training_preprocessing(
    cfg: AppConfig, train_bars: dict[str, pd.DataFrame], scalers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a policy needs to see data like it did in training: features, window, scalers,
    training range (stored with every checkpoint and registered model).

    The scalers (unless given, already fit) are fit on the training split exactly as training
    fits them (`envs.common.prepare_instrument` on each instrument's training bars).
    """
    first = next(iter(train_bars.values()))
    return {
        "periods_per_year": periods_per_year_of(cfg, train_bars),
        "calendar": cfg.data.calendar,
        "features": list(FEATURE_COLUMNS) + signal_columns(first),
        "warmup_bars": WARMUP_BARS,
        "window_size": cfg.train.window_size,
        "timeframe": cfg.data.timeframe,
        "symbols": list(train_bars),
        "scalers": {
            s: (scalers[s] if scalers else prepare_instrument(f, None, s).scaler).to_dict()
            for s, f in train_bars.items()
        },
        "train_fingerprint": fingerprint(train_bars),
        "train_start": str(first.index[0]),  # backtests refuse overlapping dates by default
        "train_end": str(first.index[-1]),
    }
