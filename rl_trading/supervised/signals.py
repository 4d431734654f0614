"""Leak-free model signals for the RL observation (the 'hybrid' stage).

`SignalProvider.compute(bars)` returns, for every bar ``t``, the probability that the next move
is up, from a model fitted *only* on rows whose labels were known before ``t``:

- walk-forward: the model used for bars ``[s, s + refit_every)`` is fitted on the rows ``i``
  with ``i + horizon <= s - 1 - embargo`` (their forward return had closed ``embargo`` bars
  before ``s``), at most ``max_train`` of the latest such rows;
- a coarser timeframe (e.g. an hourly analyst for 1-minute bars) is computed on resampled bars
  and a base bar only sees coarse bars that had *closed* by the end of that base bar;
- before the first model exists (warm-up, fewer than ``min_train`` labelled rows) the value is
  0.5, 'no opinion', so observations stay finite.

Everything is computed once up front (vectorised per refit block), not per env step.
Columns are named ``sig_<model>_<timeframe>`` (see `signal_columns`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from rl_trading.config import AppConfig
from rl_trading.data import load_market, resample, timeframe_delta
from rl_trading.data.features import SIGNAL_NEUTRAL, SIGNAL_PREFIX, signal_columns
from rl_trading.errors import ConfigError
from rl_trading.supervised.api import feature_matrix
from rl_trading.supervised.dataset import infer_timeframe
from rl_trading.supervised.models import default_params, make_model
from rl_trading.supervised.targets import direction_target

NO_OPINION = SIGNAL_NEUTRAL


class SignalProvider:
    """Walk-forward, out-of-sample P(up) of supervised models, aligned to the bars' index."""

    def __init__(
        self,
        model_types: Sequence[str] = ("analyst",),
        timeframes: Sequence[str] | None = None,
        *,
        params: dict[str, dict[str, Any]] | None = None,
        horizon: int = 1,
        dead_zone: float = 0.0,
        refit_every: int = 500,
        embargo: int = 0,
        min_train: int = 500,
        max_train: int | None = 5000,
        seed: int = 42,
    ) -> None:
        if refit_every < 1 or min_train < 10:
            raise ValueError("refit_every must be >= 1 and min_train >= 10")
        self.model_types = list(model_types)
        self.timeframes = list(timeframes) if timeframes else None
        self.params = params or {}
        self.horizon = horizon
        self.dead_zone = dead_zone
        self.refit_every = refit_every
        self.embargo = embargo
        self.min_train = min_train
        self.max_train = max_train
        self.seed = seed
        self.notes: list[str] = []

    @classmethod
    def from_config(cls, cfg: AppConfig, **overrides: Any) -> SignalProvider:
        """Provider from `cfg.supervised` (analyst, its timeframes, horizon, dead zone, seed),
        with the data embargo; signal models are capped at 50 trees to stay fast."""
        sup = cfg.supervised
        analyst = default_params("analyst", cfg)
        analyst["n_estimators"] = min(analyst["n_estimators"], 50)
        kwargs: dict[str, Any] = {
            "model_types": ("analyst",),
            "timeframes": list(sup.timeframes),
            "params": {"analyst": analyst},
            "horizon": sup.horizon,
            "dead_zone": sup.dead_zone,
            "embargo": cfg.data.embargo_bars,
            "seed": sup.random_state,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    # ----------------------------------------------------------------------------------------

    def _walk_forward(self, bars: pd.DataFrame, model_type: str) -> pd.Series:
        """P(up) at every bar of `bars` (one timeframe) from walk-forward refits."""
        params = {**default_params(model_type, AppConfig()), **self.params.get(model_type, {})}
        x, valid = feature_matrix(bars, model_type, int(params.get("window", 1)))
        y = direction_target(bars["close"], self.horizon, self.dead_zone).to_numpy()
        labelled = valid & ~np.isnan(y)
        n = len(bars)
        out = np.full(n, NO_OPINION, dtype="float64")
        rows = np.arange(n)
        # A label of row i is known at the end of bar i + horizon.
        known_by = rows + self.horizon
        start = 0
        cum = np.cumsum(labelled)
        # First block start where min_train labels were known (embargo included).
        for s in range(n):
            last = s - 1 - self.embargo - self.horizon
            if last >= 0 and cum[last] >= self.min_train:
                start = s
                break
        else:
            return pd.Series(out, index=bars.index)
        for s in range(start, n, self.refit_every):
            train = labelled & (known_by <= s - 1 - self.embargo)
            idx = np.flatnonzero(train)
            if self.max_train is not None:
                idx = idx[-self.max_train :]
            if len(np.unique(y[idx])) < 2:
                continue
            model = make_model(model_type, params, self.seed)
            model.fit(x[idx], y[idx].astype(int))
            block = np.arange(s, min(s + self.refit_every, n))
            block = block[valid[block]]
            if len(block):
                out[block] = model.predict_proba(x[block])[:, 1]
        return pd.Series(out, index=bars.index)

    def compute(self, bars: pd.DataFrame) -> pd.DataFrame:
        """Signal columns for every bar of one instrument's `bars` (same index)."""
        base = infer_timeframe(bars)
        out = pd.DataFrame(index=bars.index)
        base_end = bars.index + base
        for tf in self.timeframes or [None]:
            delta = timeframe_delta(tf) if tf is not None else base
            name_tf = tf if tf is not None else "base"
            if delta < base:
                self.notes.append(f"{tf}: finer than the bars, no signal")
                continue
            tf_bars = bars if delta == base else resample(bars, tf)
            for model_type in self.model_types:
                col = f"{SIGNAL_PREFIX}{model_type}_{name_tf}"
                if len(tf_bars) < self.min_train + self.embargo + self.horizon + 50:
                    self.notes.append(f"{col}: only {len(tf_bars)} bars, constant {NO_OPINION}")
                    out[col] = NO_OPINION
                    continue
                sig = self._walk_forward(tf_bars, model_type)
                if delta == base:
                    out[col] = sig.to_numpy()
                    continue
                # A coarse bar is usable once it has closed: label + delta <= base bar's end.
                coarse = pd.DataFrame({"avail": tf_bars.index + delta, "p": sig.to_numpy()})
                merged = pd.merge_asof(
                    pd.DataFrame({"end": base_end}),
                    coarse,
                    left_on="end",
                    right_on="avail",
                    direction="backward",
                )
                out[col] = merged["p"].fillna(NO_OPINION).to_numpy()
        return out


def add_signal_features(
    bars: pd.DataFrame | dict[str, pd.DataFrame],
    cfg: AppConfig,
    provider: SignalProvider | None = None,
) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Bars (one frame or a dict by symbol) with the ``sig_*`` columns appended.

    Each symbol gets its own walk-forward models. Call once, before building environments;
    the caller decides (e.g. ``cfg.supervised.signals_enabled``) whether to call it.
    """
    provider = provider or SignalProvider.from_config(cfg)
    if isinstance(bars, dict):
        return {sym: _with_signals(frame, provider) for sym, frame in bars.items()}
    return _with_signals(bars, provider)


def _with_signals(frame: pd.DataFrame, provider: SignalProvider) -> pd.DataFrame:
    sig = provider.compute(frame)
    base = frame.drop(columns=signal_columns(frame))
    return pd.concat([base, sig], axis=1)


def observed_market(
    cfg: AppConfig, bars: dict[str, pd.DataFrame] | None = None
) -> dict[str, pd.DataFrame]:
    """The bars the RL agents observe: `load_market(cfg)` (or `bars`), plus the supervised
    signal columns when `cfg.supervised.signals_enabled`.

    Training and backtests both call this, so a policy is evaluated on the same observation
    features it was trained on. Signals are leak-free by construction, so they are computed
    once on the whole series, before any train/validation/test split.
    """
    if bars is None:
        bars = load_market(cfg)
    if not cfg.supervised.signals_enabled:
        return bars
    provider = SignalProvider.from_config(cfg)
    out = add_signal_features(bars, cfg, provider)
    if not any(signal_columns(frame) for frame in out.values()):
        # e.g. daily bars with the default 1h..1m timeframes: never train without the signals
        # the config asked for and say nothing
        raise ConfigError(
            f"supervised.signals_enabled: no signal for these bars (supervised.timeframes "
            f"{list(cfg.supervised.timeframes)}: {'; '.join(dict.fromkeys(provider.notes))}); "
            "list the bars' own timeframe or a coarser one"
        )
    for symbol, frame in out.items():  # keep the source marks (synthetic_symbols) of the bars
        frame.attrs.update(bars[symbol].attrs)
    return out  # type: ignore[return-value]
