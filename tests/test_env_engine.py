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
from rl_trading.evaluation.baselines import simulate_weights
from tests.test_env_hierarchical import make_market, with_gaps

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
    """A constant target held by the env (no limits binding, no stops) and the same schedule
    through simulate_weights give the same equity curve, gaps included."""
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
    targets = np.full((len(eq_env), 2), np.nan)
    targets[0] = 0.3  # decided at the first close, as the env's first step
    run = simulate_weights("const", block, targets, e.capital, e._rate)
    np.testing.assert_allclose(run.equity, eq_env, rtol=1e-12)
