"""What both environments share: config resolution, bar checks, feature arrays, reward shaping."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from rl_trading import metrics
from rl_trading.config import AppConfig, periods_per_year_of
from rl_trading.data.features import (
    FEATURE_COLUMNS,
    SIGNAL_NEUTRAL,
    WARMUP_BARS,
    FeatureScaler,
    compute_features,
    signal_columns,
)
from rl_trading.data.resample import FILLED_COLUMN
from rl_trading.errors import ConfigError

__all__ = [
    "InstrumentArrays",
    "RewardShaper",
    "check_bars",
    "env_periods_per_year",
    "prepare_instrument",
    "resolve_config",
]

_ALIASES = {"reward": ("reward", "kind"), "reward_kind": ("reward", "kind")}


def resolve_config(
    cfg: AppConfig | None, overrides: Mapping[str, Any], sections: tuple[str, ...]
) -> AppConfig:
    """Copy of `cfg` (defaults if None) with keyword `overrides` applied to the first of
    `sections` that has the key; unknown keys or bad values raise ConfigError."""
    cfg = AppConfig() if cfg is None else cfg
    if not overrides:
        return cfg
    tree = cfg.model_dump()
    for key, value in overrides.items():
        if key in _ALIASES:
            section, field = _ALIASES[key]
        else:
            section = next((s for s in sections if key in tree[s]), None)
            field = key
            if section is None:
                raise ConfigError(
                    f"unknown environment option '{key}' (not in config sections {sections})"
                )
        tree[section][field] = value
    try:
        return AppConfig.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"environment option '{where}': {first['msg'].lower()}") from None


def check_bars(bars: Any, symbol: str = "bars") -> pd.DataFrame:
    """Validate one instrument's bars for an env: a DataFrame with finite positive prices."""
    if not isinstance(bars, pd.DataFrame):
        raise ValueError(f"{symbol}: bars must be a pandas DataFrame, got {type(bars).__name__}")
    missing = [c for c in ("open", "high", "low", "close", "volume") if c not in bars.columns]
    if missing:
        raise ValueError(f"{symbol}: bars lack columns {missing}")
    values = bars[["open", "high", "low", "close", "volume"]].to_numpy(dtype="float64")
    if not np.isfinite(values).all():
        row = int(np.argwhere(~np.isfinite(values))[0, 0])
        raise ValueError(f"{symbol}: bars contain NaN/inf (first at row {row}); repair them first")
    if (values[:, :4] <= 0).any():
        raise ValueError(f"{symbol}: prices must be positive")
    return bars


@dataclass
class InstrumentArrays:
    """Precomputed numpy arrays of one instrument: prices and scaled causal features."""

    symbol: str
    open: np.ndarray  # (T,) float64
    close: np.ndarray  # (T,) float64
    features: np.ndarray  # (T, F) float32, C-contiguous; rows < WARMUP_BARS are 0
    scaler: FeatureScaler
    low: np.ndarray  # (T,) float64
    high: np.ndarray  # (T,) float64
    real: np.ndarray  # (T,) bool: False on forward-filled bars (align's `filled`), no fills


def env_periods_per_year(cfg: AppConfig, bars: pd.DataFrame | pd.Series | None = None) -> float:
    """Bars per year both envs annualise with (volatility observations, borrow cost, summaries).

    The one place the envs take their calendar from: the run's resolved value
    (`config.periods_per_year_of`: `data.periods_per_year`, pinned from the training bars when a
    run starts, else `data.calendar`, measuring `bars` for `auto`).
    """
    return periods_per_year_of(cfg, bars)


def prepare_instrument(
    bars: pd.DataFrame, scaler: FeatureScaler | None = None, symbol: str = "bars"
) -> InstrumentArrays:
    """Compute the causal features once, scale them (fit here unless `scaler` is given)."""
    check_bars(bars, symbol)
    if len(bars) <= WARMUP_BARS + 1:
        raise ValueError(
            f"{symbol}: {len(bars)} bars is too few (features need {WARMUP_BARS} warm-up bars)"
        )
    feats = compute_features(bars)
    if scaler is None:
        scaler = FeatureScaler().fit(feats.iloc[WARMUP_BARS:])
    scaled = scaler.transform(feats[FEATURE_COLUMNS]).astype(np.float32, copy=False)
    scaled[:WARMUP_BARS] = 0.0
    signals = signal_columns(bars)
    if signals:
        # out-of-sample model probabilities in [0, 1], centred on 'no opinion', not scaled
        extra = bars[signals].to_numpy(dtype=np.float32) - np.float32(SIGNAL_NEUTRAL)
        scaled = np.concatenate([scaled, np.nan_to_num(extra, nan=0.0)], axis=1)
    scaled = np.ascontiguousarray(scaled, dtype=np.float32)
    if FILLED_COLUMN in bars.columns:
        real = ~bars[FILLED_COLUMN].to_numpy(dtype=bool)
    else:
        real = np.ones(len(bars), dtype=bool)
    return InstrumentArrays(
        symbol=symbol,
        open=bars["open"].to_numpy(dtype=np.float64).copy(),
        close=bars["close"].to_numpy(dtype=np.float64).copy(),
        features=scaled,
        scaler=scaler,
        low=bars["low"].to_numpy(dtype=np.float64).copy(),
        high=bars["high"].to_numpy(dtype=np.float64).copy(),
        real=np.ascontiguousarray(real),
    )


class RewardShaper:
    """Turns one equity step into a reward, per `cfg.reward` (terms from rl_trading.metrics).

    Base term by `kind`: ``log_return`` log(E1/E0); ``differential_sharpe`` the Moody-Saffell
    increment of the simple return; ``sortino`` the simple return over an EMA (rate dsr_eta)
    downside deviation floored at 1e-4; ``drawdown`` the log return minus any increase of the
    drawdown. Added to every kind: ``(1 - transaction_cost_weight) x cost / E0`` (the net
    return already pays costs once, so weight 1 = costs as they hit equity, 0 = gross P&L),
    ``- drawdown_penalty_weight x drawdown`` and ``- downside_penalty_weight x min(r, 0)^2``.
    With ``cost_amortization_bars`` k > 1 the charged cost ``transaction_cost_weight x cost /
    E0`` is added back and joins a debt of which 1/k is charged per step; the env subtracts
    `flush()` (what is left) at the episode's last step, so the sum is unchanged.
    With kind log_return and default weights the rewards sum to log(final / initial equity).
    """

    KINDS = ("log_return", "differential_sharpe", "sortino", "drawdown")

    def __init__(self, reward_cfg: Any) -> None:
        if reward_cfg.kind not in self.KINDS:
            raise ConfigError(f"unknown reward kind '{reward_cfg.kind}' (use {self.KINDS})")
        self.kind = reward_cfg.kind
        self.cost_extra = 1.0 - reward_cfg.transaction_cost_weight
        self.dd_weight = reward_cfg.drawdown_penalty_weight
        self.down_weight = reward_cfg.downside_penalty_weight
        self.eta = reward_cfg.dsr_eta
        self.amortize = int(reward_cfg.cost_amortization_bars)
        self.debt = 0.0
        self.dsr = metrics.DifferentialSharpe(self.eta)
        self.peak = 1.0
        self.dd = 0.0
        self.down_ema = 0.0

    def reset(self, equity: float) -> None:
        """Start a new episode at `equity`."""
        self.dsr.reset()
        self.debt = 0.0
        self.peak = equity
        self.dd = 0.0
        self.down_ema = 0.0

    def __call__(self, eq_prev: float, eq_new: float, cost: float) -> float:
        """Reward for the move from `eq_prev` to `eq_new` that paid `cost` in trading costs."""
        ratio = eq_new / eq_prev if eq_prev > 0 else 0.0
        lr = math.log(ratio) if ratio > 1e-300 else -690.0
        if eq_new > self.peak:
            self.peak = eq_new
        dd = metrics.drawdown_penalty(eq_new, self.peak)
        kind = self.kind
        if kind == "log_return":
            reward = lr
        elif kind == "differential_sharpe":
            reward = self.dsr.update(ratio - 1.0)
        elif kind == "sortino":
            r = ratio - 1.0
            self.down_ema += self.eta * ((r * r if r < 0 else 0.0) - self.down_ema)
            reward = r / max(math.sqrt(self.down_ema), 1e-4)
        else:  # drawdown
            reward = lr - max(0.0, dd - self.dd)
        self.dd = dd
        if self.cost_extra != 0.0 and eq_prev > 0:
            reward += self.cost_extra * cost / eq_prev
        if self.amortize > 1 and eq_prev > 0:  # charge the cost over time instead
            charged = (1.0 - self.cost_extra) * cost / eq_prev
            self.debt += charged
            pay = self.debt / self.amortize
            self.debt -= pay
            reward += charged - pay
        if self.dd_weight:
            reward -= self.dd_weight * dd
        if self.down_weight:
            reward -= self.down_weight * metrics.downside_penalty(lr)
        return reward

    def flush(self) -> float:
        """The cost debt not yet charged (0 unless cost_amortization_bars > 1); clears it."""
        debt, self.debt = self.debt, 0.0
        return debt
