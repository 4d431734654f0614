"""HierarchicalTradingEnv: PettingZoo API grid, seeds, P&L reconciliation, costs, risk limits,
no look-ahead, modes, meta interval, bad config and the RLlib registration."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from pettingzoo.test import parallel_api_test, parallel_seed_test

from envs import HierarchicalTradingEnv, env, parallel_env
from envs.hierarchical_env import META
from rl_trading.errors import ConfigError
from tests.test_env_single import with_gaps as gapped

SMALL = {"window_size": 5, "risk_window": 10, "episode_length": 40}


def make_market(
    symbols=("AAA", "BBB", "CCC"), n: int = 200, seed: int = 0, vol: float = 0.01, flat=False
) -> dict[str, pd.DataFrame]:
    """Tiny seeded correlated random walks on one index (constant prices when `flat`)."""
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC", name="timestamp")
    common = rng.normal(0.0, vol, n)
    out = {}
    for k, sym in enumerate(symbols):
        if flat:
            close = np.full(n, 50.0 + 10 * k)
            open_ = close.copy()
        else:
            ret = 0.6 * common + 0.8 * rng.normal(0.0, vol, n)
            close = (50.0 + 10 * k) * np.exp(np.cumsum(ret))
            open_ = np.concatenate([[close[0]], close[:-1]]) * np.exp(rng.normal(0, vol / 5, n))
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
    return out


def play(env: HierarchicalTradingEnv, policy, seed: int = 0):
    """Run one episode; `policy(agent, step)` gives actions. Returns per-step records."""
    obs, infos = env.reset(seed=seed)
    records = [(obs, {}, infos)]
    step = 0
    while env.agents:
        actions = {a: policy(a, step) for a in obs}
        obs, rew, term, trunc, infos = env.step(actions)
        records.append((obs, rew, infos))
        step += 1
    return records


def random_policy(env: HierarchicalTradingEnv, seed: int = 0):
    """Seeded random actions from the agents' own spaces."""
    for i, a in enumerate(env.possible_agents):
        env.action_space(a).seed(seed + i)
    return lambda agent, _step: env.action_space(agent).sample()


GRID = [
    (mode, n, k, act)
    for mode in ("joint", "meta", "specialists")
    for n in (1, 3)
    for k in (1, 3)
    for act in ("continuous", "discrete")
    if not (mode == "specialists" and k == 3) and not (act == "discrete" and n == 1)
]


@pytest.mark.parametrize(("mode", "n", "k", "action_type"), GRID)
def test_parallel_api_and_seed_grid(mode, n, k, action_type):
    syms = ["AAA", "BBB", "CCC"][:n]
    bars = make_market(syms)
    kw = dict(SMALL, mode=mode, meta_interval=k, action_type=action_type)
    e = HierarchicalTradingEnv(bars=bars, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any "live agent not given ..." warning fails the test
        parallel_api_test(e, num_cycles=60)
    parallel_seed_test(lambda: HierarchicalTradingEnv(bars=bars, **kw), num_cycles=30)
    agents = set(e.possible_agents)
    assert (META in agents) == (mode != "specialists")
    assert {a for a in agents if a != META} == {f"specialist_{s}" for s in syms}
    assert e.metadata["name"] == "rl_trading_hierarchical_v0"


def test_spaces_and_observation_contents():
    bars = make_market()
    e = HierarchicalTradingEnv(bars=bars, **SMALL)
    n, f = 3, e.obs_layout()["n_features"]
    assert e.observation_space("specialist_AAA").shape == (5 * f + 5,)
    assert e.observation_space(META).shape == ((n + 1) + n + 2 + n + 3 + n,)
    assert e.action_space(META).shape == (n + 1,)
    assert e.action_space("specialist_BBB").shape == (1,)
    obs, _ = e.reset(seed=0)
    meta = obs[META]
    np.testing.assert_allclose(meta[: n + 1], [0, 0, 0, 1])  # all cash before the meta acts
    # meta weights are clipped and normalised: [2, 1, 1, 0] -> [0.5, 0.5... ] after clip to 1
    obs, *_ = e.step({META: np.array([2.0, 1.0, 0.0, 0.0]), **{a: [1.0] for a in e.specialists}})
    np.testing.assert_allclose(obs[META][: n + 1], [0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(obs[META][-n:], [1.0, 1.0, 1.0])  # proposals
    assert obs["specialist_AAA"][-1] == pytest.approx(0.5)  # its meta weight
    assert obs["specialist_CCC"][-5] == 0.0  # zero weight -> no exposure


def with_gaps(bars: dict[str, pd.DataFrame], seed: int) -> dict[str, pd.DataFrame]:
    """About 15% of each instrument's bars forward-filled the way `align` does it."""
    return {sym: gapped(frame, seed + k) for k, (sym, frame) in enumerate(bars.items())}


RECONCILE = [(1, False), (3, False), (1, True), (3, True)]


@pytest.mark.parametrize(("k", "realism"), RECONCILE)
def test_meta_log_return_rewards_reconcile_portfolio_pnl(k, realism):
    bars = make_market(n=300, seed=1, vol=0.02)
    extra = {}
    if realism:  # forward-filled bars and the borrow cost of shorts
        bars, extra = with_gaps(bars, seed=5), {"borrow_bps_per_year": 2e5}
    e = HierarchicalTradingEnv(
        bars=bars,
        window_size=5,
        risk_window=10,
        episode_length=150,
        meta_interval=k,
        risk_penalty_weight=0.0,
        diversification_bonus_weight=0.0,
        stop_loss_pct=0.02,
        max_position_size=0.8,
        max_correlation_exposure=5.0,
        spread_bps=2.0,
        **extra,
    )
    recs = play(e, random_policy(e, 3))
    meta_rewards = np.array([r.get(META, 0.0) for _, r, _ in recs[1:]])
    summary = e.episode_summary()
    eq = summary["equity"]
    assert len(eq) == 151
    assert summary["total_costs"] > 0 and summary["totals"]["stop_losses"] > 0
    assert abs(meta_rewards.sum() - math.log(eq[-1] / eq[0])) < 1e-9
    np.testing.assert_allclose(summary["costs"].sum(), summary["total_costs"], rtol=1e-12)
    assert summary["metrics"]["final_equity"] == pytest.approx(eq[-1])
    assert recs[-1][2][META]["equity"] == pytest.approx(eq[-1])
    if realism:
        assert summary["borrow_costs"] > 0
        # no position changed on an instrument's forward-filled bar
        units_moved = np.diff(summary["exposures"] * eq[:, None], axis=0)  # marked values
        filled = np.stack([f["filled"].to_numpy() for f in bars.values()], axis=1)
        bars_idx = np.arange(e._start + 1, e._start + len(eq))
        held = np.abs(units_moved[filled[bars_idx]]) < 1e-9  # flat repeated prices: no change
        assert held.all() and filled[bars_idx].sum() > 10


def test_fills_stops_and_borrow():
    """Filled bars: the order waits and fills at the next real open; a stop fires on the low at
    the level, or at a gap open below it; a short pays borrow every bar (flat prices: exactly)."""
    bars = make_market(("AAA", "BBB"), n=200, flat=True)
    for f in bars.values():
        f["filled"] = False
        f["low"] = f["high"] = f["close"]
    a, col = bars["AAA"], bars["AAA"].columns.get_loc
    a.iloc[100:103, col("filled")] = True  # AAA's bars 100-102 forward-filled
    a.iloc[103:, [col("open"), col("high"), col("low"), col("close")]] = 52.0
    a.iloc[140, col("low")] = 49.0  # touches AAA's stop level 52 x 0.95 = 49.4
    b, colb = bars["BBB"], bars["BBB"].columns.get_loc
    b.iloc[120:, [colb("open"), colb("high"), colb("low"), colb("close")]] = 66.0  # gap up
    kw = dict(
        mode="specialists",
        window_size=5,
        risk_window=10,
        eval_mode=True,
        stop_loss_pct=0.05,
        transaction_cost=0.0,
        slippage_bps=0.0,
        max_correlation_exposure=10.0,
        max_portfolio_var=10.0,
        max_position_size=0.5,
        borrow_bps_per_year=1e4,
        rebalance_band=0.05,
    )  # fmt: skip  (held weights drift with P&L: within it)
    e = HierarchicalTradingEnv(bars=bars, **kw)
    e.reset()
    acts = {"specialist_AAA": np.array([0.0]), "specialist_BBB": np.array([-1.0])}
    infos = []
    while e.agents:
        if e._t == 99:
            acts["specialist_AAA"] = np.array([1.0])
        if e._t == 120:  # after BBB's stop: stay flat (not re-enter)
            acts["specialist_BBB"] = np.array([0.0])
        infos.append(e.step(acts)[4]["specialist_AAA"])
    s = e.episode_summary()
    x = s["exposures"]
    at = {i["bar"]: row for i, row in zip(infos, range(1, len(x)), strict=True)}
    assert x[at[100], 0] == x[at[102], 0] == 0.0 and x[at[103], 0] > 0  # waited for bar 103
    counts = [0] + [i["stop_losses"] for i in infos]
    stops = [i["bar"] for j, i in enumerate(infos) if counts[j + 1] > counts[j]]
    assert stops == [120, 140]  # BBB's gap at 120, AAA's low at 140
    # BBB short 0.25 x 100,000 / 60 units from the first bar: stopped at the 66 open (not 63)
    u_b = -0.25 * 100_000 / 60.0
    borrow_bar = 0.25 * 100_000 * 1e4 * 1e-4 / e.periods_per_year
    # held short over bars first_bar + 1 .. 120, charged at each open (66 / 60 on bar 120)
    borrow = (120 - e.first_bar - 1 + 66.0 / 60.0) * borrow_bar
    assert s["borrow_costs"] == pytest.approx(borrow, rel=1e-9)
    eq_120 = s["equity"][at[120]]
    assert eq_120 == pytest.approx(100_000 + u_b * (66.0 - 60.0) - borrow, rel=1e-12)
    u_a = 0.25 * s["equity"][at[102]] / 52.0  # AAA long from bar 103's open at 52
    loss_a = u_a * (52.0 * 0.95 - 52.0)  # stopped at the level, not at the 49 low
    assert s["equity"][-1] == pytest.approx(eq_120 + loss_a, rel=1e-12)


@pytest.mark.parametrize("borrow", [0.0, 3e5])
def test_flat_prices_costs_are_exactly_the_equity_lost(borrow):
    bars = make_market(flat=True)
    e = HierarchicalTradingEnv(
        bars=bars, **SMALL, transaction_cost=0.002, slippage_bps=1.5, spread_bps=1.0,
        borrow_bps_per_year=borrow,
    )  # fmt: skip
    play(e, random_policy(e, 1))
    s = e.episode_summary()
    assert s["total_costs"] > 0 and (s["borrow_costs"] > 0) == (borrow > 0)
    lost = s["total_costs"] + s["borrow_costs"]
    assert e.capital - s["equity"][-1] == pytest.approx(lost, rel=1e-9)
    assert np.all(np.diff(s["equity"]) <= 1e-9)  # never gains on flat prices
    idle = play(e, lambda a, _s: np.zeros(4) if a == META else np.zeros(1))
    assert idle[-1][2]["specialist_AAA"]["equity"] == e.capital


def test_determinism_pickling_and_aec():
    bars = make_market(seed=2)
    e1 = HierarchicalTradingEnv(bars=bars, **SMALL)
    e2 = HierarchicalTradingEnv(bars=bars, **SMALL)
    r1 = play(e1, random_policy(e1, 5), seed=11)
    r2 = play(e2, random_policy(e2, 5), seed=11)
    assert len(r1) == len(r2)
    for (o1, w1, _), (o2, w2, _) in zip(r1, r2, strict=True):
        assert o1.keys() == o2.keys() and w1 == w2
        for a in o1:
            np.testing.assert_array_equal(o1[a], o2[a])
    e1.reset(seed=4)
    e1.step({a: e1.action_space(a).sample() for a in e1.agents})
    clone = pickle.loads(pickle.dumps(e1))
    acts = {a: e1.action_space(a).sample() for a in e1.agents}
    out1, out2 = e1.step(acts), clone.step(acts)
    assert out1[1] == out2[1]
    np.testing.assert_array_equal(out1[0][META], out2[0][META])
    aec = env(bars=bars, **SMALL)
    aec.reset(seed=0)
    for agent in aec.agent_iter(max_iter=20):
        _, _, term, trunc, _ = aec.last()
        aec.step(None if term or trunc else aec.action_space(agent).sample())
    assert isinstance(parallel_env(bars=bars, **SMALL), HierarchicalTradingEnv)


def test_no_look_ahead_when_future_bars_are_cut():
    bars = make_market(n=260, seed=3)
    cut = 180
    full = HierarchicalTradingEnv(bars=bars, eval_mode=True, window_size=5, risk_window=10)
    short_bars = {s: f.iloc[:cut] for s, f in bars.items()}
    short = HierarchicalTradingEnv(
        bars=short_bars, eval_mode=True, window_size=5, risk_window=10, scalers=full.scalers
    )

    def policy(agent, step):
        if agent == META:
            return np.array([0.5, (step % 5) / 5, 0.3, 0.1])
        return np.array([math.sin(step + len(agent))])

    rf, rs = play(full, policy), play(short, policy)
    n = len(rs)
    for (of, wf, _), (os_, ws, _) in zip(rf[: n - 1], rs[: n - 1], strict=True):
        assert wf == ws
        for a in of:
            np.testing.assert_array_equal(of[a], os_[a])
    np.testing.assert_array_equal(
        full.episode_summary()["equity"][: n - 1], short.episode_summary()["equity"][: n - 1]
    )


def test_specialists_mode_equal_weights_and_specialist_rewards():
    bars = make_market()
    e = HierarchicalTradingEnv(bars=bars, mode="specialists", **SMALL)
    obs, _ = e.reset(seed=0)
    assert META not in obs and META not in e.possible_agents
    recs = play(e, lambda a, s: np.array([1.0 if s % 7 < 4 else -1.0]))
    w = e.episode_summary()["weights"]
    np.testing.assert_allclose(w[:, :3], 1 / 3)
    rewards = np.array([[r[a] for a in e.specialists] for _, r, _ in recs[1:]])
    assert np.isfinite(rewards).all() and np.abs(rewards).max() > 0
    # same proposals on all instruments but different prices: different rewards
    assert not np.allclose(rewards[:, 0], rewards[:, 1])


def test_meta_interval_holds_weights_and_accumulates_reward():
    bars = make_market(n=300)
    kw = dict(SMALL, meta_interval=3, risk_penalty_weight=0.0, diversification_bonus_weight=0.0)
    e = HierarchicalTradingEnv(bars=bars, meta_obs_every_step=False, **kw)
    obs, _ = e.reset(seed=0)
    steps, seen, weights = 0, [], []
    rng = np.random.default_rng(0)
    while e.agents:
        acts = {a: rng.uniform(0, 1, 4) if a == META else [1.0] for a in obs}
        obs, rew, *_ = e.step(acts)
        steps += 1
        seen.append(META in obs)
        weights.append(e.episode_summary()["weights"][-1])
        assert (META in rew) == (META in obs)
    assert seen == [s % 3 == 0 or s == steps for s in range(1, steps + 1)]
    w = np.array(weights)
    for s in range(1, steps):
        if s % 3 != 0:  # meta did not act on step index s
            np.testing.assert_array_equal(w[s], w[s - 1])
    # every-step observations (PettingZoo default): non-decision rewards are zero
    e2 = HierarchicalTradingEnv(bars=bars, **kw)
    recs = play(e2, random_policy(e2, 2))
    meta_r = [r[META] for _, r, _ in recs[1:]]
    assert all(v == 0.0 for i, v in enumerate(meta_r, 1) if i % 3 and i != len(meta_r))
    eq = e2.episode_summary()["equity"]
    assert abs(sum(meta_r) - math.log(eq[-1] / eq[0])) < 1e-9


def test_risk_limits_scale_orders_down_and_are_counted():
    bars = make_market(n=250, vol=0.02)
    all_in = {META: np.array([1.0, 1.0, 1.0, 0.0])}
    longs = {f"specialist_{s}": np.array([1.0]) for s in ("AAA", "BBB", "CCC")}

    def policy(agent, _s):
        return {**all_in, **longs}[agent]

    # VaR limit
    e = HierarchicalTradingEnv(bars=bars, **SMALL, max_position_size=1.0, max_portfolio_var=0.005)
    play(e, policy)
    s = e.episode_summary()
    assert s["totals"]["var_scaledowns"] > 0
    assert s["var_estimates"].max() <= 0.005 + 1e-12
    assert 0.0 <= s["var_compliance"] <= 1.0
    free = HierarchicalTradingEnv(bars=bars, **SMALL, max_position_size=1.0, max_portfolio_var=1.0)
    play(free, policy)
    assert free.episode_summary()["totals"]["var_scaledowns"] == 0
    assert free.episode_summary()["var_estimates"].max() > 0.005
    # sector limit: two of three in one sector, capped at 0.4 of deployable capital
    sect = HierarchicalTradingEnv(
        bars=bars,
        **SMALL,
        sectors={"AAA": "x", "BBB": "x", "CCC": "y"},
        max_sector_allocation=0.4,
        max_correlation_exposure=10.0,
    )
    sect.reset(seed=0)
    sect.step({**all_in, **longs})
    alloc = np.abs(sect.target_exposures) / sect.max_position
    assert alloc[:2].sum() == pytest.approx(0.4)
    assert alloc[2] == pytest.approx(1 / 3)
    # correlation limit: two identical instruments, same direction
    twin = {"AAA": bars["AAA"], "BBB": bars["AAA"].copy()}
    corr = HierarchicalTradingEnv(bars=twin, **SMALL, max_correlation_exposure=0.5)
    corr.reset(seed=0)
    _, _, _, _, infos = corr.step(
        {META: np.array([1.0, 1.0, 0.0]), "specialist_AAA": [1.0], "specialist_BBB": [1.0]}
    )
    assert infos[META]["correlation_scaledowns"] == 2
    alloc = np.abs(corr.target_exposures) / corr.max_position
    np.testing.assert_allclose(alloc, [0.25, 0.25])
    # opposite directions hedge each other: not limited
    corr.reset(seed=0)
    _, _, _, _, infos = corr.step(
        {META: np.array([1.0, 1.0, 0.0]), "specialist_AAA": [1.0], "specialist_BBB": [-1.0]}
    )
    assert infos[META]["correlation_scaledowns"] == 0


def test_stop_loss_closes_the_position():
    bars = make_market(("AAA", "BBB"), n=200, flat=True)
    for col in ("close", "low"):
        bars["AAA"].iloc[120:, bars["AAA"].columns.get_loc(col)] = 45.0
    bars["AAA"].iloc[121:, bars["AAA"].columns.get_loc("open")] = 45.0
    e = HierarchicalTradingEnv(
        bars=bars, mode="specialists", window_size=5, risk_window=10, eval_mode=True,
        stop_loss_pct=0.05, max_correlation_exposure=10.0,
    )  # fmt: skip
    recs = play(e, lambda a, s: np.array([1.0]))
    infos = [i["specialist_AAA"] for _, _, i in recs[1:]]
    first = next(i for i in infos if i["stop_losses"] > 0)
    assert first["bar"] == 120
    assert e.episode_summary()["exposures"][120 - e.first_bar, 0] == 0.0


def test_bad_configuration_raises_clear_errors():
    bars = make_market()
    with pytest.raises(ConfigError, match="at least one"):
        HierarchicalTradingEnv(bars={})
    with pytest.raises(ConfigError, match="mode"):
        HierarchicalTradingEnv(bars=bars, mode="chaos")
    with pytest.raises(ConfigError):
        HierarchicalTradingEnv(bars=bars, reward="alpha_magic")
    with pytest.raises(ConfigError, match="bars"):
        HierarchicalTradingEnv(bars=bars, window_size=500)
    with pytest.raises(ConfigError, match="aligned"):
        HierarchicalTradingEnv(bars={"A": bars["AAA"], "B": bars["BBB"].iloc[1:]})
    broken = {s: f.copy() for s, f in bars.items()}
    broken["BBB"].iloc[60, 0] = np.nan
    with pytest.raises(ValueError, match="BBB.*NaN"):
        HierarchicalTradingEnv(bars=broken)


def test_registration_env_config_roundtrip_and_rllib_check():
    from ray.rllib.utils.pre_checks.env import check_multiagent_environments

    from envs.registration import (
        HIERARCHICAL_ENV_NAME,
        SINGLE_ENV_NAME,
        env_creator,
        make_env_config,
        register_envs,
        single_env_creator,
    )
    from rl_trading.config import AppConfig

    cfg = AppConfig()
    cfg.train.window_size = 5
    cfg.env.risk_window = 10
    cfg.env.meta_interval = 2
    bars = make_market()
    scalers = HierarchicalTradingEnv(cfg, bars=bars).scalers
    ec = pickle.loads(pickle.dumps(make_env_config(cfg, bars, "joint", scalers=scalers)))
    rl_env = env_creator(ec)
    check_multiagent_environments(rl_env)
    inner = rl_env.par_env
    assert inner.meta_interval == 2 and not inner.meta_obs_every_step
    for sym in bars:
        pd.testing.assert_frame_equal(
            inner_bars(ec)[sym], bars[sym], check_freq=False, check_index_type=False
        )
        np.testing.assert_array_equal(inner.scalers[sym].mean_, scalers[sym].mean_)
    spec = env_creator(make_env_config(cfg, bars, "specialists"))
    assert META not in spec.par_env.possible_agents
    single = single_env_creator(make_env_config(cfg, bars["BBB"]))
    obs, _ = single.reset(seed=0)
    assert obs.shape == single.observation_space.shape
    assert register_envs() == (HIERARCHICAL_ENV_NAME, SINGLE_ENV_NAME)
    assert register_envs() == (HIERARCHICAL_ENV_NAME, SINGLE_ENV_NAME)  # idempotent


def test_env_config_carries_the_forward_fill_marks():
    """align's `filled` column survives make_env_config (pickled) into the env runner's env."""
    from envs.registration import bars_from_config, make_env_config, make_hierarchical_env
    from rl_trading.config import AppConfig

    cfg = AppConfig()
    cfg.train.window_size = 5
    cfg.env.risk_window = 10
    bars = with_gaps(make_market(), seed=1)
    bars["CCC"] = bars["CCC"].drop(columns="filled")  # no marks: every bar real
    ec = pickle.loads(pickle.dumps(make_env_config(cfg, bars, "joint")))
    back = bars_from_config(ec)
    for sym in ("AAA", "BBB"):
        assert back[sym]["filled"].dtype == bool
        np.testing.assert_array_equal(back[sym]["filled"], bars[sym]["filled"])
    assert "filled" not in back["CCC"].columns
    env = make_hierarchical_env(ec)
    expected = np.stack([~bars[s]["filled"].to_numpy() for s in ("AAA", "BBB")], axis=1)
    np.testing.assert_array_equal(env._real[:, :2], expected)
    assert env._real[:, 2].all() and not env._real.all()


def inner_bars(env_config):
    from envs.registration import bars_from_config

    return bars_from_config(env_config)


@pytest.mark.parametrize("kind", ["drawdown", "differential_sharpe", "sortino"])
def test_meta_reward_state_starts_fresh_every_episode(kind):
    """Stateful reward terms (peak, EMAs) belong to one episode: replaying the same episode
    after another one gives exactly the same rewards as on a fresh env."""
    bars = make_market(n=200, seed=5)
    kw = dict(SMALL, mode="joint", reward=kind, random_start=False)

    def rewards(env: HierarchicalTradingEnv) -> list[float]:
        pol = random_policy(env, seed=9)
        return [r["meta"] for _, r, _ in play(env, pol, seed=1)[1:] if "meta" in r]

    fresh = rewards(HierarchicalTradingEnv(bars=bars, **kw))
    reused = HierarchicalTradingEnv(bars=bars, **kw)
    rewards(reused)  # a first episode leaves a peak and EMAs behind
    assert rewards(reused) == fresh
