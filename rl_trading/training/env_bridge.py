"""The training side of the environments: env configs per mode, the shared-specialist wrapper,
spaces for the module specs and creating an env in the driver (validation).

Phases only talk to an :class:`EnvFactory`, so the RLlib machinery is independent of how the
hierarchical env is built (tests use a tiny stand-in env through the same interface).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from envs.common import prepare_instrument
from rl_trading.config import resolve_calendar
from rl_trading.supervised.encoder import encoder_lineage, encoder_model_config, resolve_encoder
from rl_trading.supervised.signals import observed_market
from rl_trading.training.mapping import META, SPECIALIST_PREFIX
from rl_trading.training.preprocessing import training_preprocessing

SHARED_SUFFIX = "-shared-specialist"


def env_creator(name: str) -> Callable[[dict], MultiAgentEnv]:
    """The creator registered under `name` with `ray.tune.register_env`."""
    from ray.tune.registry import ENV_CREATOR, _global_registry  # heavy: ray

    try:
        return _global_registry.get(ENV_CREATOR, name)
    except (KeyError, ValueError):
        raise ValueError(f"environment {name!r} is not registered") from None


class InstrumentOneHot(MultiAgentEnv):
    """Appends a one-hot instrument id to each specialist's observation (shared policy)."""

    def __init__(self, inner: MultiAgentEnv):
        super().__init__()
        self.inner = inner
        agents = list(getattr(inner, "possible_agents", None) or inner.agents)
        self._specialists = sorted(a for a in agents if a.startswith(SPECIALIST_PREFIX))
        self._index = {a: i for i, a in enumerate(self._specialists)}
        self.possible_agents = agents
        self.agents = list(getattr(inner, "agents", agents))
        n = len(self._specialists)
        spaces = {}
        for aid in agents:
            space = inner.observation_space[aid] if _is_dict(inner.observation_space) else None
            space = space or inner.get_observation_space(aid)
            if aid in self._index:
                low = np.concatenate([space.low.ravel(), np.zeros(n)]).astype(np.float32)
                high = np.concatenate([space.high.ravel(), np.ones(n)]).astype(np.float32)
                space = gym.spaces.Box(low, high, dtype=np.float32)
            spaces[aid] = space
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = inner.action_space
        self.observation_spaces = dict(spaces)
        self.action_spaces = {a: inner.action_space[a] for a in agents}

    def _augment(self, obs: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for aid, value in obs.items():
            if aid in self._index:
                hot = np.zeros(len(self._specialists), dtype=np.float32)
                hot[self._index[aid]] = 1.0
                value = np.concatenate([np.asarray(value, np.float32).ravel(), hot])
            out[aid] = value
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset the inner env and augment the specialists' observations."""
        obs, infos = self.inner.reset(seed=seed, options=options)
        self.agents = list(getattr(self.inner, "agents", self.agents))
        return self._augment(obs), infos

    def step(self, action_dict: dict[str, Any]):
        """Step the inner env and augment the specialists' observations."""
        obs, rew, term, trunc, infos = self.inner.step(action_dict)
        self.agents = list(getattr(self.inner, "agents", self.agents))
        return self._augment(obs), rew, term, trunc, infos

    def close(self) -> None:
        """Close the inner env."""
        self.inner.close()

    @property
    def unwrapped_env(self) -> Any:
        """The innermost (PettingZoo) environment."""
        return unwrap(self.inner)


def _is_dict(space: Any) -> bool:
    return isinstance(space, gym.spaces.Dict)


def unwrap(env: Any) -> Any:
    """The innermost env under RLlib / project wrappers (for episode summaries)."""
    seen = 0
    while seen < 10:
        seen += 1
        if isinstance(env, InstrumentOneHot):
            env = env.inner
        elif hasattr(env, "par_env"):
            env = env.par_env
        elif isinstance(env, gym.Wrapper) or (
            hasattr(env, "env") and not isinstance(env, gym.Env)
        ):  # gym wrappers (e.g. the checkers around a vector slot) and RLlib's wrappers
            env = env.env
        else:
            break
    return getattr(env, "unwrapped", env)


class SharedSpecialistEnv(InstrumentOneHot):
    """The hierarchical env with one-hot instrument ids (shared specialist policy), built from
    an env_config alone, like :class:`envs.registration.HierarchicalRLlibEnv`."""

    def __init__(self, config: dict | None = None):
        from envs.registration import HierarchicalRLlibEnv  # heavy: ray, sqlalchemy

        super().__init__(HierarchicalRLlibEnv(config or {}))


def register_shared(base_name: str) -> str:
    """Register `<base>-shared-specialist` (one-hot instrument ids appended); return its name."""
    from ray.tune.registry import register_env  # heavy: ray

    name = base_name + SHARED_SUFFIX
    base = env_creator(base_name)
    register_env(name, lambda config, _base=base: InstrumentOneHot(_base(config)))
    return name


@dataclass
class EnvFactory:
    """The env RLlib samples from + env configs for training and validation in each mode.

    `env_name` is an importable env class (`config -> env`, what checkpoints should reference)
    or a name registered with `ray.tune.register_env` (e.g. the tests' stand-in env);
    `shared_env` is the class used with a shared specialist policy (else the registered
    `<env_name>-shared-specialist`). `metadata` is what every checkpoint of this env carries
    (training config, preprocessing, data reference; see `checkpoints.save_algorithm`).
    """

    env_name: str | type
    train_config: Callable[[str], dict[str, Any]]
    val_config: Callable[[str], dict[str, Any]] | None = None
    timeframe: str = "1m"
    shared: bool = False
    shared_env: type | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    # the run's bars per year (config.resolve_calendar); None: `timeframe` on the 24h calendar
    periods_per_year: float | None = None
    # policy id -> `model_config["encoder"]` of a pretrained-encoder specialist
    # (`policy.cnn_lstm_model`, policies/pretrained.py); empty: the configured models
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _spaces: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def rllib_env_name(self) -> str | type:
        """What RLlib samples from (the shared-specialist variant when `shared`)."""
        if not self.shared:
            return self.env_name
        if self.shared_env is not None:
            return self.shared_env
        if isinstance(self.env_name, type):
            raise ValueError(f"no shared-specialist variant of {self.env_name.__name__}")
        return register_shared(self.env_name)

    def make(self, mode: str, validation: bool = False) -> MultiAgentEnv:
        """A fresh env of `mode` in this process (validation env when `validation`)."""
        cfg_fn = self.val_config if validation else self.train_config
        if cfg_fn is None:
            raise ValueError("no validation data configured")
        env = self.rllib_env_name
        creator = env if isinstance(env, type) else env_creator(env)
        return creator(cfg_fn(mode))

    def spaces(self, mode: str) -> tuple[dict[str, gym.Space], dict[str, gym.Space]]:
        """Per-agent observation and action spaces of `mode` (built once, cached)."""
        if mode not in self._spaces:
            env = self.make(mode)
            agents = list(getattr(env, "possible_agents", None) or env.agents)
            obs = {a: env.get_observation_space(a) for a in agents}
            act = {a: env.get_action_space(a) for a in agents}
            self._spaces[mode] = (obs, act)
            env.close()
        return self._spaces[mode]

    def model_config(self, mode: str) -> dict[str, Any]:
        """Obs-layout hints (`window_size`, `n_features`) for the window models, if any."""
        env = self.make(mode)
        inner = unwrap(env)
        out = {}
        layout = getattr(inner, "obs_layout", None)
        layout = layout() if callable(layout) else layout
        if isinstance(layout, dict):
            out = {k: int(v) for k, v in layout.items() if k in ("window_size", "n_features")}
        env.close()
        return out


def all_agent_spaces(factory: EnvFactory) -> tuple[dict[str, gym.Space], dict[str, gym.Space]]:
    """Spaces of every agent, the meta agent from `joint` mode and specialists from any mode."""
    obs, act = factory.spaces("joint")
    if META not in obs:
        raise ValueError("the joint-mode env has no 'meta' agent")
    return obs, act


def fit_scalers(cfg: Any, bars: dict[str, Any]) -> dict[str, Any]:
    """Feature scalers per instrument, fit on the training bars only."""
    return {sym: prepare_instrument(frame, None, sym).scaler for sym, frame in bars.items()}


def hierarchical_factory(
    cfg: Any,
    train_bars: dict[str, Any],
    val_bars: dict[str, Any] | None = None,
    source: Any = None,
    encoder: Any = None,
) -> EnvFactory:
    """EnvFactory of the project's HierarchicalTradingEnv; scalers fit on `train_bars`.

    `source` is the config the bars were loaded with (`observed_market(source)` then a time
    split, as `session.load_splits` does): the env configs and checkpoints then carry a data
    reference instead of the bars. Without it the bars travel inline. The calendar is resolved
    once from `train_bars` (`config.resolve_calendar`), so training envs, validation envs and
    the validation metrics annualise with the same bars per year. With
    `policy.cnn_lstm_model` the specialists get the registered CNN-LSTM as their encoder
    (`encoder`: the already resolved `supervised.encoder.EncoderSource`, else resolved here),
    mapped from each instrument's scaler, and the checkpoints record it (`metadata["encoder"]`).
    """
    # heavy: ray, sqlalchemy
    from envs.registration import HierarchicalRLlibEnv, data_reference, make_env_config

    cfg = resolve_calendar(cfg, train_bars)
    scalers = fit_scalers(cfg, train_bars)
    if source is not None and source.data.db_url and source.data.source != "sql":
        # a database URL the source never reads is no part of where the bars come from (a
        # redacted one would otherwise stop the env runners reloading sample / file bars)
        source = source.model_copy(update={"data": source.data.model_copy(update={"db_url": None})})
    train_ref = data_reference(source, train_bars) if source is not None else None
    val_ref = data_reference(source, val_bars) if source is not None and val_bars else None
    # a process reloading the bars from a reference rebuilds the signal columns the same way
    make = make_env_config
    if cfg.supervised.signals_enabled:
        make = functools.partial(make_env_config, observe=observed_market)
    train = _ModeConfigs(make, cfg, train_bars, False, scalers, train_ref)
    val = _ModeConfigs(make, cfg, val_bars, True, scalers, val_ref) if val_bars else None
    metadata = checkpoint_metadata(cfg, train_bars, scalers, train_ref)
    encoders: dict[str, dict[str, Any]] = {}
    if cfg.policy.cnn_lstm_model:
        encoder = encoder or resolve_encoder(cfg)
        lr = cfg.policy.encoder_lr
        encoders = {
            SPECIALIST_PREFIX + sym: encoder_model_config(encoder, scaler, lr)
            for sym, scaler in scalers.items()
        }
        metadata["encoder"] = encoder_lineage(encoder, lr)
    return EnvFactory(
        env_name=HierarchicalRLlibEnv,
        train_config=train,
        val_config=val,
        timeframe=cfg.data.timeframe,
        shared=cfg.phases.shared_specialist_policy,
        shared_env=SharedSpecialistEnv,
        metadata=metadata,
        periods_per_year=cfg.data.periods_per_year,
        encoders=encoders,
    )


def checkpoint_metadata(
    cfg: Any, train_bars: dict[str, Any], scalers: dict[str, Any], data_ref: Any = None
) -> dict[str, Any]:
    """What travels with every checkpoint: the training config (credentials redacted), the
    preprocessing (features, window, fitted scalers, training range) and the data reference."""
    from envs.registration import safe_config  # heavy: ray, sqlalchemy

    pre = training_preprocessing(cfg, train_bars, scalers)
    return {"config": safe_config(cfg), "preprocessing": pre, "data_ref": data_ref}


class _ModeConfigs:
    """mode -> env_config, built once per mode (the packed bars are reused)."""

    def __init__(
        self, make: Callable, cfg: Any, bars: Any, eval_mode: bool, scalers: Any, ref: Any = None
    ):
        self._make, self._cfg, self._bars = make, cfg, bars
        self._eval, self._scalers, self._ref = eval_mode, scalers, ref
        self._cache: dict[str, dict[str, Any]] = {}

    def __call__(self, mode: str) -> dict[str, Any]:
        if mode not in self._cache:
            self._cache[mode] = self._make(
                self._cfg,
                self._bars,
                mode=mode,
                eval_mode=self._eval,
                scalers=self._scalers,
                data_ref=self._ref,
            )
        return self._cache[mode]
