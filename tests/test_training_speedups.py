"""Training speed-ups that must not change what is learned: the fused gradient finiteness
check (bit-identical weights) and env-runner modules kept in eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

from rl_trading.config import AppConfig
from rl_trading.data import split_by_time, synthetic_market
from rl_trading.training.algo_config import build_phase_config
from rl_trading.training.env_bridge import hierarchical_factory
from rl_trading.training.fast_learner import FastPPOTorchLearner

SYMBOLS = ["AAA", "BBB"]


def _cfg() -> AppConfig:
    return AppConfig.model_validate(
        {
            "seed": 3,
            "data": {"symbols": SYMBOLS, "embargo_bars": 5},
            "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 2},
            "policy": {"hidden_sizes": [16]},
            "resources": {"num_env_runners": 0},
        }
    )


def _weights_after_two_iterations(learner_class: type) -> dict:
    cfg = _cfg()
    market = synthetic_market(SYMBOLS, n_bars=900, seed=1)
    splits = split_by_time(market, 0.7, 0.15, 5)
    factory = hierarchical_factory(cfg, splits.train, splits.val)
    config = build_phase_config(cfg, 1, factory)
    algo = config.learners(learner_class=learner_class).build_algo()
    try:
        algo.train()
        algo.train()
        return algo.learner_group.get_weights()
    finally:
        algo.stop()


@pytest.mark.rllib
def test_fast_learner_is_default_and_bit_identical_to_stock(ray_session):
    cfg = _cfg()
    splits = split_by_time(synthetic_market(SYMBOLS, n_bars=900, seed=1), 0.7, 0.15, 5)
    config = build_phase_config(cfg, 1, hierarchical_factory(cfg, splits.train, splits.val))
    assert config.learner_class is FastPPOTorchLearner
    fast = _weights_after_two_iterations(FastPPOTorchLearner)
    stock = _weights_after_two_iterations(PPOTorchLearner)
    assert fast.keys() == stock.keys() and len(fast) == len(SYMBOLS)
    for pid in fast:
        for name, value in fast[pid].items():
            np.testing.assert_array_equal(value, stock[pid][name], err_msg=f"{pid}/{name}")


def test_non_finite_gradients_take_the_stock_path():
    class Probe(FastPPOTorchLearner):
        def __init__(self):  # no RLlib setup: only what apply_gradients reads
            pass

    from types import SimpleNamespace

    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=1.0)
    learner = Probe()
    learner.config = SimpleNamespace(torch_skip_nan_gradients=False)
    learner._grad_scalers = None
    learner._lr_scheduler_classes = None
    learner._params = {"p": param}
    learner._module_optimizers = {"m": ["default"]}
    learner.get_optimizer = lambda module_id, name: opt
    learner.apply_gradients({"p": torch.tensor([1.0, 2.0, 3.0])})
    np.testing.assert_allclose(param.detach().numpy(), [0.0, -1.0, -2.0])
    # NaN: the stock path zeroes the NaN entry (nan_to_num) and steps with the rest
    learner.apply_gradients({"p": torch.tensor([float("nan"), 1.0, 0.0])})
    np.testing.assert_allclose(param.detach().numpy(), [0.0, -2.0, -2.0])


@pytest.mark.rllib
def test_env_runner_modules_stay_in_eval_mode_learner_trains(ray_session):
    cfg = _cfg()
    splits = split_by_time(synthetic_market(SYMBOLS, n_bars=900, seed=1), 0.7, 0.15, 5)
    algo = build_phase_config(cfg, 1, hierarchical_factory(cfg, splits.train, splits.val))
    algo = algo.build_algo()
    try:
        runner_module = algo.env_runner.module
        assert len(runner_module) == len(SYMBOLS)
        assert all(not m.training for mod in runner_module.values() for m in mod.modules())
        result = algo.train()
        assert result["env_runners"]["num_env_steps_sampled"] > 0
        assert all(not m.training for mod in runner_module.values() for m in mod.modules())
        learner_module = algo.learner_group._learner.module
        assert learner_module is not runner_module
        assert all(m.training for mod in learner_module.values() for m in mod.modules())
    finally:
        algo.stop()
