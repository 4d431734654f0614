"""Benchmark-relative agents (env.benchmark): the neutral action holds the benchmark, not cash;
tilts move around it; rewards are active returns with an active-risk penalty; reports carry
the information ratio and tracking error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs import HierarchicalTradingEnv, TradingEnv
from envs.execution import vol_target_size
from envs.hierarchical_env import META
from rl_trading.config import AppConfig, load_config
from rl_trading.errors import ConfigError
from tests.test_env_hierarchical import make_market, play, random_policy
from tests.test_env_single import make_bars

OPEN = dict(window_size=5, risk_window=10, episode_length=150, stop_loss_pct=0.0,
            max_correlation_exposure=10.0, max_portfolio_var=10.0, max_sector_allocation=None,
            max_position_size=1.0)  # fmt: skip
VOL = dict(vol_target=0.1, vol_target_max_leverage=1.0)


def neutral(agent: str, _step: int) -> np.ndarray:
    """Zero tilts, and a meta that gives the specialists no active capital (all cash)."""
    return np.array([0.0, 0.0, 0.0, 1.0]) if agent == META else np.zeros(1)


@pytest.mark.parametrize("benchmark", ["equal_weight", "vol_target"])
@pytest.mark.parametrize("mode", ["specialists", "joint"])
def test_the_neutral_action_holds_the_benchmark_not_cash(benchmark, mode):
    bars = make_market(n=300, seed=2)
    kw = dict(OPEN, **(VOL if benchmark == "vol_target" else {}))
    e = HierarchicalTradingEnv(bars=bars, mode=mode, benchmark=benchmark, **kw)
    play(e, neutral)
    s = e.episode_summary()
    bench = s["benchmark_exposures"]
    if benchmark == "equal_weight":
        np.testing.assert_allclose(bench, 1.0 / 3.0)
    else:  # 1/n of each instrument's vol-targeted size, causal
        scale = vol_target_size(e.risk.vol * math.sqrt(e.periods_per_year), 0.1, 1.0)
        np.testing.assert_allclose(bench, scale[e._start : e._start + len(bench)] / 3.0)
    # held (up to the drift between fills) from the first fill on; absolute mode: all cash
    gross = np.abs(s["exposures"][1:]).sum(axis=1)
    assert gross.min() > 0.5 * bench.sum(axis=1).min() > 0
    assert s["metrics"]["tracking_error"] < 0.25 * s["metrics"]["volatility"]
    flat = HierarchicalTradingEnv(bars=bars, mode=mode, **kw)
    play(flat, neutral)
    assert np.abs(flat.episode_summary()["exposures"]).max() == 0.0


@pytest.mark.parametrize("band", [0.0, 0.2])
def test_the_neutral_book_tracks_an_equal_weight_benchmark_as_prices_drift(band):
    """The no-trade band is measured from the held book: the neutral action's book is
    rebalanced to 1/n once it drifts out of the band, so over 950 bars it ends near the
    benchmark and its reward (active log return) is small. Before, the band was measured from
    the last order, the constant 1/n target never traded again and the book drifted like
    buy-and-hold: with no band it ended at [0.05, 0.45, 0.50] with a meta reward of +0.31."""
    bars = make_market(n=1000, seed=2, vol=0.02)
    kw = dict(OPEN, episode_length=950, eval_mode=True, rebalance_band=band,
              transaction_cost=0.001, slippage_bps=0.0,
              diversification_bonus_weight=0.0)  # fmt: skip
    e = HierarchicalTradingEnv(bars=bars, mode="joint", benchmark="equal_weight", **kw)
    recs = play(e, lambda a, _s: np.array([0.0, 0.0, 0.0, 1.0]) if a == META else np.zeros(1))
    s = e.episode_summary()
    held = np.asarray(s["exposures"])[1:]
    assert np.abs(held - 1.0 / 3.0).max() <= band + 0.04  # one bar of drift past the band
    if band == 0.0:  # rebalanced every bar: the active return is the rebalancing's costs
        meta = sum(r.get(META, 0.0) for _, r, _ in recs[1:])
        assert -0.05 < meta < 0.0


def test_tilts_move_around_the_benchmark_and_long_only_never_shorts():
    """Specialists mode, weights 1/n: x = b + p x full size / n, so p = -1 leaves the
    instrument, p = 1 doubles it; without shorting the tilt still goes down to 0, not below."""
    bars = make_market(n=200, seed=3, flat=True)
    for allow_short in (True, False):
        kw = dict(OPEN, max_position_size=0.6, transaction_cost=0.0, slippage_bps=0.0)
        e = HierarchicalTradingEnv(bars=bars, mode="specialists", benchmark="equal_weight",
                                   allow_short=allow_short, **kw)  # fmt: skip
        assert e.action_space("specialist_AAA").low[0] == -1.0
        e.reset(seed=0)
        e.step({"specialist_AAA": [-1.0], "specialist_BBB": [0.0], "specialist_CCC": [1.0]})
        np.testing.assert_allclose(e.target_exposures, [1 / 3 - 0.2, 1 / 3, 1 / 3 + 0.2])
        e.step({"specialist_AAA": [-1.0], "specialist_BBB": [0.0], "specialist_CCC": [1.0]})
        bars_ = dict(e.episode_summary())
        assert bars_["exposures"][-1][0] == pytest.approx(1 / 3 - 0.2)


def test_active_scale_shrinks_the_tilts_in_the_env_and_in_the_baseline():
    """env.active_scale: x = b + scale x p x full size / n (the benchmark untouched), in the
    env and in the baseline that trades a signal as the env would (one rule, targets_of)."""
    from rl_trading.evaluation.baselines import as_policy_would_trade

    bars = make_market(n=200, seed=3, flat=True)
    kw = dict(OPEN, max_position_size=0.6, transaction_cost=0.0, slippage_bps=0.0)
    act = {"specialist_AAA": [-1.0], "specialist_BBB": [0.5], "specialist_CCC": [1.0]}
    got = {}
    for scale in (1.0, 0.25):
        e = HierarchicalTradingEnv(bars=bars, mode="specialists", benchmark="equal_weight",
                                   active_scale=scale, **kw)  # fmt: skip
        e.reset(seed=0)
        e.step(act)
        got[scale] = e.target_exposures - 1 / 3
        signs = np.tile([-1.0, 0.5, 1.0], (len(next(iter(bars.values()))), 1))
        base = as_policy_would_trade(signs, bars, e.cfg).targets
        np.testing.assert_allclose(base[0] - 1 / 3, got[scale], atol=1e-12)
    np.testing.assert_allclose(got[1.0], [-0.2, 0.1, 0.2], atol=1e-12)
    np.testing.assert_allclose(got[0.25], 0.25 * got[1.0], atol=1e-12)


@pytest.mark.parametrize("benchmark", ["vol_target", "buy_and_hold"])
def test_the_baseline_sizes_from_the_envs_warm_up_as_the_env_does(benchmark):
    """as_policy_would_trade(start=first_bar): sizes measured from the env's whole bars, its
    warm-up included, and a buy-and-hold benchmark drifting from first_bar (1/n before), so
    the first evaluated targets are the env's; from the trimmed bars alone (the baseline
    before this fix) the sizes, and so the targets, differ. (The baseline has no risk limits:
    here none binds.)"""
    from rl_trading.evaluation.baselines import as_policy_would_trade

    bars = make_market(n=300, seed=4, vol=0.02)
    e = HierarchicalTradingEnv(bars=bars, mode="specialists", benchmark=benchmark,
                               random_start=False, vol_horizon_years=1.0,
                               **dict(OPEN, **VOL, max_correlation_exposure=1e9))  # fmt: skip
    e.reset(seed=0)
    p = np.array([0.5, -0.25, 1.0])
    e.step({a: [v] for a, v in zip(sorted(x for x in e.agents if x != META), p, strict=True)})
    signs = np.tile(p, (300, 1))
    k = e.first_bar
    warm = as_policy_would_trade(signs, bars, e.cfg, start=k).targets
    assert warm.shape == (300 - k, 3)
    np.testing.assert_allclose(warm[0], e.target_exposures, rtol=1e-12)
    cold = as_policy_would_trade(signs[k:], {s: f.iloc[k:] for s, f in bars.items()}, e.cfg)
    cold = cold.targets
    assert not np.allclose(cold[0], e.target_exposures)


def test_active_rewards_and_penalty():
    """Executed specialist rewards are the instrument's P&L minus the benchmark position's, in
    risk units, minus te_w z^2; the meta's log-return reward nets out the benchmark's return."""
    bars = make_market(n=300, seed=5, vol=0.02)
    kw = dict(OPEN, specialist_reward="executed", transaction_cost=0.0, slippage_bps=0.0)
    rewards = {}
    for te_w in (0.0, 0.5):
        e = HierarchicalTradingEnv(bars=bars, mode="joint", benchmark="equal_weight",
                                   tracking_error_weight=te_w, risk_penalty_weight=0.0,
                                   diversification_bonus_weight=0.0, **kw)  # fmt: skip
        recs = play(e, random_policy(e, 4))
        rewards[te_w] = recs
        s = e.episode_summary()
        eq = s["equity"]
        meta = np.array([r.get(META, 0.0) for _, r, _ in recs[1:]])
        bench = s["benchmark_returns"]
        active_log = math.log(eq[-1] / eq[0]) - np.log1p(bench).sum()
        if te_w == 0.0:
            assert meta.sum() == pytest.approx(active_log, abs=1e-9)
        else:
            assert meta.sum() < active_log - 1e-6  # the penalty only takes away
    spec0 = np.array([[r[a] for a in sorted(r) if a != META] for _, r, _ in rewards[0.0][1:]])
    spec1 = np.array([[r[a] for a in sorted(r) if a != META] for _, r, _ in rewards[0.5][1:]])
    np.testing.assert_allclose(spec1, spec0 - 0.5 * spec0**2, rtol=1e-9, atol=1e-12)
    assert np.abs(spec0).max() > 0.1


def test_config_and_single_env_guards():
    with pytest.raises(ConfigError, match="env.vol_target"):
        load_config(None, ["env.benchmark=vol_target", "env.vol_target=null"])
    with pytest.raises(ConfigError, match="env.risk_limits active needs an env.benchmark"):
        load_config(None, ["env.benchmark=none", "env.risk_limits=active"])
    with pytest.raises(ConfigError, match="env.vol_horizon_years needs env.vol_target"):
        load_config(None, ["env.vol_horizon_years=1.0"])  # the schema: no vol_target
    assert load_config(None, ["env.vol_horizon_years=1.0", "env.vol_target=0.3"]).env.vol_target
    with pytest.raises(ConfigError, match="env.active_scale needs an env.benchmark"):
        load_config(None, ["env.benchmark=none", "env.active_scale=0.5"])
    with pytest.raises(ConfigError, match="active_scale"):
        load_config(None, ["env.active_scale=1.5"])
    for bad in ("[1, 20]", "[20, 20]"):
        with pytest.raises(ConfigError, match="env.trend_windows must be distinct bar counts"):
            load_config(None, [f"env.trend_windows={bad}"])
    assert load_config(None, ["env.trend_windows=[20, 120]"]).env.trend_windows == [20, 120]
    # a stop would sell the benchmark on a dip and buy it back next bar (a helper's audit: 18x
    # the costs of the neutral book on 260 bars); the schema's default stop needs an explicit 0
    with pytest.raises(ConfigError, match="env.stop_loss_pct 0.02 would sell the benchmark"):
        load_config(None, ["env.benchmark=equal_weight"])
    assert load_config(None, ["env.benchmark=equal_weight", "env.stop_loss_pct=0"]).env.benchmark
    cfg = AppConfig()
    cfg.env.stop_loss_pct = 0.0
    cfg.env.benchmark = "equal_weight"
    with pytest.raises(ConfigError, match="hierarchical env"):
        TradingEnv(cfg, bars=make_bars(n=300))
    for key, value in (("cross_sectional", True), ("trend_windows", [20])):
        cfg = AppConfig()
        setattr(cfg.env, key, value)
        with pytest.raises(ConfigError, match="observations of the hierarchical env"):
            TradingEnv(cfg, bars=make_bars(n=300))


def test_the_buy_and_hold_benchmark_drifts_and_is_never_traded():
    """env.benchmark buy_and_hold: 1/n of equity at the env's first tradable bar, each weight
    drifting with its price; held by the neutral action with one entry and (the band keeping drift
    trades out) no rebalancing, so the book tracks the benchmark."""
    bars = make_market(n=300, seed=4)
    closes = np.column_stack([f["close"].to_numpy() for f in bars.values()])
    e = HierarchicalTradingEnv(bars=bars, mode="specialists", benchmark="buy_and_hold",
                               rebalance_band=0.2, **dict(OPEN, random_start=False))  # fmt: skip
    f = e.first_bar  # bought where evaluation episodes (and a backtest's baselines) start
    growth = closes / closes[f]
    growth[:f] = 1.0  # before it: 1/n, no later price read
    np.testing.assert_allclose(e.benchmark_exposures(), growth / growth.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(e.benchmark_exposures()[f], 1.0 / 3.0)
    play(e, neutral)
    s = e.episode_summary()
    held = s["exposures"][1:]
    np.testing.assert_allclose(held.sum(axis=1), 1.0, atol=0.02)  # fully invested throughout
    np.testing.assert_allclose(held, s["benchmark_exposures"][1:], atol=0.02)
    assert s["metrics"]["tracking_error"] < 0.05 * s["metrics"]["volatility"]


@pytest.mark.parametrize("benchmark", ["vol_target", "buy_and_hold"])
def test_active_risk_limits_cap_the_bets_not_the_benchmark(benchmark):
    """env.risk_limits active: a tight correlation limit leaves the neutral book at the
    benchmark (book: it cuts the benchmark itself), and still cuts a large tilt."""
    bars = make_market(n=300, seed=2)
    kw = dict(OPEN, **VOL, max_correlation_exposure=0.2, random_start=False)
    gross = {}
    for limits in ("book", "active"):
        e = HierarchicalTradingEnv(bars=bars, mode="specialists", benchmark=benchmark,
                                   risk_limits=limits, **kw)  # fmt: skip
        play(e, neutral)
        s = e.episode_summary()
        gross[limits] = np.abs(s["exposures"][1:]).sum(axis=1).mean()
        bench = np.abs(s["benchmark_exposures"][1:]).sum(axis=1).mean()
        if limits == "active":
            assert gross[limits] == pytest.approx(bench, rel=0.05)
            assert e._current_totals()["correlation_scaledowns"] == 0
    assert gross["book"] < 0.5 * gross["active"]
    e = HierarchicalTradingEnv(bars=bars, mode="specialists", benchmark=benchmark,
                               risk_limits="active", **kw)  # fmt: skip
    e.reset(seed=0)
    e.step({a: [1.0] for a in e.agents})
    b = e.benchmark_exposures()[e._t - 1]
    tilt = e.target_exposures - b
    full = e._sizes[e._t - 1] / 3.0  # an uncut tilt of p = 1 at weight 1/n
    assert np.all(tilt > 0) and np.all(tilt < 0.75 * full)
