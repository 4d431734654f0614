"""Synthetic market: determinism, consistent OHLCV, correlation, regimes and the planted signal."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rl_trading.data import compute_features, synthetic_bars, synthetic_market


def test_same_seed_identical_different_seed_differs() -> None:
    a = synthetic_market(["A", "B"], n_bars=500, seed=4)
    b = synthetic_market(["A", "B"], n_bars=500, seed=4)
    c = synthetic_market(["A", "B"], n_bars=500, seed=5)
    pd.testing.assert_frame_equal(a["A"], b["A"])
    pd.testing.assert_frame_equal(a["B"], b["B"])
    assert not np.allclose(a["A"]["close"], c["A"]["close"])
    # a symbol's bars do not depend on which other symbols are generated
    pd.testing.assert_frame_equal(a["A"], synthetic_bars("A", n_bars=500, seed=4))


def test_ohlcv_consistent_and_index_at_timeframe() -> None:
    bars = synthetic_bars("X", n_bars=2000, seed=1, timeframe="5m", start="2024-03-01")
    assert str(bars.index.tz) == "UTC"
    assert (bars.index[1:] - bars.index[:-1] == pd.Timedelta("5min")).all()
    assert bars.index[0] == pd.Timestamp("2024-03-01", tz="UTC")
    assert (bars[["open", "high", "low", "close"]] > 0).all().all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars["volume"] > 0).all()


def test_correlation_and_annual_vol() -> None:
    m = synthetic_market(["A", "B", "C"], n_bars=20000, seed=2, correlation=0.5, regimes=False)
    rets = pd.DataFrame({k: np.log(v["close"]).diff() for k, v in m.items()}).dropna()
    corr = rets.corr().to_numpy()[np.triu_indices(3, 1)]
    assert np.all(np.abs(corr - 0.5) < 0.05), corr
    ann = rets["A"].std() * np.sqrt(365.25 * 24 * 60)
    assert 0.13 < ann < 0.17, ann


def test_regimes_change_volatility() -> None:
    bars = synthetic_bars("X", n_bars=20000, seed=3, regimes=True)
    rolling = np.log(bars["close"]).diff().rolling(200).std().dropna()
    assert rolling.max() / rolling.min() > 1.5


def _momentum_pnl(bars: pd.DataFrame, cost: float) -> float:
    feats = compute_features(bars)
    pos = np.nan_to_num(np.sign(feats["log_ret_20"].to_numpy()))
    nxt = np.log(bars["close"]).diff().shift(-1).to_numpy()
    turnover = np.abs(np.diff(pos, prepend=0.0))
    return float(np.nansum(pos * nxt - cost * turnover))


def test_planted_signal_is_learnable_after_costs() -> None:
    for seed in (0, 1):
        strong = synthetic_bars("X", n_bars=20000, seed=seed, signal_strength=0.5)
        none = synthetic_bars("X", n_bars=20000, seed=seed, signal_strength=0.0)
        assert _momentum_pnl(strong, 1e-4) > 0.5
        assert _momentum_pnl(strong, 1e-3) > 0.2
        assert _momentum_pnl(none, 1e-4) < 0.0
