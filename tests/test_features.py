"""The causal feature module: no look-ahead, finite after warm-up, train-only scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rl_trading.data import (
    FEATURE_COLUMNS,
    WARMUP_BARS,
    FeatureScaler,
    compute_features,
    read_bars,
    split_by_time,
    synthetic_bars,
)
from rl_trading.data.features import TREND_CLIP, trend_rows, trend_strength, trend_sums


def _assert_causal(bars: pd.DataFrame, cut_points: list[int]) -> None:
    full = compute_features(bars)
    for t in cut_points:
        part = compute_features(bars.iloc[: t + 1])
        np.testing.assert_allclose(
            part.to_numpy(), full.iloc[: t + 1].to_numpy(), rtol=1e-12, atol=1e-15, equal_nan=True
        )
        # The future is really different: the test would catch a centred window.
        assert len(part) == t + 1


def test_features_schema_and_finite_after_warmup() -> None:
    bars = synthetic_bars("X", n_bars=3000, seed=3)
    feats = compute_features(bars)
    assert list(feats.columns) == FEATURE_COLUMNS
    assert feats.index.equals(bars.index)
    assert (feats.dtypes == "float64").all()
    assert feats.iloc[:WARMUP_BARS].isna().all().all()
    assert np.isfinite(feats.iloc[WARMUP_BARS:].to_numpy()).all()


def test_features_causal_on_synthetic() -> None:
    bars = synthetic_bars("X", n_bars=1500, seed=11, signal_strength=0.3)
    _assert_causal(bars, [WARMUP_BARS, 57, 300, 999, 1498])


def test_features_causal_on_real_file(market_dir) -> None:
    bars = read_bars(market_dir / "azn_l_1m.csv.gz").iloc[:2000]
    _assert_causal(bars, [WARMUP_BARS + 1, 250, 1234, 1999])
    assert np.isfinite(compute_features(bars).iloc[WARMUP_BARS:].to_numpy()).all()


def test_perturbing_the_future_does_not_change_the_past() -> None:
    bars = synthetic_bars("X", n_bars=600, seed=5)
    shocked = bars.copy()
    shocked.iloc[400:, :4] *= 1.5
    shocked.iloc[400:, 4] = 0.0
    a, b = compute_features(bars), compute_features(shocked)
    pd.testing.assert_frame_equal(a.iloc[:400], b.iloc[:400])
    assert not np.allclose(a.iloc[400:].to_numpy(), b.iloc[400:].to_numpy())


def test_zero_volume_and_flat_prices_stay_finite() -> None:
    bars = synthetic_bars("X", n_bars=300, seed=2)
    bars.loc[bars.index[100:180], "volume"] = 0.0
    bars.iloc[200:260, :4] = 50.0
    feats = compute_features(bars).iloc[WARMUP_BARS:]
    assert np.isfinite(feats.to_numpy()).all()
    assert feats["volume_ratio"].iloc[150 - WARMUP_BARS] == 1.0
    assert feats["rsi_14"].between(0, 1).all()


def test_scaler_fit_on_train_only_and_roundtrip() -> None:
    bars = synthetic_bars("X", n_bars=4000, seed=9)
    feats = compute_features(bars)
    parts = split_by_time(feats, 0.7, 0.15, 10)
    scaler = FeatureScaler(clip=5.0).fit(parts.train)
    train_z = scaler.transform(parts.train)
    assert train_z.dtype == np.float32
    valid = train_z[WARMUP_BARS:]
    np.testing.assert_allclose(valid.mean(axis=0), 0.0, atol=0.05)
    # statistics come from train only: fitting on everything gives other numbers
    other = FeatureScaler(clip=5.0).fit(feats)
    assert not np.allclose(other.mean_, scaler.mean_)
    test_z = scaler.transform(parts.test)
    assert np.abs(test_z).max() <= 5.0
    assert np.isfinite(scaler.transform(feats)).all()  # warm-up NaN -> 0
    restored = FeatureScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(restored.transform(parts.test), test_z)


def test_scaler_requires_fit() -> None:
    with pytest.raises(ValueError):
        FeatureScaler().transform(np.zeros((2, 3)))


def test_trend_strength_is_the_drifts_t_statistic_and_causal() -> None:
    """trend_strength: the sum of the last k one-bar returns / (their std x sqrt(k)), clipped,
    0 before bar k; a truncated series, and bar t alone from the running sums, give the same
    rows bit for bit."""
    rng = np.random.default_rng(3)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.001, 0.01, size=(300, 2)), axis=0))
    close[100:110, 1] = close[99, 1]  # a flat stretch: a 5-bar window of zero returns
    out = trend_strength(close, [5, 60])
    assert out.shape == (2, 300, 2) and out.dtype == np.float32
    assert not out[:, :5, 0].any() and not out[:, :60, 1].any()
    r = close[1:] / close[:-1] - 1.0
    for i, t, j, k in ((0, 200, 1, 60), (1, 250, 0, 5), (0, 60, 1, 60)):
        window = r[t - k : t, i]  # the k returns ending at bar t
        want = window.sum() / (window.std() * np.sqrt(k))
        assert out[i, t, j] == pytest.approx(np.clip(want, -TREND_CLIP, TREND_CLIP), rel=1e-5)
    assert out[1, 109, 0] == 0.0  # flat window: no drift to measure
    drift = np.zeros((300, 1))
    drift[:, 0] = np.exp(np.linspace(0.0, 0.1, 300))  # a straight line: clipped at +5
    assert trend_strength(drift, [20])[0, 100, 0] == TREND_CLIP
    sums = trend_sums(close)
    for cut in (61, 150, 299):
        np.testing.assert_array_equal(trend_strength(close[:cut], [5, 60]), out[:, :cut])
        np.testing.assert_array_equal(trend_rows(*sums, [5, 60], cut - 1), out[:, cut - 1])
