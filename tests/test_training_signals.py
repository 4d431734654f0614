"""The hybrid stage end to end: an RL phase trains and backtests with supervised signals on."""

from __future__ import annotations

import numpy as np
import pytest

from rl_trading.config import AppConfig
from rl_trading.data import FEATURE_COLUMNS

pytestmark = pytest.mark.rllib


def test_phase1_trains_and_backtests_with_signal_features(ray_session, workspace):
    from rl_trading.evaluation.backtest import backtest, load_policy
    from rl_trading.supervised.signals import observed_market
    from rl_trading.training.session import train

    cfg = AppConfig.model_validate(
        {
            "seed": 5,
            "run_dir": str(workspace / "runs" / "hybrid"),
            "data": {
                "source": "synthetic",
                "symbols": ["AAA", "BBB"],
                "embargo_bars": 5,
                "synthetic": {"n_bars": 1500, "seed": 3, "signal_strength": 0.5},
            },
            "train": {"window_size": 8},
            "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
            "policy": {"hidden_sizes": [16]},
            "resources": {"num_env_runners": 0},
            "phases": {"phase1_timesteps": 128, "eval_interval": 1},
            "supervised": {"signals_enabled": True, "timeframes": ["1m", "5m"]},
            "tracking": {"system_metrics": False},
        }
    )
    bars = observed_market(cfg)
    sig_cols = [c for c in bars["AAA"].columns if c.startswith("sig_")]
    assert sig_cols == ["sig_analyst_1m", "sig_analyst_5m"]
    # the signals carry information: after warm-up they are not all 'no opinion'
    assert np.abs(bars["AAA"][sig_cols].to_numpy()[600:] - 0.5).max() > 0.05

    run_dir, results = train(cfg, (1,), tracking=False)
    res = results["phase1"]
    assert res.iterations >= 1 and np.isfinite(res.metrics["val_sharpe"])

    bundle = load_policy(res.best_checkpoint, cfg)
    module = bundle.modules["specialist_AAA"]
    n_features = len(FEATURE_COLUMNS) + len(sig_cols)
    assert module.observation_space.shape[0] == cfg.train.window_size * n_features + 5

    # a backtest builds its env from the same observed market: shapes match, it runs through
    from rl_trading.data import split_by_time

    test = split_by_time(bars, cfg.data.train_frac, cfg.data.val_frac, cfg.data.embargo_bars).test
    result = backtest(bundle, test, cfg, seed=0)
    assert np.isfinite(result.metrics["policy"]["sharpe_ratio"])
