"""Phase configs on the real hierarchical env: policies, mapping, per-module learning rates,
SAC, and no deprecation warnings from our use of the RLlib API."""

from __future__ import annotations

import functools
import logging
import pickle
import warnings

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.sac import SACConfig

from rl_trading.config import AppConfig, load_config
from rl_trading.data import split_by_time, synthetic_market
from rl_trading.training.algo_config import build_phase_config
from rl_trading.training.env_bridge import hierarchical_factory
from rl_trading.training.mapping import (
    phase_iterations,
    phase_number,
    policy_ids,
    policy_mapping_fn,
)

SYMBOLS = ["AAA", "BBB"]
# RLlib 2.60 itself builds a deprecated RLModuleConfig inside every RLModule.__init__
# (ray/rllib/core/rl_module/rl_module.py), whatever the caller does: the one allowed record.
PROBE = "capture probe: this is deprecated"


def small_cfg(**extra) -> AppConfig:
    tree = {
        "seed": 5,
        "data": {"symbols": SYMBOLS, "embargo_bars": 5},
        "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
        "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
        "policy": {"hidden_sizes": [16]},
        "resources": {"num_env_runners": 0},
        "phases": {"phase1_timesteps": 300, "specialist_lr": 1e-4, "meta_lr": 5e-4},
    }
    for key, value in extra.items():
        tree.setdefault(key, {}).update(value)
    return AppConfig.model_validate(tree)


@pytest.fixture(scope="module")
def bars():
    market = synthetic_market(SYMBOLS, n_bars=900, seed=1)
    return split_by_time(market, 0.7, 0.15, 5)


def test_policy_mapping_is_module_level_and_picklable():
    assert policy_mapping_fn("meta", None) == "meta"
    assert policy_mapping_fn("specialist_EURUSD", None) == "specialist_EURUSD"
    shared = functools.partial(policy_mapping_fn, shared=True)
    assert pickle.loads(pickle.dumps(shared))("specialist_X", None) == "specialist"
    assert policy_ids(["meta", "specialist_B", "specialist_A"]) == [
        "specialist_A",
        "specialist_B",
        "meta",
    ]
    assert phase_number("phase2") == 2 and phase_number(3) == 3
    with pytest.raises(ValueError):
        policy_mapping_fn("trader", None)
    assert phase_iterations(small_cfg(), 1) == 3  # ceil(300 / 128)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.rllib
def test_phase_configs_build_without_deprecation_warnings(ray_session, bars):
    from ray.util.debug import reset_log_once

    cfg = small_cfg()
    factory = hierarchical_factory(cfg, bars.train, bars.val)
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("ray", "ray.rllib", "ray._common.deprecation")]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    reset_log_once()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            configs = {p: build_phase_config(cfg, p, factory) for p in (1, 2, 3)}
            variants = [
                build_phase_config(
                    small_cfg(resources={"precision": "bf16", "rllib_fast_paths": True}), 3, factory
                ),
                build_phase_config(small_cfg(phases={"algorithm": "sac"}), 3, factory),
            ]
            for c in [*configs.values(), *variants]:
                c.validate()
            algo = configs[1].build_algo()
            try:
                algo.train()
            finally:
                algo.stop()
            # a record of our own through RLlib's deprecation logger: proves the capture works
            logging.getLogger("ray._common.deprecation").warning(PROBE)
    finally:
        for lg, level in zip(loggers, old_levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    py_dep = [str(w.message) for w in caught if "deprecat" in str(w.message).lower()]
    py_dep += [
        str(w.message)
        for w in caught
        if issubclass(w.category, DeprecationWarning | PendingDeprecationWarning)
        and "ray" in str(w.filename)
    ]
    log_dep = [
        r.getMessage()
        for r in handler.records
        if "deprecat" in r.getMessage().lower() and PROBE not in r.getMessage()
    ]
    assert not py_dep, py_dep
    assert not log_dep, log_dep
    # Proof the capture works (RLlib's own internal RLModuleConfig notice is filtered at the
    # logger by policies/base.py, so it never reaches a handler): the probe was seen.
    assert any(PROBE in r.getMessage() for r in handler.records)

    p1, p2, p3 = configs[1], configs[2], configs[3]
    specs = ["specialist_AAA", "specialist_BBB"]
    assert set(p1.policies) == set(specs) and set(p1.policies_to_train) == set(specs)
    assert set(p2.policies) == {*specs, "meta"} and list(p2.policies_to_train) == ["meta"]
    assert set(p3.policies_to_train) == {*specs, "meta"}
    assert p2.lr == pytest.approx(5e-4)
    assert p3.get_config_for_module("meta").lr == pytest.approx(5e-4)
    assert p3.get_config_for_module("specialist_AAA").lr == pytest.approx(1e-4)
    assert p1.env_config["mode"] == "specialists" and p3.env_config["mode"] == "joint"
    assert p1.seed == 5 and p3.grad_clip == pytest.approx(0.5)


@pytest.mark.rllib
def test_shared_specialist_policy_and_sac(ray_session, bars):
    cfg = small_cfg(phases={"shared_specialist_policy": True})
    factory = hierarchical_factory(cfg, bars.train, bars.val)
    c1 = build_phase_config(cfg, 1, factory)
    assert set(c1.policies) == {"specialist"}
    spec = c1.rl_module_spec.rl_module_specs["specialist"]
    obs, _ = factory.spaces("joint")
    # The instrument one-hot is appended to the specialist observation.
    assert spec.observation_space.shape[0] == obs["specialist_AAA"].shape[0]
    env = factory.make("specialists")
    first, _ = env.reset(seed=0)
    assert first["specialist_AAA"][-2:].tolist() == [1.0, 0.0]
    assert first["specialist_BBB"][-2:].tolist() == [0.0, 1.0]
    algo = c1.build_algo()
    try:
        result = algo.train()
        assert "specialist" in result["learners"]
    finally:
        algo.stop()

    sac_cfg = small_cfg(phases={"algorithm": "sac"}, ppo={"train_batch_size": 64})
    sac = build_phase_config(sac_cfg, 1, hierarchical_factory(sac_cfg, bars.train, bars.val))
    assert isinstance(sac, SACConfig)  # the project's subclass (agent order, agent_order.py)
    algo = sac.build_algo()
    try:
        result = algo.train()
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] > 0
    finally:
        algo.stop()


@pytest.mark.rllib
def test_bf16_learner_runs_forward_in_bfloat16(ray_session, bars):
    from rl_trading.training.fast.bf16_learner import BF16PPOTorchLearner

    class CPUBF16(BF16PPOTorchLearner):
        cpu_autocast = True  # no GPU here: force the autocast path on CPU

    cfg = small_cfg(resources={"precision": "bf16", "rllib_fast_paths": True})
    factory = hierarchical_factory(cfg, bars.train, bars.val)
    config = build_phase_config(cfg, 1, factory)
    assert config.learner_class is BF16PPOTorchLearner
    algo = config.learners(learner_class=CPUBF16).build_algo()
    try:
        before = algo.learner_group.get_weights(["specialist_AAA"])["specialist_AAA"]
        result = algo.train()
        learner = algo.learner_group._learner
        assert learner.last_forward_dtype == torch.bfloat16
        stats = result["learners"]["specialist_AAA"]
        assert np.isfinite(stats["total_loss"])
        after = algo.learner_group.get_weights(["specialist_AAA"])["specialist_AAA"]
        assert any(not np.array_equal(before[k], after[k]) for k in before)
        assert all(np.asarray(v).dtype == np.float32 for v in after.values())
    finally:
        algo.stop()


@pytest.mark.rllib
def test_discrete_specialists_train_and_validate(ray_session, bars):
    from rl_trading.training.runner import driver_modules, sync_driver_modules
    from rl_trading.training.validation import validate

    cfg = small_cfg(env={"action_type": "discrete"})
    factory = hierarchical_factory(cfg, bars.train, bars.val)
    _, act = factory.spaces("joint")
    assert act["specialist_AAA"].n == 3
    algo = build_phase_config(cfg, 1, factory).build_algo()
    try:
        result = algo.train()
        assert np.isfinite(result["learners"]["specialist_AAA"]["total_loss"])
        modules = driver_modules(cfg, factory, 1)
        sync_driver_modules(algo, modules)
        metrics = validate(factory, "specialists", modules)
        assert metrics["val_steps"] > 50 and np.isfinite(metrics["val_sharpe"])
    finally:
        algo.stop()


def test_phase2_frozen_specialists_act_greedily_and_meta_horizon(ray_session, bars):
    """Phase 2: frozen specialists sample their mean (as in validation), the meta explores;
    phases.meta_gamma / meta_gae_lambda set phase 2's GAE, other phases keep ppo's."""
    from ray.rllib.core.columns import Columns

    from policies.base import GREEDY_KEY

    cfg = small_cfg(phases={"meta_gamma": 0.5, "meta_gae_lambda": 0.0})
    factory = hierarchical_factory(cfg, bars.train, bars.val)
    c1, c2 = build_phase_config(cfg, 1, factory), build_phase_config(cfg, 2, factory)
    assert (c1.gamma, c1.lambda_) == (cfg.ppo.gamma, cfg.ppo.gae_lambda)
    assert (c2.gamma, c2.lambda_) == (0.5, 0.0)
    specs = c2.rl_module_spec.rl_module_specs
    assert specs["specialist_AAA"].model_config[GREEDY_KEY] is True
    assert not specs["meta"].model_config.get(GREEDY_KEY)
    assert not c1.rl_module_spec.rl_module_specs["specialist_AAA"].model_config.get(GREEDY_KEY)
    greedy, meta = specs["specialist_AAA"].build(), specs["meta"].build()
    for module, dim in ((greedy, 1), (meta, 3)):
        obs = torch.randn(4, module.observation_space.shape[0])
        explore = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        infer = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        torch.testing.assert_close(explore[:, :dim], infer[:, :dim])
        dist = module.get_exploration_action_dist_cls().from_logits(explore)
        spread = (dist.sample() - infer[:, :dim]).abs().max().item()
        assert (spread < 1e-6) if module is greedy else (spread > 1e-3)


def test_learner_threads_use_the_env_runners_cpus_and_come_back():
    """A phase's learner takes one torch thread per env-runner CPU (they idle during the PPO
    update; Ray starts the trial with one), or the configured count; none with remote
    learners; the process's own count is back after the phase."""
    import torch

    from rl_trading.config import ResourcesConfig
    from rl_trading.training.algo_config import learner_thread_count, learner_threads

    assert learner_threads(ResourcesConfig(num_env_runners=2)) == 2
    assert learner_threads(ResourcesConfig(num_env_runners=3, num_cpus_per_env_runner=2)) == 6
    assert learner_threads(ResourcesConfig(num_env_runners=0)) == 1  # PBT trials, driver sampling
    assert learner_threads(ResourcesConfig(num_env_runners=2, learner_threads=5)) == 5
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with learner_thread_count(ResourcesConfig(num_env_runners=2)):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with learner_thread_count(ResourcesConfig(num_env_runners=2, num_learners=2)):
            assert torch.get_num_threads() == 1  # the learners are elsewhere
    finally:
        torch.set_num_threads(before)


def test_entropy_schedule_reaches_rllib_in_its_form(bars):
    """ppo.entropy_coeff from --set as a schedule [[step, value], ...] is handed to RLlib in
    its own schedule form (its learners interpolate it); a number stays a number."""
    sched = load_config(None, ["ppo.entropy_coeff=[[0, 0.01], [30000, 0]]"]).ppo
    assert sched.entropy_coeff == [(0, 0.01), (30000, 0.0)]
    cfg = small_cfg(ppo={"entropy_coeff": sched.entropy_coeff})
    factory = hierarchical_factory(cfg, bars.train, bars.val)
    assert build_phase_config(cfg, 1, factory).entropy_coeff == [[0, 0.01], [30000, 0.0]]
    cfg = small_cfg(ppo={"entropy_coeff": 0.02})
    assert build_phase_config(cfg, 1, factory).entropy_coeff == 0.02


def test_reward_normalizer_divides_by_the_running_std_and_keeps_its_moments():
    from ray.rllib.core.columns import Columns

    from rl_trading.training.reward_norm import RewardNormalizer

    rng = np.random.default_rng(0)
    piece = RewardNormalizer(clip=10.0)
    seen = []
    for k in range(3):
        r = rng.normal(0.001, 0.01 * (k + 1), 500).astype(np.float32)
        seen.append(r.astype(np.float64))
        out = piece(rl_module=None, batch={"m": {Columns.REWARDS: r.copy()}}, episodes=[])
        std = np.concatenate(seen).std()
        np.testing.assert_allclose(out["m"][Columns.REWARDS], np.clip(r / std, -10, 10),
                                   rtol=1e-5)  # fmt: skip
        assert out["m"][Columns.REWARDS].dtype == np.float32
    fresh = RewardNormalizer()
    fresh.set_state(piece.get_state())
    assert fresh.update("m", np.zeros(0)) == pytest.approx(np.concatenate(seen).std())
    big = piece(rl_module=None, batch={"m": {Columns.REWARDS: np.array([1e3])}}, episodes=[])
    assert big["m"][Columns.REWARDS][0] == 10.0  # clipped
    # only the loss mask's timesteps count (not PPO's bootstrap step, not zero padding)
    masked = RewardNormalizer()
    batch = {"m": {Columns.REWARDS: np.array([1.0, 2.0, 3.0, 0.0, 0.0]),
                   Columns.LOSS_MASK: np.array([True, True, True, False, False])}}  # fmt: skip
    out = masked(rl_module=None, batch=batch, episodes=[])
    assert masked.stats["m"][0] == 3
    np.testing.assert_allclose(
        out["m"][Columns.REWARDS][:3], np.array([1, 2, 3]) / np.std([1, 2, 3])
    )


@pytest.mark.rllib
def test_reward_normalize_refuses_a_pipeline_it_cannot_join():
    """reward.normalize never trains silently without its piece: a learner pipeline with no
    NumpyToTensor to place it before is an error, not a skipped normaliser."""
    from types import SimpleNamespace

    from rl_trading.errors import RLTradingError
    from rl_trading.training.agent_order import REWARD_NORMALIZE, OrderedAgents

    class Stock:
        def build_learner_connector(self, *args, **kwargs):
            return SimpleNamespace(connectors=[])

    class Config(OrderedAgents, Stock):
        learner_config_dict = {REWARD_NORMALIZE: True}

    with pytest.raises(RLTradingError, match="reward.normalize"):
        Config().build_learner_connector()
    Config.learner_config_dict = {}
    assert Config().build_learner_connector().connectors == []


def test_reward_normalize_puts_the_piece_before_the_advantages(ray_session, bars, tmp_path):
    """The normaliser sits before PPO's advantages, counts each module's real timesteps, and
    its moments survive a checkpoint (restored with the algorithm)."""
    from ray.rllib.algorithms.algorithm import Algorithm
    from ray.rllib.connectors.learner import GeneralAdvantageEstimation

    from rl_trading.training.reward_norm import RewardNormalizer

    for normalize in (False, True):
        cfg = small_cfg(reward={"normalize": normalize})
        algo = build_phase_config(cfg, 1, hierarchical_factory(cfg, bars.train, bars.val))
        algo = algo.build_algo()
        try:
            algo.train()
            pipeline = algo.learner_group._learner._learner_connector
            kinds = [type(c) for c in pipeline.connectors]
            assert (RewardNormalizer in kinds) is normalize
            if normalize:
                assert kinds.index(RewardNormalizer) < kinds.index(GeneralAdvantageEstimation)
                piece = pipeline.connectors[kinds.index(RewardNormalizer)]
                counts = {m: int(s[0]) for m, s in piece.stats.items()}
                assert set(counts) == {"specialist_AAA", "specialist_BBB"}
                assert all(c >= 128 for c in counts.values())  # every trained row
                algo.save_to_path(tmp_path / "ckpt")
                back = Algorithm.from_checkpoint(tmp_path / "ckpt")
                try:
                    again = back.learner_group._learner._learner_connector
                    moved = [c for c in again.connectors if isinstance(c, RewardNormalizer)]
                    assert moved[0].stats == piece.stats
                finally:
                    back.stop()
        finally:
            algo.stop()


@pytest.mark.parametrize("fast", [True, False])
def test_reward_normalize_learners_keep_the_normaliser_in_their_state(bars, fast):
    """Under reward.normalize every learner the project configures carries the learner
    connector's state into its checkpoints (PPO on both paths, SAC); without it the stock
    path keeps RLlib's own learner."""
    from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

    from rl_trading.rllib_adapter import LearnerConnectorState

    res = {"rllib_fast_paths": fast}
    for algorithm in ("ppo", "sac"):
        cfg = small_cfg(reward={"normalize": True}, phases={"algorithm": algorithm},
                        resources=res)  # fmt: skip
        config = build_phase_config(cfg, 1, hierarchical_factory(cfg, bars.train, bars.val))
        assert issubclass(config.learner_class, LearnerConnectorState), (algorithm, fast)
    plain = small_cfg(resources={"rllib_fast_paths": False})
    config = build_phase_config(plain, 1, hierarchical_factory(plain, bars.train, bars.val))
    assert config.learner_class is PPOTorchLearner
