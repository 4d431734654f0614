"""Turnover is measured on the trades (traded notional), not on the held weights' drift: the
envs and the baselines report each bar's traded notional, and their costs are exactly that
notional times the cost rate."""

from __future__ import annotations

import numpy as np
import pytest

from envs import HierarchicalTradingEnv
from envs.trading_env import TradingEnv
from rl_trading import metrics
from rl_trading.evaluation.baselines import buy_and_hold_targets, simulate_weights
from tests.test_env_hierarchical import SMALL, make_market, play, random_policy

RATE = 0.002 + (1.5 + 0.5 * 1.0) * 1e-4  # fee + slippage + half the spread (CostModel.rate)
COSTS = {"transaction_cost": 0.002, "slippage_bps": 1.5, "spread_bps": 1.0}


def test_buy_and_hold_turns_over_once_however_prices_drift():
    bars = make_market(n=300, vol=0.03)
    n_bars = len(next(iter(bars.values())))
    run = simulate_weights("buy_and_hold", bars, buy_and_hold_targets(n_bars, 3), 1e5, RATE)
    # one purchase of the whole book at bar 1's open, nothing after
    assert np.count_nonzero(run.traded) == 1
    assert run.traded.sum() * RATE == pytest.approx(run.costs.sum(), rel=1e-12)
    turn = metrics.turnover(run.traded, run.equity)
    assert turn == pytest.approx(run.traded[1] / run.equity[0] / (n_bars - 1), rel=1e-12)
    drift = np.abs(np.diff(run.weights, axis=0)).sum(axis=1).mean()  # the old measure
    assert drift > 5 * turn


def test_hierarchical_env_reports_its_traded_notional():
    e = HierarchicalTradingEnv(bars=make_market(seed=3), **SMALL, **COSTS, stop_loss_pct=0.01)
    play(e, random_policy(e, 2))
    s = e.episode_summary()
    traded = np.asarray(s["traded"])
    assert traded.shape == np.asarray(s["equity"]).shape and traded[0] == 0.0
    assert traded.sum() > 0
    np.testing.assert_allclose(traded * RATE, s["costs"], rtol=1e-12, atol=1e-12)
    assert s["metrics"]["turnover"] == pytest.approx(metrics.turnover(traded, s["equity"]))


def test_single_env_reports_its_traded_notional():
    frame = next(iter(make_market(seed=4, n=120).values()))
    e = TradingEnv(bars=frame, window_size=5, risk_window=10, benchmark="none", **COSTS)
    e.reset(seed=0)
    rng = np.random.default_rng(0)
    done = False
    while not done:
        _, _, term, trunc, _ = e.step(e.action_space.sample() * 0 + rng.uniform(-1, 1, 1))
        done = term or trunc
    s = e.episode_summary()
    traded = np.asarray(s["traded"])
    assert traded.shape == np.asarray(s["equity"]).shape and traded.sum() > 0
    assert traded.sum() * RATE == pytest.approx(s["total_costs"], rel=1e-12)
    assert s["metrics"]["turnover"] == pytest.approx(metrics.turnover(traded, s["equity"]))


def test_the_book_carries_each_steps_traded_notional_stops_included():
    e = HierarchicalTradingEnv(bars=make_market(seed=5), **SMALL, **COSTS, stop_loss_pct=0.01)
    policy = random_policy(e, 3)
    obs, _ = e.reset(seed=0)
    seen = []
    while e.agents:
        obs, *_ = e.step({a: policy(a, 0) for a in obs})
        seen.append(e.book().traded)
    s = e.episode_summary()
    assert s["stop_losses"] > 0
    np.testing.assert_array_equal(seen, s["traded"][1:])
