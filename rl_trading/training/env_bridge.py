"""The training side of the environments: env configs per mode, the shared-specialist wrapper,
spaces for the module specs and creating an env in the driver (validation).

Phases only talk to an :class:`EnvFactory`, so the RLlib machinery is independent of how the
hierarchical env is built (tests use a tiny stand-in env through the same interface).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from rl_trading.training.mapping import META, SPECIALIST_PREFIX

SHARED_SUFFIX = "-shared-specialist"


def env_creator(name: str) -> Callable[[dict], MultiAgentEnv]:
    """The creator registered under `name` with `ray.tune.register_env`."""
    from ray.tune.registry import ENV_CREATOR, _global_registry

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


def register_shared(base_name: str) -> str:
    """Register `<base>-shared-specialist` (one-hot instrument ids appended); return its name."""
    from ray.tune.registry import register_env

    name = base_name + SHARED_SUFFIX
    base = env_creator(base_name)
    register_env(name, lambda config, _base=base: InstrumentOneHot(_base(config)))
    return name


@dataclass
class EnvFactory:
    """Registered env name + env configs for training and validation in each mode."""

    env_name: str
    train_config: Callable[[str], dict[str, Any]]
    val_config: Callable[[str], dict[str, Any]] | None = None
    timeframe: str = "1m"
    shared: bool = False
    # the run's bars per year (config.resolve_calendar); None: `timeframe` on the 24h calendar
    periods_per_year: float | None = None
    _spaces: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def rllib_env_name(self) -> str:
        """Name RLlib samples from (the shared-specialist variant when `shared`)."""
        if not self.shared:
            return self.env_name
        return register_shared(self.env_name)

    def make(self, mode: str, validation: bool = False) -> MultiAgentEnv:
        """A fresh env of `mode` in this process (validation env when `validation`)."""
        cfg_fn = self.val_config if validation else self.train_config
        if cfg_fn is None:
            raise ValueError("no validation data configured")
        return env_creator(self.rllib_env_name)(cfg_fn(mode))

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
    from envs.common import prepare_instrument

    return {sym: prepare_instrument(frame, None, sym).scaler for sym, frame in bars.items()}


def hierarchical_factory(
    cfg: Any, train_bars: dict[str, Any], val_bars: dict[str, Any] | None = None
) -> EnvFactory:
    """EnvFactory of the project's HierarchicalTradingEnv; scalers fit on `train_bars`.

    The calendar is resolved once from `train_bars` (`config.resolve_calendar`), so training
    envs, validation envs and the validation metrics annualise with the same bars per year.
    """
    from envs.registration import HIERARCHICAL_ENV_NAME, make_env_config, register_envs
    from rl_trading.config import resolve_calendar

    register_envs()
    cfg = resolve_calendar(cfg, train_bars)
    scalers = fit_scalers(cfg, train_bars)
    train = _ModeConfigs(make_env_config, cfg, train_bars, False, scalers)
    val = _ModeConfigs(make_env_config, cfg, val_bars, True, scalers) if val_bars else None
    return EnvFactory(
        env_name=HIERARCHICAL_ENV_NAME,
        train_config=train,
        val_config=val,
        timeframe=cfg.data.timeframe,
        shared=cfg.phases.shared_specialist_policy,
        periods_per_year=cfg.data.periods_per_year,
    )


class _ModeConfigs:
    """mode -> env_config, built once per mode (the packed bars are reused)."""

    def __init__(self, make: Callable, cfg: Any, bars: Any, eval_mode: bool, scalers: Any):
        self._make, self._cfg, self._bars = make, cfg, bars
        self._eval, self._scalers = eval_mode, scalers
        self._cache: dict[str, dict[str, Any]] = {}

    def __call__(self, mode: str) -> dict[str, Any]:
        if mode not in self._cache:
            self._cache[mode] = self._make(
                self._cfg, self._bars, mode=mode, eval_mode=self._eval, scalers=self._scalers
            )
        return self._cache[mode]
