"""Curriculum over episode difficulty: calm episodes first, the schedule, and RLlib wiring."""

from __future__ import annotations

import numpy as np
import pytest

from envs import HierarchicalTradingEnv
from rl_trading.config import AppConfig
from rl_trading.data import split_by_time, synthetic_market
from rl_trading.errors import ConfigError
from rl_trading.training.curriculum import curriculum_level
from tests.test_env_hierarchical import SMALL, make_market


def _env(seed: int = 0) -> HierarchicalTradingEnv:
    bars = make_market(n=600, seed=4)
    return HierarchicalTradingEnv(bars=bars, mode="specialists", seed=seed, **SMALL)


def _starts(env: HierarchicalTradingEnv, n: int = 60) -> list[int]:
    out = []
    for _ in range(n):
        env.reset()
        out.append(env._start)
    return out


def test_low_level_draws_only_the_calmest_episodes():
    env = _env()
    difficulty = env.episode_difficulty()
    assert len(difficulty) == env.n_bars - 1 - env.episode_length - env.first_bar + 1
    env.set_curriculum_level(0.25)
    starts = _starts(env)
    cutoff = np.sort(difficulty)[int(np.ceil(0.25 * len(difficulty))) - 1]
    drawn = difficulty[np.asarray(starts) - env.first_bar]
    assert (drawn <= cutoff).all()
    assert drawn.mean() < difficulty.mean()
    assert len(set(starts)) > 5  # still random within the easy set


def test_full_level_draws_exactly_as_without_curriculum():
    plain, full = _env(seed=3), _env(seed=3)
    full.set_curriculum_level(0.5)
    full.set_curriculum_level(1.0)
    assert _starts(plain) == _starts(full)
    with pytest.raises(ConfigError, match="curriculum level"):
        full.set_curriculum_level(0.0)


def test_schedule_ramps_to_one_in_listed_phases_only():
    cfg = AppConfig.model_validate(
        {
            "ppo": {"train_batch_size": 100, "minibatch_size": 50},
            "phases": {
                "phase1_timesteps": 1000,
                "phase3_timesteps": 1000,
                "curriculum": True,
                "curriculum_start": 0.25,
                "curriculum_ramp": 0.5,
            },
        }
    )
    levels = [curriculum_level(cfg, 3, i) for i in range(10)]
    assert levels[0] == 0.25 and levels[5:] == [1.0] * 5
    assert all(b > a for a, b in zip(levels[:5], levels[1:6], strict=True))
    assert curriculum_level(cfg, 1, 0) is None  # default: phase 3 only
    cfg.phases.curriculum = False
    assert curriculum_level(cfg, 3, 0) is None


@pytest.mark.rllib
def test_callback_widens_the_training_envs_each_iteration(ray_session):
    from rl_trading.training.algo_config import build_phase_config
    from rl_trading.training.env_bridge import hierarchical_factory, unwrap
    from rl_trading.training.runner import iteration_metrics

    symbols = ["AAA", "BBB"]
    cfg = AppConfig.model_validate(
        {
            "seed": 3,
            "data": {"symbols": symbols, "embargo_bars": 5},
            "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
            "policy": {"hidden_sizes": [8]},
            "phases": {
                "phase1_timesteps": 512,
                "curriculum": True,
                "curriculum_phases": [1],
                "curriculum_start": 0.2,
                "curriculum_ramp": 0.5,
            },
            "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 2},
        }
    )
    splits = split_by_time(synthetic_market(symbols, n_bars=1500, seed=1), 0.7, 0.15, 5)
    algo = build_phase_config(cfg, 1, hierarchical_factory(cfg, splits.train, splits.val))
    algo = algo.build_algo()
    try:

        def levels() -> list[float]:
            return [unwrap(e).curriculum_level for e in algo.env_runner.env.envs]

        assert levels() == [0.2, 0.2]
        seen = [iteration_metrics(algo.train())["curriculum_level"] for _ in range(3)]
        assert seen == pytest.approx([0.2, 0.6, 1.0])  # 4 iterations, ramp over 2
        assert levels() == [1.0, 1.0]
    finally:
        algo.stop()
