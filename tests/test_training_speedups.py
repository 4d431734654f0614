"""Training speed-ups that must not change what is learned: the fused gradient finiteness
check, the env runner's batched counters and action connector, the module-side Gaussian
sampling (all bit-identical to RLlib's stock path) and env-runner modules kept in eval mode."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.module_to_env.normalize_and_clip_actions import (
    NormalizeAndClipActions,
)
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner

from rl_trading.config import AppConfig
from rl_trading.data import split_by_time, synthetic_market
from rl_trading.training.algo_config import build_phase_config
from rl_trading.training.env_bridge import hierarchical_factory
from rl_trading.training.fast.env_runner import FastMultiAgentEnvRunner
from rl_trading.training.fast.learner import FastPPOTorchLearner

SYMBOLS = ["AAA", "BBB"]


def _cfg() -> AppConfig:
    return AppConfig.model_validate(
        {
            "seed": 3,
            "data": {"symbols": SYMBOLS, "embargo_bars": 5},
            "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 2},
            "policy": {"hidden_sizes": [16]},
            "resources": {"num_env_runners": 0, "rllib_fast_paths": True},
        }
    )


def _weights_after_two_iterations(
    learner_class: type | None = None,
    env_runner_cls: type | None = None,
    num_envs: int = 1,
    phase: int = 1,
    fast: bool = True,
) -> tuple[dict, dict]:
    """(weights, env-runner metrics) after two iterations of a phase of the `_cfg()` setup;
    `fast=False` is `resources.rllib_fast_paths: false` (asserted to run RLlib's classes)."""
    cfg = _cfg()
    cfg.resources.num_envs_per_env_runner = num_envs
    cfg.resources.rllib_fast_paths = fast
    market = synthetic_market(SYMBOLS, n_bars=900, seed=1)
    splits = split_by_time(market, 0.7, 0.15, 5)
    factory = hierarchical_factory(cfg, splits.train, splits.val)
    config = build_phase_config(cfg, phase, factory)
    if learner_class is not None:
        config = config.learners(learner_class=learner_class)
    if env_runner_cls is not None:
        config = config.env_runners(env_runner_cls=env_runner_cls)
    algo = config.build_algo()
    try:
        if not fast:
            assert type(algo.env_runner) is MultiAgentEnvRunner
            assert type(algo.learner_group._learner) is PPOTorchLearner
            assert all(not m.fast_acting for m in algo.env_runner.module.values())
        algo.train()
        runners = dict(
            algo.train()["env_runners"],
            vector_env_copies=algo.env_runner.env.copy,
            learner_pieces=[
                type(c).__name__ for c in algo.learner_group._learner._learner_connector.connectors
            ],
            connector_modules=getattr(algo.learner_group._learner, "connector_batch_modules", None),
        )
        return algo.learner_group.get_weights(), runners
    finally:
        algo.stop()


def _assert_same_weights(fast: dict, stock: dict, n_modules: int = len(SYMBOLS)) -> None:
    assert fast.keys() == stock.keys() and len(fast) == n_modules
    for pid in fast:
        for name, value in fast[pid].items():
            np.testing.assert_array_equal(value, stock[pid][name], err_msg=f"{pid}/{name}")


@pytest.mark.rllib
def test_fast_add_one_ts_twin_gives_rllibs_flags():
    """The learner connector's twin adds the loss mask, terminateds and truncateds as arrays;
    per episode chunk they equal the stock piece's lists (a cut chunk, a terminated and a
    truncated episode), and the episodes are extended alike."""
    import copy

    from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from rl_trading.training.fast.learner import FastAddOneTsToEpisodesAndTruncate

    def episodes() -> list:
        def one(n: int, terminated: bool, truncated: bool) -> SingleAgentEpisode:
            return SingleAgentEpisode(
                observations=list(range(n + 1)),
                actions=list(range(n)),
                rewards=[0.5] * n,
                terminated=terminated,
                truncated=truncated,
                len_lookback_buffer=0,
            ).to_numpy()

        return [one(3, False, False), one(5, True, False), one(4, False, True), one(1, True, False)]

    original = episodes()

    def run(piece: type) -> tuple[dict, list]:
        eps, batch = copy.deepcopy(original), {}
        piece()(rl_module=None, batch=batch, episodes=eps, shared_data={})
        return batch, eps

    stock, stock_eps = run(AddOneTsToEpisodesAndTruncate)
    fast, fast_eps = run(FastAddOneTsToEpisodesAndTruncate)
    assert stock.keys() == fast.keys() == {"loss_mask", "terminateds", "truncateds"}
    for column, by_key in stock.items():
        assert by_key.keys() == fast[column].keys()
        for key, items in by_key.items():
            (arr,) = fast[column][key]
            assert arr.dtype == np.bool_ and arr.tolist() == list(items), (column, key)
    assert [len(e) for e in fast_eps] == [len(e) for e in stock_eps] == [4, 6, 5, 2]
    assert [e.is_truncated for e in fast_eps] == [e.is_truncated for e in stock_eps]


def test_fast_learner_is_bit_identical_to_stock(ray_session):
    """Fused finiteness check, the joint multi-tensor Adam step and the learner connector's
    twin change no bit."""
    fast, fast_info = _weights_after_two_iterations(FastPPOTorchLearner)
    stock, stock_info = _weights_after_two_iterations(PPOTorchLearner)
    assert "FastAddOneTsToEpisodesAndTruncate" in fast_info["learner_pieces"]
    assert "AddOneTsToEpisodesAndTruncate" in stock_info["learner_pieces"]
    _assert_same_weights(fast, stock)


_COUNTERS = (
    "num_agent_steps_sampled",
    "num_agent_steps_sampled_lifetime",
    "num_module_steps_sampled",
    "num_module_steps_sampled_lifetime",
    "num_env_steps_sampled",
    "num_env_steps_sampled_lifetime",
    "num_episodes",
)


@pytest.mark.rllib
def test_fast_env_runner_is_bit_identical_to_stock(ray_session):
    """The counters-only runner (the fused runner's base): the same weights and sampled step
    counters as RLlib's MultiAgentEnvRunner, with 2 vectorised envs (the batched counters
    add up across sub-envs), its vector env skipping the per-step deep copy of observations
    (the env declares them fresh) where RLlib's makes it."""
    fast, fast_metrics = _weights_after_two_iterations(
        env_runner_cls=FastMultiAgentEnvRunner, num_envs=2
    )
    stock, stock_metrics = _weights_after_two_iterations(
        env_runner_cls=MultiAgentEnvRunner, num_envs=2
    )
    assert fast_metrics["vector_env_copies"] is False
    assert stock_metrics["vector_env_copies"] is True
    _assert_same_weights(fast, stock)
    for key in _COUNTERS:
        assert fast_metrics[key] == stock_metrics[key], key
    assert len(fast_metrics["num_agent_steps_sampled"]) == len(SYMBOLS)


@pytest.mark.rllib
@pytest.mark.parametrize("phase", [1, 2, 3])
def test_fused_env_runner_is_default_and_matches_stock(ray_session, phase, monkeypatch):
    """The default runner acts without the connector pipelines (stacked specialists, the
    meta on its own): after two iterations with 2 vectorised envs (episodes end and restart
    inside them) the weights equal those of RLlib's stock runner within float32 rounding of
    the stacked matmuls (one draw of the noise: the same torch RNG stream), and every step
    and episode counter is equal. The fused pass and its stacked specialists are checked to
    have run."""
    from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

    from rl_trading.training.fast import fused_runner

    cfg = _cfg()
    splits = split_by_time(synthetic_market(SYMBOLS, n_bars=900, seed=1), 0.7, 0.15, 5)
    config = build_phase_config(cfg, phase, hierarchical_factory(cfg, splits.train, splits.val))
    assert config.env_runner_cls is fused_runner.FusedActingEnvRunner
    calls = fused_runner.FusedActingEnvRunner.fused_sample_calls
    stacked_rows: list[tuple] = []  # the local env runner acts in this process
    own = fused_runner.StackedActor.dist_inputs

    def counted(actor, obs):
        stacked_rows.append(tuple(obs.shape))
        return own(actor, obs)

    monkeypatch.setattr(fused_runner.StackedActor, "dist_inputs", counted)
    fused, fused_metrics = _weights_after_two_iterations(PPOTorchLearner, num_envs=2, phase=phase)
    assert fused_runner.FusedActingEnvRunner.fused_sample_calls >= calls + 2
    # the specialists as one stack, the meta (phases 2-3) as a stack of one
    want = {(len(SYMBOLS), 2)} | ({(1, 2)} if phase > 1 else set())
    assert stacked_rows and {shape[:2] for shape in stacked_rows} == want
    stock, stock_metrics = _weights_after_two_iterations(
        PPOTorchLearner, env_runner_cls=MultiAgentEnvRunner, num_envs=2, phase=phase
    )
    n_modules = len(SYMBOLS) + (phase > 1)
    assert fused.keys() == stock.keys() and len(fused) == n_modules
    moved = 0.0
    for pid in fused:
        for name, value in fused[pid].items():
            np.testing.assert_allclose(value, stock[pid][name], rtol=1e-5, atol=1e-6)
            moved = max(moved, float(np.abs(value - stock[pid][name]).max()))
    for key in _COUNTERS:
        assert fused_metrics[key] == stock_metrics[key], key
    assert fused_metrics["num_episodes"] > 0
    assert fused_metrics["episode_return_mean"] == pytest.approx(
        stock_metrics["episode_return_mean"], rel=1e-5
    )


@pytest.mark.rllib
@pytest.mark.parametrize("phase", [2, 3])
def test_fast_paths_are_bit_identical_to_stock_in_phases_2_and_3(ray_session, phase):
    """Phase 2 (meta trains, specialists frozen and greedy) and phase 3 (all train): the fast
    counters-only env runner, fast learner (in phase 2 without the frozen specialists in its
    learner connector) and module-side acting give the weights of
    `rllib_fast_paths: false` (RLlib's classes) bit for bit. (The default fused runner and
    grouped learner agree within float32 rounding: `test_fused_env_runner_is_default_and_
    matches_stock` and tests/test_training_grouped.py.)"""
    learner = FastPPOTorchLearner
    fast, runners = _weights_after_two_iterations(
        learner, env_runner_cls=FastMultiAgentEnvRunner, phase=phase
    )
    stock, _ = _weights_after_two_iterations(phase=phase, fast=False)
    _assert_same_weights(fast, stock, n_modules=len(SYMBOLS) + 1)
    # phase 2: the learner connector saw the meta's episodes only (RLlib: every module's)
    specialists = {f"specialist_{s}" for s in SYMBOLS}
    assert runners["connector_modules"] == ({"meta"} if phase == 2 else {"meta"} | specialists)


@pytest.mark.rllib
def test_bf16_learner_is_bit_identical_to_stock_without_autocast(ray_session):
    """The bf16 learner's own update step (autocast skipped on CPU, the default) changes no
    bit against RLlib's stock classes. With CPU bf16 autocast the numbers differ by design
    (bf16 rounding); tests/test_training_config.py checks that path runs in bfloat16."""
    from rl_trading.training.fast.bf16_learner import BF16PPOTorchLearner

    assert not BF16PPOTorchLearner.cpu_autocast
    fast, _ = _weights_after_two_iterations(
        BF16PPOTorchLearner, env_runner_cls=FastMultiAgentEnvRunner
    )
    stock, _ = _weights_after_two_iterations(fast=False)
    _assert_same_weights(fast, stock)


def test_fast_action_connector_matches_rllib():
    """Unsquash (normalize) and clip of Box(-1, 1), Box(0, 1) and Discrete actions: the same
    values and dtypes as RLlib's connector, on copies (the sampled actions stay as they were)."""
    from gymnasium import spaces

    from rl_trading.training.fast.env_runner import FastNormalizeAndClipActions

    act_space = spaces.Dict(
        {
            "spec": spaces.Box(-1.0, 1.0, (1,), np.float32),
            "meta": spaces.Box(0.0, 1.0, (3,), np.float32),
            "disc": spaces.Discrete(3),
        }
    )
    obs_space = spaces.Dict({k: spaces.Box(-1.0, 1.0, (2,), np.float32) for k in act_space})
    rng = np.random.default_rng(0)

    def batch() -> dict:
        return {
            Columns.ACTIONS: {
                ("e0", "spec", "m_spec"): [rng.normal(0, 2, 1).astype(np.float32)],
                ("e0", "meta", "m_meta"): [rng.normal(0, 2, 3).astype(np.float32)],
                ("e0", "disc", "m_disc"): [np.int64(2)],
                ("e1", "spec", "m_spec"): [rng.normal(0, 2, 1).astype(np.float32)],
            }
        }

    for normalize, clip in ((True, False), (False, True), (True, True)):
        kwargs = {
            "input_observation_space": obs_space,
            "input_action_space": act_space,
            "normalize_actions": normalize,
            "clip_actions": clip,
        }
        stock_conn, fast_conn = (
            NormalizeAndClipActions(**kwargs),
            FastNormalizeAndClipActions(**kwargs),
        )
        b = batch()
        sampled = {k: [np.copy(v[0])] for k, v in b[Columns.ACTIONS].items()}
        stock = stock_conn(rl_module=None, batch=copy.deepcopy(b), episodes=[])
        fast = fast_conn(rl_module=None, batch=b, episodes=[])
        for key, items in stock[Columns.ACTIONS_FOR_ENV].items():
            got = fast[Columns.ACTIONS_FOR_ENV][key][0]
            assert np.asarray(got).dtype == np.asarray(items[0]).dtype, key
            np.testing.assert_array_equal(got, items[0], err_msg=str(key))
            np.testing.assert_array_equal(b[Columns.ACTIONS][key][0], sampled[key][0])


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


def test_fast_minibatch_iterator_yields_rllib_minibatches():
    """Same rows, in the same order, over wrap-arounds and per-epoch shuffles."""
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
    from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator

    from rl_trading.training.fast.learner import FastMiniBatchCyclicIterator

    def batch() -> MultiAgentBatch:
        rng = np.random.default_rng(0)
        return MultiAgentBatch(
            {
                mid: SampleBatch(
                    {"obs": torch.as_tensor(rng.normal(size=(n, 3))), "a": np.arange(n)}
                )
                for mid, n in (("m0", 70), ("m1", 70), ("m2", 45))
            },
            env_steps=70,
        )

    def run(cls: type) -> list:
        np.random.seed(4)
        it = cls(batch(), num_epochs=3, minibatch_size=16, shuffle_batch_per_epoch=True)
        return [
            {mid: (b["obs"].numpy().copy(), b["a"].copy()) for mid, b in mb.policy_batches.items()}
            for mb in it
        ]

    from rl_trading.training.fast.learner import _plain

    assert all(_plain(b) for b in batch().policy_batches.values())  # the fast path runs
    stock, fast = run(MiniBatchCyclicIterator), run(FastMiniBatchCyclicIterator)
    assert len(fast) == len(stock) > 10
    for got, want in zip(fast, stock, strict=True):
        assert got.keys() == want.keys()
        for mid in want:
            np.testing.assert_array_equal(got[mid][0], want[mid][0])
            np.testing.assert_array_equal(got[mid][1], want[mid][1])
