"""Time-ordered train/validation/test splits and walk-forward folds, with an embargo gap.

The embargo drops `embargo` bars between consecutive parts so that features or labels that look
back (or forward, for labels) across the boundary cannot leak information between parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd

from rl_trading.data.features import WARMUP_BARS
from rl_trading.errors import DataError

Bars = pd.DataFrame | dict[str, pd.DataFrame]


class Splits(NamedTuple):
    """Train, validation and test parts (each a DataFrame or a dict of aligned frames)."""

    train: Any
    val: Any
    test: Any


def _length(bars: Bars) -> int:
    if isinstance(bars, dict):
        if not bars:
            raise DataError("no instruments to split")
        frames = list(bars.values())
        first = frames[0].index
        for frame in frames[1:]:
            if not frame.index.equals(first):
                raise DataError("instruments are not aligned on one index; call align() first")
        return len(first)
    return len(bars)


def _take(bars: Bars, part: slice) -> Bars:
    if isinstance(bars, dict):
        return {k: v.iloc[part] for k, v in bars.items()}
    return bars.iloc[part]


def take_part(bars: Bars, part: slice, history: int = 0) -> Bars:
    """Positional `part` of the bars with up to `history` earlier bars in front (the causal
    warm-up an env needs before the part's first bar; fewer at the start of the data)."""
    return _take(bars, slice(max(0, part.start - int(history)), part.stop))


def split_bounds(
    n_bars: int, train_frac: float = 0.7, val_frac: float = 0.15, embargo_bars: int = 0
) -> tuple[slice, slice, slice]:
    """Positional slices (train, val, test) of `n_bars`, with `embargo_bars` dropped between."""
    if not (0 < train_frac < 1 and 0 <= val_frac < 1 and train_frac + val_frac < 1):
        raise DataError(f"bad split fractions train={train_frac} val={val_frac}")
    if embargo_bars < 0:
        raise DataError("embargo_bars must be >= 0")
    n_train = int(n_bars * train_frac)
    n_val = int(n_bars * val_frac)
    val_start = n_train + embargo_bars
    val_end = val_start + n_val
    test_start = val_end + embargo_bars if n_val > 0 else val_end
    if n_train <= 0 or test_start >= n_bars or (val_frac > 0 and n_val <= 0):
        raise DataError(
            f"too few bars ({n_bars}) to split train={train_frac} val={val_frac} "
            f"with an embargo of {embargo_bars} bars"
        )
    return slice(0, n_train), slice(val_start, val_end), slice(test_start, n_bars)


def split_by_time(
    bars: Bars,
    train_frac: float = 0.7,
    val_frac: float = 0.15,
    embargo_bars: int = 0,
    history: int = 0,
) -> Splits:
    """Split bars (a frame, or a dict of aligned frames) into time-ordered train/val/test parts.

    `history` > 0 prepends that many bars of causal history (the bars just before each part)
    to validation and test, so an env that spends its first `history` bars on feature warm-up
    and risk windows makes its first decision at the part's own first bar instead of losing
    it (see :func:`decision_history`). Training is unchanged; nothing after a part is added.
    """
    if history < 0:
        raise DataError("history must be >= 0")
    train, val, test = split_bounds(_length(bars), train_frac, val_frac, embargo_bars)
    return Splits(_take(bars, train), take_part(bars, val, history), take_part(bars, test, history))


def single_decision_history(window_size: int) -> int:
    """Bars the single-instrument env needs before its first decision: feature warm-up and
    the observation window (`TradingEnv.first_bar`)."""
    return max(WARMUP_BARS, int(window_size) - 1)


def decision_history(window_size: int, risk_window: int, trend_windows: Sequence[int] = ()) -> int:
    """Bars the hierarchical env needs before its first decision: feature warm-up, the
    observation window, the risk window and the longest trend observation
    (`HierarchicalTradingEnv.first_bar`, env.trend_windows)."""
    return max(single_decision_history(window_size), int(risk_window), *map(int, trend_windows))


def env_history(cfg: Any) -> int:
    """`decision_history` of a config (train.window_size, env.risk_window, env.trend_windows)."""
    return decision_history(cfg.train.window_size, cfg.env.risk_window, cfg.env.trend_windows)


def split_for_env(bars: Bars, cfg: Any) -> Splits:
    """`split_by_time` with the configured fractions and embargo, validation and test carrying
    the history the env needs so that they keep their first bars (training, validation and
    backtests all split this way)."""
    d = cfg.data
    history = env_history(cfg)
    return split_by_time(bars, d.train_frac, d.val_frac, d.embargo_bars, history=history)


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: positional `train` and `test` slices (embargo gap in between)."""

    index: int
    train: slice
    test: slice

    def select(self, bars: Bars) -> tuple[Bars, Bars]:
        """(train, test) parts of `bars` for this fold."""
        return _take(bars, self.train), _take(bars, self.test)


def walk_forward_splits(
    bars_or_n: Bars | int,
    n_folds: int = 4,
    embargo: int = 0,
    expanding: bool = True,
    min_train_frac: float | None = None,
) -> list[Fold]:
    """Walk-forward folds: train on the past, test on the next block, `embargo` bars between.

    The bars after an initial training block (`min_train_frac`, default 1/(n_folds+1)) are cut
    into `n_folds` equal test blocks in time order. `expanding` trains on everything before the
    test block (minus the embargo); otherwise on a rolling window of the initial block's size.
    """
    n = bars_or_n if isinstance(bars_or_n, int) else _length(bars_or_n)
    if n_folds < 1:
        raise DataError("n_folds must be >= 1")
    frac = min_train_frac if min_train_frac is not None else 1.0 / (n_folds + 1)
    first_train = int(n * frac)
    block = (n - first_train) // n_folds
    if first_train - embargo <= 0 or block - embargo <= 0:
        raise DataError(
            f"too few bars ({n}) for {n_folds} walk-forward folds with embargo {embargo}"
        )
    folds = []
    for k in range(n_folds):
        test_start = first_train + k * block
        test_end = n if k == n_folds - 1 else test_start + block
        train_end = test_start - embargo
        train_start = 0 if expanding else max(0, train_end - (first_train - embargo))
        folds.append(Fold(k, slice(train_start, train_end), slice(test_start, test_end)))
    return folds
