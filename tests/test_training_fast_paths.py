"""`resources.rllib_fast_paths`: one switch between the project's RLlib speed-ups and RLlib's
stock classes (same numbers, checkpoints interchangeable), the RL_TRADING_FAST_PATHS test
switch, and the agent order fixed by a connector piece (no RLlib class patched)."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns

from policies import compute_actions, module_spec
from policies.base import STOCK_ACTING_KEY
from rl_trading.config import CONFIG_DIR, FAST_PATHS_ENV, AppConfig, load_config
from rl_trading.data import split_by_time, synthetic_market
from rl_trading.errors import ConfigError
from rl_trading.training.agent_order import AgentOrder, OrderedAgents
from rl_trading.training.algo_config import build_phase_config
from rl_trading.training.env_bridge import hierarchical_factory
from rl_trading.training.fast.fused_runner import FusedActingEnvRunner
from rl_trading.training.fast.grouped_learner import GroupedPPOTorchLearner

SYMBOLS = ["AAA", "BBB"]


def _cfg(fast: bool) -> AppConfig:
    return AppConfig.model_validate(
        {
            "seed": 3,
            "data": {"symbols": SYMBOLS, "embargo_bars": 5},
            "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
            "policy": {"hidden_sizes": [16]},
            "resources": {"num_env_runners": 0, "rllib_fast_paths": fast},
        }
    )


@pytest.fixture(scope="module")
def splits():
    return split_by_time(synthetic_market(SYMBOLS, n_bars=900, seed=1), 0.7, 0.15, 5)


@pytest.mark.parametrize("phase", [1, 3])
def test_switch_selects_fast_or_stock_classes(splits, phase):
    for fast in (True, False):
        cfg = _cfg(fast)
        config = build_phase_config(cfg, phase, hierarchical_factory(cfg, splits.train, splits.val))
        runner_cls = config.env_runner_cls
        learner_cls = config.learner_class
        specs = config.rl_module_spec.rl_module_specs
        stock_acting = {bool(s.model_config.get(STOCK_ACTING_KEY)) for s in specs.values()}
        if fast:
            assert runner_cls is FusedActingEnvRunner
            assert learner_cls is GroupedPPOTorchLearner
            assert stock_acting == {False}
        else:  # RLlib's defaults: MultiAgentEnvRunner (env_runner_cls None) and PPOTorchLearner
            assert runner_cls is None and config.is_multi_agent
            assert learner_cls is PPOTorchLearner
            assert stock_acting == {True}
        # the agent order is fixed in both modes (the config's pipelines)
        assert isinstance(config, OrderedAgents)


def test_env_var_flips_the_default_and_set_wins(monkeypatch):
    default_yaml = CONFIG_DIR / "default.yaml"
    monkeypatch.delenv(FAST_PATHS_ENV, raising=False)
    assert AppConfig().resources.rllib_fast_paths is True
    assert load_config(default_yaml).resources.rllib_fast_paths is True
    monkeypatch.setenv(FAST_PATHS_ENV, "0")
    assert AppConfig().resources.rllib_fast_paths is False
    assert load_config(default_yaml).resources.rllib_fast_paths is False  # over the files
    over = load_config(default_yaml, ["resources.rllib_fast_paths=true"])
    assert over.resources.rllib_fast_paths is True  # an explicit --set still wins
    with pytest.raises(ConfigError, match="bf16"):  # the bf16 learner is a fast path
        load_config(default_yaml, ["resources.precision=bf16"])
    monkeypatch.setenv(FAST_PATHS_ENV, "maybe")
    with pytest.raises(ConfigError, match=FAST_PATHS_ENV):
        load_config(default_yaml)


def test_stock_acting_gives_the_same_actions():
    """Module-side Gaussian sampling / mean (fast) and RLlib's GetActions path (stock)."""
    obs_space = gym.spaces.Box(-5.0, 5.0, (6,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    cfg = _cfg(True)
    fast = module_spec(cfg, "specialist_AAA", obs_space, act_space).build()
    stock = module_spec(
        cfg, "specialist_AAA", obs_space, act_space, {STOCK_ACTING_KEY: True}
    ).build()
    stock.load_state_dict(fast.state_dict())
    fast.eval(), stock.eval()
    assert fast.fast_acting and not stock.fast_acting
    obs = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    batch = {Columns.OBS: torch.as_tensor(obs)}
    assert Columns.ACTIONS in fast.forward_exploration(batch)
    assert Columns.ACTIONS not in stock.forward_exploration(batch)  # RLlib samples
    for explore in (True, False):
        a = compute_actions(fast, obs, explore=explore, seed=7)
        b = compute_actions(stock, obs, explore=explore, seed=7)
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(  # sampling really happened (differs from the mean)
        compute_actions(stock, obs, explore=True, seed=7), compute_actions(stock, obs)
    )


def test_agent_order_piece_orders_items_by_episode_then_agent():
    """`AgentOrder` puts every multi-agent column's items in episode, then agent-id order,
    whatever order (set order: the hash seed) they came in; other columns are untouched."""

    class _Episode:
        def __init__(self, id_: str) -> None:
            self.id_ = id_

    episodes = [_Episode("e2"), _Episode("e1")]
    keys = [("e1", "b", "m"), ("e2", "b", "m"), ("e1", "a", "m"), ("e2", "a", "n")]
    batch = {
        "obs": {key: [i] for i, key in enumerate(keys)},
        "actions": {key: [i] for i, key in enumerate(reversed(keys))},
        "meta_column": [1, 2],
    }
    out = AgentOrder()(rl_module=None, batch=batch, episodes=episodes)
    want = [("e2", "a", "n"), ("e2", "b", "m"), ("e1", "a", "m"), ("e1", "b", "m")]
    assert list(out["obs"]) == list(out["actions"]) == want
    assert out["obs"][("e1", "a", "m")] == [2] and out["actions"][("e1", "a", "m")] == [1]
    assert out["meta_column"] == [1, 2]


@pytest.mark.rllib
@pytest.mark.parametrize("saved_fast", [True, False])
def test_checkpoint_restores_in_the_other_mode(ray_session, splits, tmp_path, saved_fast):
    """Saved with one mode, resumed with the other: same weights, and training continues."""
    from rl_trading.training.checkpoints import restore_algorithm_state

    def build(fast: bool):
        cfg = _cfg(fast)
        factory = hierarchical_factory(cfg, splits.train, splits.val)
        return build_phase_config(cfg, 1, factory).build_algo()

    algo = build(saved_fast)
    try:
        algo.train()
        saved = algo.learner_group.get_weights()
        algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    other = build(not saved_fast)
    try:
        assert (type(other.env_runner) is FusedActingEnvRunner) is (not saved_fast)
        restore_algorithm_state(other, tmp_path / "ckpt")
        restored = other.learner_group.get_weights()
        runner = other.env_runner.module.get_state()
        for pid in saved:
            for key, value in saved[pid].items():
                np.testing.assert_array_equal(restored[pid][key], value, err_msg=key)
                np.testing.assert_array_equal(runner[pid][key], value, err_msg=key)
        assert other.iteration == 1
        result = other.train()
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 256
        after = other.learner_group.get_weights()
        assert any(
            not np.array_equal(after[pid][k], saved[pid][k]) for pid in saved for k in saved[pid]
        )
    finally:
        other.stop()


@pytest.mark.rllib
def test_a_restore_reaches_every_env_runner_before_it_samples(ray_session, splits, tmp_path):
    """A phase restores its policies one by one; RLlib pushes each restore to the env runners
    fire-and-forget, one request in flight per runner, and drops a push sent while the last
    one is in flight. `restore_policies` then syncs once more and waits: every remote runner
    holds every restored policy's weights before the phase samples."""
    from rl_trading.training.checkpoints import restore_policies

    class SlowStateRunner(FusedActingEnvRunner):  # local: pickled by value for the workers
        """An env runner that takes 0.5 s to set its state, so a restore's pushes overlap."""

        def set_state(self, state):
            time.sleep(0.5)
            super().set_state(state)

    cfg = _cfg(True)
    factory = hierarchical_factory(cfg, splits.train, splits.val)
    src = build_phase_config(cfg, 3, factory).build_algo()
    try:
        src.train()  # weights that differ from a fresh build's
        saved = src.learner_group.get_weights()
        src.save_to_path(str(tmp_path / "ckpt"))
    finally:
        src.stop()
    config = build_phase_config(cfg, 3, factory).env_runners(
        num_env_runners=2, num_cpus_per_env_runner=0.5, env_runner_cls=SlowStateRunner
    )
    dst = config.build_algo()
    try:
        restore_policies(dst, tmp_path / "ckpt", sorted(saved))
        held = dst.env_runner_group.foreach_env_runner(
            lambda r: r.module.get_state(), local_env_runner=False
        )
        assert len(held) == 2
        for state in held:
            for pid in saved:
                for key, value in state[pid].items():
                    np.testing.assert_array_equal(value, saved[pid][key], err_msg=f"{pid} {key}")
    finally:
        dst.stop()
