"""Walk-forward signals: no look-ahead, shape/index, finite values, env-facing helper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rl_trading.config import AppConfig
from rl_trading.data import synthetic_market
from rl_trading.errors import ConfigError
from rl_trading.supervised.signals import (
    NO_OPINION,
    SignalProvider,
    add_signal_features,
    observed_market,
    signal_columns,
)

PARAMS = {"analyst": {"n_estimators": 10, "max_depth": 4, "min_samples_leaf": 5}}


def _provider() -> SignalProvider:
    return SignalProvider(
        ("analyst",),
        ["1m", "5m"],
        params=PARAMS,
        refit_every=150,
        embargo=5,
        min_train=200,
        max_train=800,
        seed=1,
    )


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return synthetic_market(["A"], n_bars=2400, seed=11, signal_strength=0.5)["A"]


def test_signals_do_not_use_the_future(bars: pd.DataFrame) -> None:
    base = _provider().compute(bars)
    rng = np.random.default_rng(0)
    for t in (900, 1333):  # a refit boundary (200+ rows in) and a mid-block, mid-5m bar
        changed = bars.copy()
        noise = np.exp(rng.normal(0.0, 0.02, len(bars) - t - 1))
        for col in ("open", "high", "low", "close"):
            changed.iloc[t + 1 :, changed.columns.get_loc(col)] *= noise
        changed.iloc[t + 1 :, changed.columns.get_loc("volume")] *= 3.0
        after = _provider().compute(changed)
        pd.testing.assert_frame_equal(after.iloc[: t + 1], base.iloc[: t + 1])
        # ... and the change is visible afterwards, so the check is not vacuous.
        assert not np.allclose(after.iloc[t + 300 :].to_numpy(), base.iloc[t + 300 :].to_numpy())


def test_signal_shape_index_and_values(bars: pd.DataFrame) -> None:
    provider = _provider()
    sig = provider.compute(bars)
    assert sig.index.equals(bars.index)
    assert list(sig.columns) == ["sig_analyst_1m", "sig_analyst_5m"]
    assert np.isfinite(sig.to_numpy()).all() and sig.to_numpy().min() >= 0.0
    assert sig.to_numpy().max() <= 1.0
    # No model before min_train labelled rows + embargo: 'no opinion'.
    assert (sig["sig_analyst_1m"].iloc[:200] == NO_OPINION).all()
    assert sig["sig_analyst_1m"].iloc[-500:].std() > 0.01
    # Out-of-sample probabilities carry the planted trend signal: above chance on later bars.
    up = (bars["close"].shift(-1) > bars["close"]).to_numpy()[1000:-1]
    pred = sig["sig_analyst_1m"].to_numpy()[1000:-1] > 0.5
    assert (pred == up).mean() > 0.55


def test_add_signal_features_keeps_structure(bars: pd.DataFrame) -> None:
    cfg = AppConfig()
    provider = SignalProvider(("analyst",), ["1m"], params=PARAMS, refit_every=400, min_train=300)
    both = {"A": bars.iloc[:1200], "B": bars.iloc[:1200] * 1.5}
    out = add_signal_features(both, cfg, provider)
    assert set(out) == {"A", "B"}
    for sym, frame in out.items():
        assert frame.index.equals(both[sym].index)
        assert list(frame.columns[:5]) == list(both[sym].columns)
        assert signal_columns(frame) == ["sig_analyst_1m"]
    single = add_signal_features(bars.iloc[:1200], cfg, provider)
    assert signal_columns(single) == ["sig_analyst_1m"]
    again = add_signal_features(single, cfg, provider)  # idempotent: replaces, never duplicates
    assert list(again.columns) == list(single.columns)
    default = SignalProvider.from_config(cfg)
    assert default.embargo == cfg.data.embargo_bars and default.timeframes == [
        "1h",
        "15m",
        "5m",
        "1m",
    ]


def test_signals_enabled_without_a_usable_timeframe_is_an_error() -> None:
    """Daily bars with the default 1h..1m signal timeframes give no signal at all: a one-line
    ConfigError naming the fix, not a run that silently trains without the signals."""
    daily = synthetic_market(["A", "B"], n_bars=300, seed=3, timeframe="1d")
    cfg = AppConfig.model_validate(
        {"supervised": {"signals_enabled": True, "timeframes": ["1h", "15m"]}}
    )
    with pytest.raises(ConfigError, match="no signal for these bars.*1h: finer than the bars"):
        observed_market(cfg, daily)
    cfg = AppConfig.model_validate(
        {"supervised": {"signals_enabled": True, "timeframes": ["1d", "1h"]}}
    )
    out = observed_market(cfg, daily)
    assert signal_columns(out["A"]) == ["sig_analyst_1d"]
