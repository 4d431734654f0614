"""RLlib algorithm configs (new API stack) for the three phases of the hierarchy."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune import PlacementGroupFactory

from policies import model_config_for, module_spec
from policies.base import GREEDY_KEY, STOCK_ACTING_KEY
from policies.pretrained import ENCODER_KEY, PretrainedCNNLSTMModule
from rl_trading.config import AppConfig
from rl_trading.rllib_adapter import (
    StatefulPPOTorchLearner,
    StatefulSACTorchLearner,
    tune_default_storage,
)
from rl_trading.training.agent_order import REWARD_NORMALIZE, OrderedPPOConfig, OrderedSACConfig
from rl_trading.training.callbacks import TradingCallbacks
from rl_trading.training.encoder_learner import EncoderPPOTorchLearner
from rl_trading.training.env_bridge import EnvFactory, all_agent_spaces
from rl_trading.training.fast.bf16_learner import BF16PPOTorchLearner
from rl_trading.training.fast.fused_runner import FusedActingEnvRunner
from rl_trading.training.fast.grouped_learner import GroupedPPOTorchLearner
from rl_trading.training.mapping import (
    META,
    PHASE_MODES,
    is_specialist,
    phase_number,
    policy_ids,
    policy_mapping_fn,
)


def phase_policies(factory: EnvFactory, phase: int) -> tuple[list[str], list[str]]:
    """(all policy ids present, policy ids trained) in a phase."""
    obs, _ = all_agent_spaces(factory)
    specialists = [p for p in policy_ids(obs, factory.shared) if is_specialist(p)]
    if phase == 1:
        return specialists, specialists
    everyone = [*specialists, META]
    return everyone, ([META] if phase == 2 else everyone)


def _module_specs(
    cfg: AppConfig,
    factory: EnvFactory,
    pids: list[str],
    sac: bool,
    frozen: tuple[str, ...] | list[str] = (),
) -> dict[str, RLModuleSpec]:
    obs, act = all_agent_spaces(factory)
    layout = factory.model_config("joint")
    agent_of = {}
    for aid in obs:
        agent_of.setdefault(policy_mapping_fn(aid, shared=factory.shared), aid)
    specs = {}
    for pid in pids:
        aid = agent_of[pid]
        if sac:  # RLlib's default SAC module (twin-Q critic); sizes from the policy config
            specs[pid] = RLModuleSpec(
                observation_space=obs[aid],
                action_space=act[aid],
                model_config={"fcnet_hiddens": list(cfg.policy.hidden_sizes)},
            )
        else:
            # frozen policies act greedily while the others explore, as they will in validation
            extra = {GREEDY_KEY: True} if pid in frozen else {}
            if not cfg.resources.rllib_fast_paths:
                extra[STOCK_ACTING_KEY] = True
            if pid in factory.encoders:  # a registered CNN-LSTM encodes the window
                specs[pid] = pretrained_spec(
                    cfg, obs[aid], act[aid], {**layout, **extra}, factory.encoders[pid]
                )
            else:
                specs[pid] = module_spec(cfg, pid, obs[aid], act[aid], {**layout, **extra})
    return specs


def pretrained_spec(
    cfg: AppConfig, obs_space: Any, act_space: Any, extra: dict[str, Any], encoder: dict
) -> RLModuleSpec:
    """Spec of a specialist over a supervised CNN-LSTM encoder (`policy.cnn_lstm_model`)."""
    return RLModuleSpec(
        module_class=PretrainedCNNLSTMModule,
        observation_space=obs_space,
        action_space=act_space,
        model_config=model_config_for(cfg.policy, {**extra, ENCODER_KEY: encoder}),
    )


def _fast_paths(config: AlgorithmConfig, precision: str, sac: bool) -> AlgorithmConfig:
    """The project's env runner and PPO learner in place of RLlib's stock classes."""
    # RLlib's runner with batched step counters and fused acting (same episodes within float32
    # rounding, see fast/fused_runner.py)
    config = config.env_runners(env_runner_cls=FusedActingEnvRunner)
    if sac:
        return config
    if precision == "bf16":
        return config.learners(learner_class=BF16PPOTorchLearner)
    # RLlib's PPO loss; same-shape MLP policies updated as one stacked network
    return config.learners(learner_class=GroupedPPOTorchLearner)


def learner_threads(res: Any) -> int:
    """Torch threads for a learner in the phase's own process: `resources.learner_threads`, or
    (0) one per CPU reserved for the env runners, at least 1. Sampling and the PPO update take
    turns, so those cores are idle while the learner runs (Ray starts its actors with 1)."""
    if res.learner_threads:
        return int(res.learner_threads)
    return max(1, int(round(res.num_env_runners * res.num_cpus_per_env_runner)))


@contextlib.contextmanager
def learner_thread_count(res: Any) -> Iterator[None]:
    """Within the block, torch runs on `learner_threads(res)` threads when the learner lives
    in this process (`num_learners` 0); the process's own count comes back after it."""
    before = torch.get_num_threads()
    if res.num_learners == 0:
        torch.set_num_threads(learner_threads(res))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_phase_config(
    cfg: AppConfig,
    phase: int | str,
    factory: EnvFactory,
    callbacks: type | None = None,
) -> AlgorithmConfig:
    """PPO (or SAC) config of phase 1 (specialists), 2 (meta, specialists frozen) or 3 (joint).

    Phase 3 gives specialists `phases.specialist_lr` and meta `phases.meta_lr` through
    per-module config overrides; phase 2 trains only `meta` (at `phases.meta_lr`).
    """
    phase = phase_number(phase)
    mode = PHASE_MODES[phase]
    sac = cfg.phases.algorithm == "sac"
    pids, trained = phase_policies(factory, phase)
    mapping = functools.partial(policy_mapping_fn, shared=factory.shared)
    res = cfg.resources
    ppo = cfg.ppo
    # RLlib's batch and minibatch sizes are per learner: with N learners each takes 1/N of the
    # rollout (the phase budget stays ppo.train_batch_size per iteration) and of every minibatch
    # (gradients are averaged over learners: the update is that of one learner)
    shares = max(1, res.num_learners)

    # RLlib's configs whose connector pipelines order agents independently of the hash seed
    # (training/agent_order.py)
    config: AlgorithmConfig = OrderedSACConfig() if sac else OrderedPPOConfig()

    config = (
        config.environment(factory.rllib_env_name, env_config=factory.train_config(mode))
        .framework("torch")
        .env_runners(
            num_env_runners=res.num_env_runners,
            num_envs_per_env_runner=res.num_envs_per_env_runner,
            num_cpus_per_env_runner=res.num_cpus_per_env_runner,
            custom_resources_per_env_runner=dict(res.custom_resources_per_env_runner),
        )
        .learners(
            num_learners=res.num_learners,
            num_gpus_per_learner=res.num_gpus_per_learner,
            learner_config_dict={REWARD_NORMALIZE: cfg.reward.normalize},
        )
        # a list, not a set: module build order (torch init draws) must not depend on hash seeds
        .multi_agent(policies=list(pids), policy_mapping_fn=mapping, policies_to_train=trained)
        .rl_module(
            rl_module_spec=MultiRLModuleSpec(
                rl_module_specs=_module_specs(
                    cfg, factory, pids, sac, [p for p in pids if p not in trained]
                )
            )
        )
        .fault_tolerance(
            restart_failed_env_runners=res.restart_failed_env_runners,
            max_num_env_runner_restarts=res.max_env_runner_restarts,
            delay_between_env_runner_restarts_s=res.env_runner_restart_delay_s,
        )
        .debugging(seed=cfg.seed)
        .reporting(metrics_num_episodes_for_smoothing=20)
    )
    base_lr = {1: ppo.lr, 2: cfg.phases.meta_lr, 3: ppo.lr}[phase]
    if sac:
        config = config.training(
            actor_lr=base_lr,
            critic_lr=base_lr,
            gamma=ppo.gamma,
            grad_clip=ppo.grad_clip,
            train_batch_size_per_learner=ppo.minibatch_size // shares,
            num_steps_sampled_before_learning_starts=min(ppo.train_batch_size, 1000),
            replay_buffer_config={"type": "MultiAgentEpisodeReplayBuffer", "capacity": 50_000},
        )
    else:
        gamma, lam = ppo.gamma, ppo.gae_lambda
        if phase == 2:  # only the meta trains: its own horizon (phases.meta_gamma / _lambda)
            ph = cfg.phases
            gamma = ph.meta_gamma if ph.meta_gamma is not None else gamma
            lam = ph.meta_gae_lambda if ph.meta_gae_lambda is not None else lam
        config = config.training(
            lr=base_lr,
            gamma=gamma,
            lambda_=lam,
            clip_param=ppo.clip_param,
            entropy_coeff=(  # a float, or RLlib's schedule form [[step, value], ...]
                [list(p) for p in ppo.entropy_coeff]
                if isinstance(ppo.entropy_coeff, list)
                else ppo.entropy_coeff
            ),
            vf_loss_coeff=ppo.vf_loss_coeff,
            grad_clip=ppo.grad_clip,
            train_batch_size_per_learner=ppo.train_batch_size // shares,
            minibatch_size=ppo.minibatch_size // shares,
            num_epochs=ppo.num_epochs,
        )
    if res.rllib_fast_paths:  # the departures from stock RLlib (rl_trading/training/fast/)
        config = _fast_paths(config, precision=res.precision, sac=sac)
    elif factory.encoders and not sac:  # stock PPO learner + the encoder's optimizers
        config = config.learners(learner_class=EncoderPPOTorchLearner)
    elif cfg.reward.normalize and not sac:  # stock PPO learner whose checkpoints keep the
        config = config.learners(learner_class=StatefulPPOTorchLearner)  # normaliser's moments
    if sac and cfg.reward.normalize:  # RLlib's SAC learner, the same (on either path)
        config = config.learners(learner_class=StatefulSACTorchLearner)
    if phase == 3:
        overrides: dict[str, Any] = {}
        for pid in pids:
            lr = cfg.phases.meta_lr if pid == META else cfg.phases.specialist_lr
            overrides[pid] = (
                config.overrides(actor_lr=lr, critic_lr=lr) if sac else config.overrides(lr=lr)
            )
        config = config.rl_module(algorithm_config_overrides_per_module=overrides)
    if callbacks is None:
        callbacks = TradingCallbacks
    config = config.callbacks(callbacks)
    return config


@contextlib.contextmanager
def algo_logdir(path: str | Path) -> Iterator[Path]:
    """Algorithms built inside put their (empty) Trainable log folder under `path`.

    An Algorithm is a Tune Trainable: built outside a Tune trial, it makes a timestamped folder
    under Tune's default `~/ray_results` (Trainable._setup_logdir) that nothing ever writes to.
    RLlib 2.60 has no logger_creator argument any more, so the default is pointed at `path`
    for the length of the build.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tune_default_storage(str(path)):
        yield path


def build_algorithm(config: AlgorithmConfig, logdir: str | Path) -> Any:
    """`config.build_algo()` with the Trainable log folder under `logdir` (not ~/ray_results)."""
    with algo_logdir(logdir):
        return config.build_algo()


def release_algorithm(algo: Any) -> None:
    """`algo.stop()`, then remove its Trainable log folder when nothing was written there."""
    logdir = getattr(algo, "logdir", None)
    try:
        algo.stop()
    finally:
        if logdir:
            with contextlib.suppress(OSError):
                Path(logdir).rmdir()  # only succeeds when empty


def trial_resources(config: AlgorithmConfig, node_resource: str | None = None) -> Any:
    """Tune resources of a phase trial: the Algorithm's own request (`default_resource_request`:
    bundle 0 for its main process, then the env runners' and learners' bundles).

    The trial process plays the part of the former driver loop, which Ray never counted: bundle
    0 keeps the learner's GPU and custom resources but no CPU, so what fits a local Ray is what
    fitted before (`ray_utils.check_env_runner_cpus`). `node_resource` (`node:<ip>` of the
    driver, `ray_utils.driver_node_resource`) pins the trial to the driver's machine, where the
    run dir is. RLlib puts env runner i in bundle i, so bundle 0 must not be empty: without a
    pin it holds a token byte of memory.
    """
    request = config.algo_class.default_resource_request(config)
    bundles = [dict(b) for b in request.bundles]
    if request.head_bundle_is_empty:
        bundles.insert(0, {})
    head = {k: v for k, v in bundles[0].items() if k != "CPU" and v}
    if node_resource:
        head[node_resource] = 0.001
    bundles[0] = head or {"memory": 1}
    return PlacementGroupFactory(bundles, strategy=request.strategy)
