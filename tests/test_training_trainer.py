"""The reference-design Python API: DistributedTrainer train / evaluate / save / load / act."""

from __future__ import annotations

import numpy as np
import pytest

import rl_trading
from rl_trading.config import AppConfig
from rl_trading.data import split_by_time, synthetic_market
from rl_trading.errors import CheckpointError, ConfigError


@pytest.mark.rllib
def test_distributed_trainer_end_to_end(ray_session, workspace):
    assert rl_trading.TrainingConfig().window_size == 20
    cfg = AppConfig.model_validate(
        {
            "seed": 4,
            "run_dir": str(workspace / "runs" / "api"),
            "data": {"symbols": ["AAA", "BBB"], "embargo_bars": 5},
            "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
            "policy": {"hidden_sizes": [16]},
            "resources": {"num_env_runners": 0},
            "phases": {
                "phase1_timesteps": 128,
                "phase2_timesteps": 128,
                "phase3_timesteps": 128,
                "eval_interval": 1,
            },
            "tracking": {"system_metrics": False},
        }
    )
    splits = split_by_time(synthetic_market(["AAA", "BBB"], n_bars=900, seed=2), 0.7, 0.15, 5)
    trainer = rl_trading.DistributedTrainer(cfg)
    with pytest.raises(CheckpointError):
        trainer.save_model(workspace / "nothing")
    with pytest.raises(ConfigError):
        trainer.create_agent()
    metrics = trainer.train(splits.train, splits.val)
    assert {"phase1.val_sharpe", "phase2.val_sharpe", "phase3.val_sharpe"} <= metrics.keys()
    assert metrics["phase3.iterations"] == 1.0
    assert set(trainer.modules) == {"specialist_AAA", "specialist_BBB", "meta"}

    evaluated = trainer.evaluate()
    assert np.isfinite(evaluated["val_sharpe"]) and evaluated["val_steps"] > 50
    on_test = trainer.evaluate(env=splits.test)
    assert np.isfinite(on_test["val_sharpe"]) and on_test["val_steps"] > 50

    saved = trainer.save_model(workspace / "model")
    env = trainer.create_env(splits.train, splits.val)
    obs, _ = env.reset(seed=0)
    before = trainer.act(obs)
    other = rl_trading.DistributedTrainer(cfg)
    other.load_model(saved)
    after = other.act(obs)
    assert before.keys() == after.keys() == obs.keys()
    for aid in obs:
        np.testing.assert_array_equal(before[aid], after[aid])
    assert (
        other.evaluate(trainer.modules, env=splits.val)["val_steps"] > 0 if other.factory else True
    )

    algo = trainer.create_agent(env, phase=1)
    assert set(algo.config.policies) == {"specialist_AAA", "specialist_BBB"}
    assert trainer.evaluate(algo)["val_steps"] > 0
    trainer.cleanup()


def test_tune_delegates_to_pbt_and_returns_best_config(monkeypatch):
    """`DistributedTrainer.tune(train, val)` runs tuning.pbt.run_pbt and returns its best config."""
    import tuning.pbt

    calls = {}

    class Result:
        best_config = {"lr": 1e-4, "gamma": 0.97}

    def fake_run_pbt(cfg, phase, train_bars, val_bars, **kwargs):
        calls.update(phase=phase, train=train_bars, val=val_bars, kwargs=kwargs)
        return Result()

    monkeypatch.setattr(tuning.pbt, "run_pbt", fake_run_pbt)
    trainer = rl_trading.DistributedTrainer(AppConfig())
    best = trainer.tune({"AAA": "train"}, {"AAA": "val"}, population=2)
    assert best == {"lr": 1e-4, "gamma": 0.97}
    assert calls == {
        "phase": 1,
        "train": {"AAA": "train"},
        "val": {"AAA": "val"},
        "kwargs": {"population": 2},
    }
    assert trainer.last_tune is not None
