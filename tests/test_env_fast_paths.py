"""The envs' optimised step paths against straightforward recomputations: observation windows
up to the very last bar, and the clipping / NaN handling of hierarchical actions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from envs import HierarchicalTradingEnv, TradingEnv
from envs.common import prepare_instrument


def _bars(n: int = 160, seed: int = 3, symbols=("AAA", "BBB")) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC", name="timestamp")
    out = {}
    for k, sym in enumerate(symbols):
        close = (40.0 + 5 * k) * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
        open_ = np.concatenate([[close[0]], close[:-1]])
        out[sym] = pd.DataFrame(
            {
                "open": open_,
                "high": np.maximum(open_, close) * 1.001,
                "low": np.minimum(open_, close) * 0.999,
                "close": close,
                "volume": rng.uniform(100, 200, n),
            },
            index=index,
        )
    return out


def test_single_env_observation_is_the_feature_window_up_to_the_last_bar():
    bars = _bars()["AAA"]
    window = 6
    env = TradingEnv(bars=bars, window_size=window, eval_mode=True, action_type="discrete")
    feats = prepare_instrument(bars).features
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    bar, steps, done = env.first_bar, 0, False
    while not done:
        expected = feats[bar - window + 1 : bar + 1].reshape(-1)
        np.testing.assert_array_equal(obs[:-3], expected)
        assert np.isfinite(obs[-3:]).all()
        obs, _, term, trunc, info = env.step(int(rng.integers(0, 3)))
        bar, steps, done = info["bar"], steps + 1, term or trunc
    assert bar == len(bars) - 1  # the final observation is the last bar's window
    np.testing.assert_array_equal(obs[:-3], feats[-window:].reshape(-1))
    assert steps == len(bars) - 1 - env.first_bar


def test_hierarchical_proposals_are_clipped_like_np_clip_and_nan_is_flat():
    market = _bars()
    for allow_short in (True, False):
        env = HierarchicalTradingEnv(
            bars=market, mode="joint", window_size=5, risk_window=10, allow_short=allow_short
        )
        obs, _ = env.reset(seed=0)
        low = -1.0 if allow_short else 0.0
        cases = [(-0.0, 0.7), (np.nan, -3.0), (2.5, -0.4), (0.0, np.inf), (-np.inf, 0.25)]
        for a, b in cases:
            acts = {
                env.specialists[0]: np.array([a], np.float32),
                env.specialists[1]: np.array([b], np.float32),
                "meta": np.array([0.2, 0.3, 0.5], np.float32),
            }
            obs, *_ = env.step(acts)
            expected = np.clip(np.array([a, b], np.float32).astype(np.float64), low, 1.0)
            expected = np.where(np.isnan(expected), 0.0, expected)
            got = np.array([obs[s][-4] for s in env.specialists], dtype=np.float64)
            np.testing.assert_array_equal(got, expected)
            assert np.signbit(got).tolist() == np.signbit(expected).tolist()
            np.testing.assert_array_equal(obs["meta"][-2:], expected.astype(np.float32))
