"""The numba kernels of the hierarchical env (envs.kernels) against its numpy path: the same
trajectories (observations and rewards exactly, portfolio figures to 1e-12) on configs that
bind every risk limit and the stop-loss, and pickling mid-episode with the kernels on."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from envs import HierarchicalTradingEnv, kernels
from envs.hierarchical_env import META
from tests.test_env_hierarchical import with_gaps

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed")

SYMS = ("AAA", "BBB", "CCC", "DDD")


def _market(n: int = 260, seed: int = 4, gaps: bool = False) -> dict[str, pd.DataFrame]:
    """Correlated random walks; `gaps`: some bars of each instrument forward-filled like align."""
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC", name="timestamp")
    common = rng.normal(0.0, 0.01, n)
    out = {}
    for k, sym in enumerate(SYMS):
        close = (30.0 + 7 * k) * np.exp(np.cumsum(0.7 * common + 0.7 * rng.normal(0, 0.01, n)))
        open_ = np.concatenate([[close[0]], close[:-1]]) * np.exp(rng.normal(0, 0.002, n))
        out[sym] = pd.DataFrame(
            {
                "open": open_,
                "high": np.maximum(open_, close) * 1.001,
                "low": np.minimum(open_, close) * 0.999,
                "close": close,
                "volume": rng.uniform(500, 1500, n),
            },
            index=index,
        )
    return with_gaps(out, seed) if gaps else out


def _play(env: HierarchicalTradingEnv, seed: int) -> tuple[list, dict]:
    rng = np.random.default_rng(seed)
    obs, infos = env.reset(seed=seed)
    records = [(obs, {}, infos)]
    step = 0
    while env.agents:
        acts = {}
        for a in env.agents:
            space = env.action_space(a)
            if a == META:
                acts[a] = rng.uniform(0, 1, space.shape).astype(np.float32)
            elif env.discrete:
                acts[a] = int(rng.integers(0, space.n))
            elif step % 7 == 3:
                acts[a] = np.array([np.nan], np.float32)  # NaN -> flat
            else:
                acts[a] = rng.uniform(-1.3, 1.3, 1).astype(np.float32)
        if step % 5 == 2:
            acts.pop(env.specialists[-1], None)  # a missing action keeps the last one
        obs, rew, _, _, infos = env.step(acts)
        records.append((obs, rew, infos))
        step += 1
    return records, env.episode_summary()


CONFIGS = [
    {"mode": "joint"},
    {
        "mode": "joint",
        "sectors": {"AAA": "x", "BBB": "x", "CCC": "y"},
        "max_sector_allocation": 0.3,
        "max_correlation_exposure": 0.4,
        "max_portfolio_var": 0.0005,
        "stop_loss_pct": 0.004,
    },
    {"mode": "meta", "meta_interval": 3, "action_type": "discrete", "allow_short": False},
    {"mode": "specialists", "reward": "sortino", "spread_bps": 3.0, "stop_loss_pct": 0.003},
    {"mode": "joint", "meta_interval": 2, "meta_obs_every_step": False, "reward": "drawdown"},
    # forward-filled bars, shorts paying borrow, stops on low / high and gap opens
    {"mode": "joint", "gaps": True, "stop_loss_pct": 0.004, "borrow_bps_per_year": 3e5},
    {"mode": "specialists", "gaps": True, "stop_loss_pct": 0.003, "borrow_bps_per_year": 1e5},
    # issue 14's options: executed specialist rewards, vol targeting, amortised costs
    {"mode": "joint", "gaps": True, "specialist_reward": "executed", "stop_loss_pct": 0.004,
     "borrow_bps_per_year": 3e5, "vol_target": 5.0, "cost_amortization_bars": 6},
    {"mode": "specialists", "vol_target": 4.0, "vol_target_max_leverage": 0.5,
     "cost_amortization_bars": 4, "max_sector_allocation": 0.3, "stop_loss_pct": 0.003,
     "sectors": {"AAA": "x", "BBB": "x"}, "max_correlation_exposure": 0.4,
     "max_portfolio_var": 0.0005},
    {"mode": "meta", "specialist_reward": "executed", "reward": "sortino", "meta_interval": 2},
    # the no-trade band, with gaps and stops, and under vol targeting
    {"mode": "joint", "gaps": True, "rebalance_band": 0.3, "stop_loss_pct": 0.004},
    {"mode": "specialists", "rebalance_band": 0.5, "vol_target": 4.0,
     "specialist_reward": "executed"},
]  # fmt: skip


@pytest.mark.parametrize("cfg", CONFIGS)
def test_kernel_path_matches_numpy_path(cfg):
    cfg = dict(cfg)
    market = _market(gaps=cfg.pop("gaps", False))
    kw = {"window_size": 5, "risk_window": 12, "episode_length": 120, **cfg}
    fast = HierarchicalTradingEnv(bars=market, kernels=True, **kw)
    slow = HierarchicalTradingEnv(bars=market, kernels=False, **kw)
    assert fast.use_kernels and not slow.use_kernels
    rec_f, sum_f = _play(fast, 3)
    rec_s, sum_s = _play(slow, 3)
    assert len(rec_f) == len(rec_s) == 121
    for (of, rf, inf_f), (os_, rs, inf_s) in zip(rec_f, rec_s, strict=True):
        assert list(of) == list(os_) and list(rf) == list(rs)
        for a in of:
            assert of[a].dtype == os_[a].dtype == np.float32
            np.testing.assert_array_equal(of[a], os_[a])
        for a in rf:  # specialist rewards exactly; the meta's log return to 1e-12 of equity
            assert rf[a] == pytest.approx(rs[a], rel=1e-9, abs=1e-12)
        for a in inf_f:
            assert list(inf_f[a]) == list(inf_s[a])
            for key, val in inf_f[a].items():
                assert type(val) is type(inf_s[a][key])
                assert val == pytest.approx(inf_s[a][key], rel=1e-12, abs=1e-15)
    for key in ("equity", "weights", "exposures", "costs", "var_estimates"):
        np.testing.assert_allclose(sum_f[key], sum_s[key], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(sum_f["var_breaches"], sum_s["var_breaches"])
    assert sum_f["var_breaches"].dtype == bool
    totals_f, totals_s = sum_f["totals"], sum_s["totals"]
    money = ("costs", "borrow_costs")  # sums of dot products: to the last bits
    assert {k: v for k, v in totals_f.items() if k not in money} == {
        k: v for k, v in totals_s.items() if k not in money
    }
    for key in money:
        assert totals_f[key] == pytest.approx(totals_s[key], rel=1e-12)
    np.testing.assert_array_equal(fast.target_exposures, slow.target_exposures)
    if cfg.get("borrow_bps_per_year"):  # borrow was paid, stops fired, filled bars were met
        assert totals_f["borrow_costs"] > 0 and totals_f["stop_losses"] > 0
        assert not fast._real.all()
    if cfg.get("max_sector_allocation"):  # the limits really bound on this config
        assert totals_f["sector_scaledowns"] > 0 and totals_f["var_scaledowns"] > 0
        assert totals_f["correlation_scaledowns"] > 0 and totals_f["stop_losses"] > 0


def test_kernel_env_pickles_mid_episode_and_continues_identically():
    env = HierarchicalTradingEnv(bars=_market(), window_size=5, risk_window=12, kernels=True)
    env.reset(seed=1)
    for a in env.possible_agents:
        env.action_space(a).seed(2)
    for _ in range(10):
        env.step({a: env.action_space(a).sample() for a in env.agents})
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(10):
        acts = {a: env.action_space(a).sample() for a in env.agents}
        out1, out2 = env.step(acts), clone.step(acts)
        assert out1[1] == out2[1]
        for a in out1[0]:
            np.testing.assert_array_equal(out1[0][a], out2[0][a])
    np.testing.assert_array_equal(
        env.episode_summary()["equity"], clone.episode_summary()["equity"]
    )
