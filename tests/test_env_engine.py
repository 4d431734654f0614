"""envs.engine is the one copy of the trading rules: compiled by numba or run as plain Python
(RL_TRADING_NUMBA=0) it is the same code and gives the same trajectories, and the baselines'
simulator fills exactly as the env does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs import HierarchicalTradingEnv, engine
from rl_trading.evaluation.baselines import Banded, as_policy_would_trade, simulate_weights
from tests.test_env_hierarchical import make_market, with_gaps
from tests.test_env_single import with_gaps as single_gaps

REPO = Path(__file__).resolve().parent.parent

_SCRIPT = """
import json, numpy as np
from envs import HierarchicalTradingEnv, engine
from tests.test_env_hierarchical import make_market, play, random_policy, with_gaps
bars = with_gaps(make_market(n=160, seed=3, vol=0.02), seed=2)
e = HierarchicalTradingEnv(bars=bars, window_size=5, risk_window=10, episode_length=120,
                           stop_loss_pct=0.01, borrow_bps_per_year=1e4, max_position_size=0.8,
                           max_portfolio_var=0.01, max_correlation_exposure=0.9,
                           specialist_reward="executed", cost_amortization_bars=3)
recs = play(e, random_policy(e, 4))
s = e.episode_summary()
print(json.dumps({"compiled": engine.COMPILED, "equity": s["equity"].tolist(),
                  "rewards": [sorted(r.items()) for _, r, _ in recs[1:]],
                  "totals": s["totals"]}))
"""


def _run(numba: str) -> dict:
    env = dict(os.environ, RL_TRADING_NUMBA=numba, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not engine.COMPILED, reason="numba not installed")
def test_compiled_and_plain_python_engine_agree():
    fast, plain = _run("1"), _run("0")
    assert fast["compiled"] and not plain["compiled"]
    np.testing.assert_allclose(fast["equity"], plain["equity"], rtol=1e-12)
    assert fast["totals"] == pytest.approx(plain["totals"], rel=1e-12)
    assert fast["totals"]["stop_losses"] > 0 and fast["totals"]["var_scaledowns"] > 0
    for a, b in zip(fast["rewards"], plain["rewards"], strict=True):
        assert [k for k, _ in a] == [k for k, _ in b]
        np.testing.assert_allclose([v for _, v in a], [v for _, v in b], rtol=1e-9, atol=1e-12)


def test_baseline_simulator_fills_like_the_env():
    """A constant target held by the env (no limits binding, no stops, no band: rebalanced
    to the target as the book drifts) and the same target re-decided every bar through
    simulate_weights give the same equity curve, gaps included."""
    bars = with_gaps(make_market(("AAA", "BBB"), n=120, seed=6), seed=1)
    kw = dict(mode="specialists", window_size=5, risk_window=10, eval_mode=True,
              stop_loss_pct=0.0, max_position_size=1.0, max_correlation_exposure=10.0,
              max_portfolio_var=10.0, max_sector_allocation=None,
              transaction_cost=0.002)  # fmt: skip
    e = HierarchicalTradingEnv(bars=bars, **kw)
    e.reset()
    start = e._t
    while e.agents:
        e.step({a: np.array([0.6]) for a in e.specialists})  # x = 1/2 x 0.6 = 0.3 each
    eq_env = e.episode_summary()["equity"]
    block = {s: f.iloc[start:] for s, f in bars.items()}
    targets = Banded(np.full((len(eq_env), 2), 0.3), np.zeros((len(eq_env), 2)))
    run = simulate_weights("const", block, targets, e.capital, e._rate)
    np.testing.assert_allclose(run.equity, eq_env, rtol=1e-12)
    assert (run.traded[2:] > 0).mean() > 0.5  # the drift is traded back, on real bars


@pytest.mark.parametrize("band", [0.0, 0.2])
def test_the_band_is_measured_from_the_held_book_in_the_env_and_the_baseline(band):
    """env.rebalance_band compares a target with the exposure held at the close (the book as
    it drifted), not with the last order: with forward-filled bars and a moving proposal the
    env and the baseline that trades a signal as the env would (as_policy_would_trade, one
    rule: engine.trades) give the same equity; before, the baseline measured the band from
    its last decision and drifted apart from the env from the 12th bar on (band 0.2)."""
    bars = {"AAA": single_gaps(make_market(("AAA",), n=400, seed=5)["AAA"], seed=3, share=0.3)}
    props = np.round(np.sin(np.arange(len(bars["AAA"])) / 3.0), 2)[:, None]
    e = HierarchicalTradingEnv(bars=bars, mode="specialists", window_size=5, risk_window=10,
                               eval_mode=True, stop_loss_pct=0.0, max_position_size=1.0,
                               max_correlation_exposure=10.0, max_portfolio_var=10.0,
                               rebalance_band=band)  # fmt: skip
    e.reset()
    k = e._t
    while e.agents:
        e.step({"specialist_AAA": [props[e._t, 0]]})
    eq = e.episode_summary()["equity"]
    targets = as_policy_would_trade(props, bars, e.cfg, start=k)
    run = simulate_weights("sig", {"AAA": bars["AAA"].iloc[k:]}, targets, e.capital, e._rate)
    np.testing.assert_allclose(run.equity, eq, rtol=1e-12)
