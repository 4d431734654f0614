"""Issue 14's env options (default off): specialist rewards on the executed position in risk
units, volatility-targeted sizing, and trading costs amortised in the rewards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs import HierarchicalTradingEnv, TradingEnv
from envs.hierarchical_env import META
from rl_trading.data.features import WARMUP_BARS, trend_strength
from rl_trading.errors import ConfigError
from tests.test_env_hierarchical import make_market, play, random_policy, with_gaps
from tests.test_env_single import make_bars, run

BASE = {"window_size": 5, "risk_window": 10, "episode_length": 120}


def _steps(env: HierarchicalTradingEnv, seed: int = 3) -> list[tuple[float, float, int, dict]]:
    """Random episode; per step (equity before, equity after, bar before, rewards)."""
    policy = random_policy(env, seed)
    obs, infos = env.reset(seed=seed)
    out, step = [], 0
    while env.agents:
        eq0, t = env._equity, env._t
        obs, rew, _, _, infos = env.step({a: policy(a, step) for a in obs})
        out.append((eq0, env._equity, t, rew))
        step += 1
    return out


@pytest.mark.parametrize("mode", ["joint", "specialists"])
def test_executed_specialist_rewards_are_their_pnl_in_risk_units(mode):
    """Each specialist's reward x (equity x full size x per-bar vol) is its instrument's P&L
    after costs and borrow, so the specialists' P&L adds up to the portfolio's, gaps and stops
    included."""
    bars = with_gaps(make_market(n=260, seed=1, vol=0.02), seed=4)
    e = HierarchicalTradingEnv(
        bars=bars, mode=mode, specialist_reward="executed", stop_loss_pct=0.01,
        borrow_bps_per_year=1e5, spread_bps=2.0, max_position_size=0.5, **BASE,
    )  # fmt: skip
    steps = _steps(e)
    assert e.episode_summary()["totals"]["stop_losses"] > 0
    for eq0, eq1, t, rew in steps:
        r = np.array([rew[a] for a in e.specialists])
        pnl = r * eq0 * e.max_position * e._vol_floor[t]
        assert pnl.sum() == pytest.approx(eq1 - eq0, rel=1e-9, abs=1e-7)
    # an instrument the meta gives no capital earns its specialist nothing
    e = HierarchicalTradingEnv(bars=bars, specialist_reward="executed", **BASE)
    recs = play(e, lambda a, s: np.array([1.0, 0.0, 0.0, 0.0]) if a == META else np.ones(1))
    later = [r for _, r, _ in recs[3:]]
    assert all(r["specialist_BBB"] == 0.0 for r in later)
    assert any(r["specialist_AAA"] != 0.0 for r in later)
    proposal = HierarchicalTradingEnv(bars=bars, **BASE)
    recs = play(proposal, lambda a, s: np.array([1.0, 0, 0, 0]) if a == META else np.ones(1))
    assert any(r["specialist_BBB"] != 0.0 for _, r, _ in recs[3:])  # the default differs


def test_vol_target_sizes_positions_to_the_target_risk_with_a_cap():
    bars = make_market(("AAA", "BBB"), n=200, seed=2, vol=0.01)
    kw = dict(BASE, mode="specialists", max_correlation_exposure=10.0, max_portfolio_var=10.0)
    e = HierarchicalTradingEnv(bars=bars, vol_target=0.2, vol_target_max_leverage=50.0, **kw)
    e.reset(seed=0)
    t = e._t
    obs, *_ = e.step({"specialist_AAA": np.array([1.0]), "specialist_BBB": np.array([-0.5])})
    ann = e.risk.vol[t] * math.sqrt(e.periods_per_year)
    expected = np.array([0.5 * 1.0, 0.5 * -0.5]) * 0.2 / ann  # weights 1/2 x proposal
    np.testing.assert_allclose(e.target_exposures, expected, rtol=1e-12)
    # the exposure observation is in units of the full (vol-targeted) size at that bar
    expo = e._k_state[0] * e._close[t + 1] / (e._sizes[t + 1] * e._equity)
    np.testing.assert_allclose(obs["specialist_AAA"][-5], expo[0], rtol=1e-6)
    # the cap binds when the target needs more leverage than allowed
    capped = HierarchicalTradingEnv(bars=bars, vol_target=0.2, vol_target_max_leverage=0.01, **kw)
    capped.reset(seed=0)
    capped.step({"specialist_AAA": np.array([1.0]), "specialist_BBB": np.array([1.0])})
    assert np.all(0.2 / ann > 0.01)
    np.testing.assert_allclose(capped.target_exposures, [0.005, 0.005], rtol=1e-12)
    # default: a fixed fraction of capital
    plain = HierarchicalTradingEnv(bars=bars, **kw)
    plain.reset(seed=0)
    plain.step({"specialist_AAA": np.array([1.0]), "specialist_BBB": np.array([1.0])})
    np.testing.assert_allclose(plain.target_exposures, [0.05, 0.05])


def test_options_off_by_default_and_checked():
    bars = make_market(("AAA", "BBB"), n=120)
    e = HierarchicalTradingEnv(bars=bars, **BASE)
    assert e.cfg.env.specialist_reward == "proposal" and e.cfg.env.vol_target is None
    assert e.cfg.reward.cost_amortization_bars == 1
    with pytest.raises(ConfigError, match="specialist_reward"):
        HierarchicalTradingEnv(bars=bars, specialist_reward="proposed", **BASE)
    with pytest.raises(ConfigError, match="cost_amortization_bars"):
        HierarchicalTradingEnv(bars=bars, cost_amortization_bars=0, **BASE)
    with pytest.raises(ConfigError):
        HierarchicalTradingEnv(bars=bars, vol_target=-1.0, **BASE)


@pytest.mark.parametrize("executed", [False, True])
def test_amortised_costs_keep_the_sums_and_soften_the_trade_bar(executed):
    """Meta log-return rewards still sum to log(final / initial) with costs amortised; on flat
    prices the trade bar's charge is spread; executed specialist rewards keep their sum."""
    bars = make_market(n=200, flat=True)
    kw = dict(BASE, transaction_cost=0.002, risk_penalty_weight=0.0,
              diversification_bonus_weight=0.0, stop_loss_pct=0.0)  # fmt: skip
    if executed:
        kw["specialist_reward"] = "executed"
    runs = {}
    for k in (1, 8):
        e = HierarchicalTradingEnv(bars=bars, cost_amortization_bars=k, **kw)
        recs = play(e, random_policy(e, 2))
        meta = np.array([r.get(META, 0.0) for _, r, _ in recs[1:]])
        spec = np.array([[r[a] for a in e.specialists] for _, r, _ in recs[1:]])
        eq = e.episode_summary()["equity"]
        assert e.episode_summary()["total_costs"] > 0
        assert meta.sum() == pytest.approx(math.log(eq[-1] / eq[0]), abs=1e-12)
        runs[k] = (meta, spec, eq)
    np.testing.assert_array_equal(runs[1][2], runs[8][2])  # execution is unchanged
    assert not np.allclose(runs[1][0], runs[8][0])
    # the worst trade bar is softened (the last step also pays the debt left)
    assert runs[8][0][:-1].min() > runs[1][0][:-1].min()
    if executed:  # specialist rewards: the same total, spread over time
        np.testing.assert_allclose(runs[8][1].sum(axis=0), runs[1][1].sum(axis=0), rtol=1e-9)
        assert runs[8][1][:-1].min() > runs[1][1][:-1].min()
    else:
        assert np.isfinite(runs[8][1]).all() and not np.allclose(runs[8][1], runs[1][1])


def test_single_env_amortised_costs_keep_the_reward_sum():
    bars = make_bars(300, seed=2, vol=0.01)
    acts = [np.array([a]) for a in (1.0, 1.0, -1.0, 0.0, 0.5)]
    env = TradingEnv(bars=bars, window_size=5, episode_length=100, cost_amortization_bars=10)
    _, rewards, infos = run(env, acts)
    base = TradingEnv(bars=bars, window_size=5, episode_length=100)
    _, base_rewards, base_infos = run(base, acts)
    assert infos[-1]["equity"] == base_infos[-1]["equity"]
    assert abs(rewards.sum() - math.log(infos[-1]["equity"] / env.initial_balance)) < 1e-9
    assert not np.allclose(rewards, base_rewards)


def test_rebalance_band_trades_only_beyond_the_band_and_always_exits():
    """With env.rebalance_band b (0.15 here), an instrument is re-traded only when its target
    exposure moved by more than b x full size since its last trade; a flat target always fills."""
    bars = make_market(("AAA", "BBB"), n=200, flat=True)
    kw = dict(BASE, stop_loss_pct=0.0, max_position_size=1.0, max_sector_allocation=None,
              max_portfolio_var=10.0, max_correlation_exposure=10.0)  # fmt: skip
    e = HierarchicalTradingEnv(bars=bars, mode="specialists", rebalance_band=0.15, **kw)
    e.reset(seed=0)
    targets = []
    for p in (0.9, 0.8, 0.65, 0.55, 0.0, 0.2, 0.4, -0.4):  # weights 1/2: x = p / 2
        e.step({a: np.array([p], dtype=np.float32) for a in e.specialists})
        targets.append(round(float(e.target_exposures[0]), 6))
    # 0.45 -> 0.4 and 0.325 stay (|dx| <= 0.15); 0.275 trades (0.175); 0 exits; 0.1 stays
    # out; 0.2 trades; -0.2 trades
    assert targets == [0.45, 0.45, 0.45, 0.275, 0.0, 0.0, 0.2, -0.2]
    with pytest.raises(ConfigError, match="rebalance_band"):
        HierarchicalTradingEnv(bars=bars, rebalance_band=1.5, **BASE)


def test_single_env_vol_target_and_band():
    """The single env sizes a target of 1 at vol_target / causal annualised vol (capped) and,
    with a band, re-trades only beyond band x full size; an exit to flat always fills."""
    bars = make_bars(300, seed=4, vol=0.01)
    kw = dict(window_size=5, episode_length=100, stop_loss_pct=0.0, random_start=False,
              risk_window=10)  # fmt: skip
    env = TradingEnv(bars=bars, vol_target=0.1, vol_target_max_leverage=3.0, **kw)
    env.reset(seed=0)
    t = env._t
    rets = bars["close"].pct_change().to_numpy()
    window = rets[t - env.cfg.env.risk_window + 1 : t + 1]
    ann = np.std(window, ddof=1) * math.sqrt(env.periods_per_year)
    _, _, _, _, info = env.step(np.array([1.0]))
    exposure = info["position"] * bars["open"].iloc[t + 1] / env.initial_balance
    assert exposure == pytest.approx(min(0.1 / ann, 3.0), rel=1e-9)
    band = TradingEnv(bars=bars, rebalance_band=0.3, **kw)
    band.reset(seed=0)
    trades = []
    for a in (0.5, 0.7, 0.85, 0.0, 0.2, -0.2):
        _, _, _, _, info = band.step(np.array([a]))
        trades.append(info["target"])
    # 0.7 (0.2 <= 0.3) and 0.85 (0.35 > 0.3: trades), 0 exits, 0.2 stays out, -0.2 stays out
    assert trades == [0.5, 0.5, 0.85, 0.0, 0.0, 0.0]


def test_cross_sectional_observations_add_each_features_gap_to_the_mean():
    """env.cross_sectional appends, per specialist, its features minus the instruments' mean at
    the same bar; the rest of the observation is unchanged, and a bar's values do not depend on
    later bars (recomputed on truncated data)."""
    bars = make_market(n=260, seed=1, vol=0.02)
    kw = dict(BASE, window_size=1, random_start=False)
    plain = HierarchicalTradingEnv(bars=bars, **kw)
    cross = HierarchicalTradingEnv(bars=bars, cross_sectional=True, **kw)
    f = plain.obs_layout()["n_features"]
    assert cross.obs_layout()["n_features"] == 2 * f
    o_plain, _ = plain.reset(seed=0)
    o_cross, _ = cross.reset(seed=0)
    own = np.stack([o_plain[a][:f] for a in plain.specialists])
    gap = np.stack([o_cross[a][f : 2 * f] for a in cross.specialists])
    np.testing.assert_allclose(gap, own - own.mean(axis=0), atol=1e-6)
    for a in plain.specialists:
        np.testing.assert_array_equal(o_cross[a][:f], o_plain[a][:f])
        np.testing.assert_array_equal(o_cross[a][2 * f :], o_plain[a][f:])
    cut = {s: b.iloc[:200] for s, b in bars.items()}
    short = HierarchicalTradingEnv(bars=cut, cross_sectional=True, scalers=cross.scalers, **kw)
    np.testing.assert_array_equal(short._feat_all[:, :200], cross._feat_all[:, :200])


def test_trend_observations_follow_the_features_and_push_the_first_decision():
    """env.trend_windows appends each specialist's trend t-statistics after its features (the
    rest unchanged), the env decides after the longest window, and a bar's values do not
    depend on later bars; a window longer than the bars is a one-line config error."""
    bars = make_market(n=260, seed=1, vol=0.02)
    kw = dict(BASE, window_size=1, random_start=False)
    plain = HierarchicalTradingEnv(bars=bars, **kw)
    trend = HierarchicalTradingEnv(bars=bars, trend_windows=[5, 30], **kw)
    f = plain.obs_layout()["n_features"]
    assert trend.obs_layout()["n_features"] == f + 2
    assert plain.first_bar == WARMUP_BARS and trend.first_bar == WARMUP_BARS  # 30 < 40
    o_plain, _ = plain.reset(seed=0)
    o_trend, _ = trend.reset(seed=0)
    closes = np.stack([b["close"].to_numpy() for b in bars.values()], axis=1)
    want = trend_strength(closes, [5, 30])[:, trend.first_bar]
    for i, a in enumerate(plain.specialists):
        np.testing.assert_array_equal(o_trend[a][:f], o_plain[a][:f])
        np.testing.assert_array_equal(o_trend[a][f : f + 2], want[i])
        np.testing.assert_array_equal(o_trend[a][f + 2 :], o_plain[a][f:])
    longer = HierarchicalTradingEnv(bars=bars, trend_windows=[120], **kw)
    assert longer.first_bar == 120
    cut = {s: b.iloc[:200] for s, b in bars.items()}
    short = HierarchicalTradingEnv(bars=cut, trend_windows=[5, 30], scalers=trend.scalers, **kw)
    np.testing.assert_array_equal(short._feat_all[:, :200], trend._feat_all[:, :200])
    with pytest.raises(ConfigError, match=r"trend_windows \[300\]"):
        HierarchicalTradingEnv(bars=bars, trend_windows=[300], **kw)


def test_reward_scale_multiplies_every_agents_reward():
    """reward.scale: the same episode, every specialist's and the meta's reward x scale, in
    both the hierarchical (relative mode, te penalty) and the single-instrument env."""
    bars = make_market(n=260, seed=1, vol=0.02)
    kw = dict(BASE, vol_target=0.2, benchmark="vol_target", tracking_error_weight=0.1,
              stop_loss_pct=0.0)  # fmt: skip
    one = _steps(HierarchicalTradingEnv(bars=bars, **kw))
    ten = _steps(HierarchicalTradingEnv(bars=bars, scale=10.0, **kw))
    assert len(one) == len(ten)
    assert any(r[META] != 0.0 for *_, r in one)
    for (e0, e1, _, r1), (f0, f1, _, r10) in zip(one, ten, strict=True):
        assert (e0, e1) == (f0, f1)
        for a in r1:
            assert r10[a] == pytest.approx(10.0 * r1[a], rel=1e-9, abs=1e-15)
    b = make_bars(300)
    acts = [np.array([0.7]), np.array([-0.4]), np.array([0.0])]
    _, r_one, _ = run(TradingEnv(bars=b, window_size=5, kind="sortino"), acts)
    _, r_ten, _ = run(TradingEnv(bars=b, window_size=5, kind="sortino", scale=10.0), acts)
    assert np.abs(r_one).max() > 0
    np.testing.assert_allclose(r_ten, 10.0 * r_one, rtol=1e-9)


def test_vol_horizon_sizes_from_years_of_bars_in_every_copy():
    """env.vol_horizon_years sizes positions from the causal volatility of that many years of
    bars (at least risk_window; fewer at the block's start), in both envs and in the baselines
    that trade as the policy would; the risk model keeps risk_window; a bar's size does not
    depend on later bars."""
    from envs.execution import position_sizes, sizing_window
    from envs.risk import causal_volatility
    from rl_trading.evaluation.baselines import as_policy_would_trade

    assert sizing_window(60, None, 17_520) == 60
    assert sizing_window(60, 0.25, 17_520) == 4380 and sizing_window(60, 0.1, 252) == 60
    bars = make_market(n=400, seed=2, vol=0.02)
    kw = dict(BASE, vol_target=0.1, benchmark="vol_target", random_start=False,
              stop_loss_pct=0.0)  # fmt: skip
    env = HierarchicalTradingEnv(bars=bars, vol_horizon_years=0.5, **kw)
    short = HierarchicalTradingEnv(bars=bars, **kw)
    window = round(0.5 * env.periods_per_year)
    assert env.size_window == window > short.size_window == 10
    closes = np.stack([f["close"].to_numpy() for f in bars.values()], axis=1)
    vol = causal_volatility(closes, window)
    want = position_sizes(vol, env.periods_per_year, 0.1, 1.0, 0.1)
    np.testing.assert_array_equal(env._sizes, want)
    assert not np.allclose(env._sizes[200:], short._sizes[200:])
    np.testing.assert_array_equal(env.risk.cov, short.risk.cov)  # the limits keep risk_window
    part = HierarchicalTradingEnv(bars={s: f.iloc[:250] for s, f in bars.items()},
                                  vol_horizon_years=0.5, **kw)  # fmt: skip
    np.testing.assert_array_equal(part._sizes, env._sizes[:250])
    # the baseline that trades a signal as the env would: the same sizes
    cfg = env.cfg
    assert cfg.env.rebalance_band == 0.0  # every change of the benchmark is an order
    zero = as_policy_would_trade(np.zeros((400, len(bars))), bars, cfg).targets
    np.testing.assert_allclose(zero[300], want[300] / len(bars))
    # the single env: the same window over its one instrument
    one = next(iter(bars.values()))
    single = TradingEnv(bars=one, vol_target=0.1, vol_horizon_years=0.5, window_size=5,
                        risk_window=10, episode_length=100, random_start=False)  # fmt: skip
    sv = position_sizes(causal_volatility(one["close"].to_numpy(), window),
                        single.periods_per_year, 0.1, 1.0, 0.1)[:, 0]  # fmt: skip
    assert single._size_l == pytest.approx(sv.tolist(), rel=0, abs=0)
