"""Supervised-signal columns (`sig_*`) become extra observation features in both envs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from envs import HierarchicalTradingEnv, TradingEnv
from envs.registration import bars_from_config, make_env_config
from rl_trading.config import AppConfig
from rl_trading.data import synthetic_market
from rl_trading.data.features import FEATURE_COLUMNS


def _with_signal(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["sig_analyst_1m"] = rng.uniform(0.0, 1.0, len(frame))
    return out


def _bars() -> dict[str, pd.DataFrame]:
    return synthetic_market(["AAA", "BBB"], n_bars=400, seed=3)


def test_single_env_appends_centred_signal_to_each_window_row():
    frame = _with_signal(_bars()["AAA"], seed=1)
    env = TradingEnv(bars=frame, window_size=5, random_start=False)
    layout = env.obs_layout()
    assert layout["n_features"] == len(FEATURE_COLUMNS) + 1
    obs, _ = env.reset(seed=0)
    window = obs[: layout["window_size"] * layout["n_features"]].reshape(5, -1)
    # the window ends at the current bar (info["bar"]): its last column is the signal - 0.5
    _, info = env.reset(seed=0)
    t = info["bar"]
    sig = frame["sig_analyst_1m"].to_numpy(np.float32) - np.float32(0.5)
    np.testing.assert_array_equal(window[:, -1], sig[t - 4 : t + 1])


def test_signal_changes_observation_but_not_prices():
    plain = _bars()["AAA"]
    a = TradingEnv(bars=plain, window_size=5, random_start=False)
    b = TradingEnv(bars=_with_signal(plain, seed=2), window_size=5, random_start=False)
    assert b.observation_space.shape[0] == a.observation_space.shape[0] + 5
    a.reset(seed=0), b.reset(seed=0)
    for _ in range(20):
        _, ra, *_ = a.step(np.array([0.5], dtype=np.float32))
        _, rb, *_ = b.step(np.array([0.5], dtype=np.float32))
        assert ra == rb  # same prices, same execution: same reward


def test_hierarchical_env_and_env_config_carry_signals():
    bars = {s: _with_signal(f, seed=i) for i, (s, f) in enumerate(_bars().items())}
    cfg = AppConfig()
    env_config = make_env_config(cfg, bars, mode="joint")
    restored = bars_from_config(env_config)
    for sym in bars:
        assert "sig_analyst_1m" in restored[sym].columns
        np.testing.assert_allclose(restored[sym]["sig_analyst_1m"], bars[sym]["sig_analyst_1m"])
    with_sig = HierarchicalTradingEnv(cfg, bars=bars, mode="joint")
    without = HierarchicalTradingEnv(cfg, bars=_bars(), mode="joint")
    agent = "specialist_AAA"
    extra = with_sig.observation_space(agent).shape[0] - without.observation_space(agent).shape[0]
    assert extra == cfg.train.window_size
