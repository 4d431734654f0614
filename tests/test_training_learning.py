"""Honest learning check on a synthetic market with a planted signal.

Phase 1 must reach a validation portfolio Sharpe far above the flat (0) and random policies,
both measured here; phase 2's meta must beat the equal-weight allocation of the same frozen
specialists. AAA carries the planted trend signal, BBB none, so a useful meta shifts capital
to AAA. Measured figures are in the report / docstrings of the thresholds below.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from rl_trading.config import AppConfig
from rl_trading.data import split_by_time, synthetic_market
from rl_trading.training.checkpoints import load_module
from rl_trading.training.env_bridge import hierarchical_factory
from rl_trading.training.runner import run_phase
from rl_trading.training.validation import equal_weight, validate

# In the default suite: training is deterministic (same seed, same result) and this takes ~80 s
# on an idle 2-core machine; it is the CI-sized proof that the hierarchy learns.
pytestmark = pytest.mark.rllib

SPECS = ["specialist_AAA", "specialist_BBB"]
# Thresholds from measurement (1m bars, annualised Sharpe; two runs): trained phase 1 132.7 and
# 172.3 on validation (+0.77% / +0.95% over 839 bars), flat 0, three random policies -532..-573.
# Runtime: 86 s on an idle 2-core machine, 350 s at load ~20, hence `slow`.
PHASE1_MIN_SHARPE = 20.0
# Phase 2 (meta every 10 bars, phase-2 gamma 0.1 / lambda 1, meta lr 3e-3, 16k steps), measured
# on the phase-1 checkpoints of seeds 1/2/3 (phase-1 val Sharpe 172/98/39): validation Sharpe
# meta 217/164/83 vs equal weight 172/98/39, max drawdown lower on every seed; held-out test
# split meta 205/157/117 vs equal 175/116/92. Without the short horizon (k 10, gamma 0.99 /
# lambda 0.95) the meta stays ~uniform (seed 1: 173 vs 172); with k 1 it is +28/+4 on seeds 2/3.
# The whole test: 80 s on an idle 2-core machine (phase 1 29 s, phase 2 42 s), 155 s shared.
META_MIN_MARGIN = 20.0


def market() -> dict[str, pd.DataFrame]:
    signal = synthetic_market(["AAA"], n_bars=6000, seed=3, signal_strength=0.6)
    noise = synthetic_market(["BBB"], n_bars=6000, seed=4, signal_strength=0.0)
    return {**signal, **noise}


def learning_cfg() -> AppConfig:
    return AppConfig.model_validate(
        {
            "seed": 1,
            "data": {"symbols": ["AAA", "BBB"], "embargo_bars": 10},
            "env": {
                "episode_length": 256,
                "transaction_cost": 1e-4,
                "slippage_bps": 0.0,
                "max_position_size": 1.0,
                "sectors": {},
                "max_sector_allocation": None,
                # The meta decides every 10 bars: its reward then sums 10 bars of the allocation's
                # edge (grows ~10x) against their noise (~sqrt(10)x); per bar the edge (~1e-5) is
                # lost in 1e-4 noise and the meta stays at its initial uniform allocation.
                "meta_interval": 10,
            },
            "ppo": {"train_batch_size": 1000, "minibatch_size": 250, "num_epochs": 6, "lr": 1e-3},
            "policy": {"hidden_sizes": [64, 64]},
            "resources": {"num_env_runners": 0},
            "phases": {
                "phase1_timesteps": 10_000,
                "phase2_timesteps": 16_000,
                "meta_lr": 3e-3,
                # An allocation's reward is in its own 10 bars: a short phase-2 horizon.
                "meta_gamma": 0.1,
                "meta_gae_lambda": 1.0,
                "eval_interval": 2,
                "checkpoint_interval": 100,
            },
        }
    )


def test_phase1_learns_and_meta_beats_equal_weight(ray_session, tmp_path):
    cfg = learning_cfg()
    splits = split_by_time(market(), 0.7, 0.15, 10)
    factory = hierarchical_factory(cfg, splits.train, splits.val)
    t0 = time.monotonic()
    p1 = run_phase(cfg, 1, factory, tmp_path, tracking=False)
    t1 = time.monotonic()
    best = {pid: load_module(p1.best_checkpoint, pid) for pid in SPECS}
    trained = validate(factory, "specialists", best, seed=1)
    flat = validate(
        factory, "specialists", best, agent_override={a: lambda o: np.zeros(1) for a in SPECS}
    )
    randoms = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        act = {a: (lambda o, r=rng: r.uniform(-1, 1, 1)) for a in SPECS}
        randoms.append(validate(factory, "specialists", best, agent_override=act)["val_sharpe"])
    print(f"phase1 {t1 - t0:.0f}s trained={trained} flat={flat['val_sharpe']} random={randoms}")
    assert flat["val_sharpe"] == 0.0
    assert trained["val_sharpe"] == pytest.approx(p1.best_val_sharpe)
    assert trained["val_sharpe"] > PHASE1_MIN_SHARPE
    assert trained["val_sharpe"] > max(randoms) + PHASE1_MIN_SHARPE
    assert trained["val_total_return"] > 0

    p2 = run_phase(cfg, 2, factory, tmp_path, tracking=False)
    modules = {**best, "meta": load_module(p2.best_checkpoint, "meta")}
    meta = validate(factory, "meta", modules, seed=1)
    equal = validate(factory, "meta", modules, seed=1, meta_override=equal_weight(2))
    # Also on the held-out test split (the best checkpoint was picked on validation).
    test = hierarchical_factory(cfg, splits.train, splits.test)
    meta_test = validate(test, "meta", modules, seed=1)
    equal_test = validate(test, "meta", modules, seed=1, meta_override=equal_weight(2))
    print(
        f"phase2 {time.monotonic() - t1:.0f}s val: meta={meta} equal={equal} "
        f"test: meta={meta_test} equal={equal_test}"
    )
    assert meta["val_sharpe"] == pytest.approx(p2.best_val_sharpe)
    assert meta["val_sharpe"] > equal["val_sharpe"] + META_MIN_MARGIN
    assert meta["val_max_drawdown"] <= equal["val_max_drawdown"]
    assert meta_test["val_sharpe"] > equal_test["val_sharpe"]
