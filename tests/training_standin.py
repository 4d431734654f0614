"""A tiny stand-in for the hierarchical env with the same agent/mode contract (tests only).

Agents `specialist_<S>` (Box(-1,1,(1,)) position) and, outside mode `specialists`, `meta`
(Box(0,1,(n+1,)) allocation, the last slot is cash). Returns follow an AR(1) with a planted
momentum signal so a policy can learn; `episode_summary()` returns the equity curve.
"""

from __future__ import annotations

import functools
import sys

import gymnasium as gym
import numpy as np
from pettingzoo import ParallelEnv
from ray import cloudpickle
from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
from ray.tune.registry import register_env

from rl_trading.training.env_bridge import EnvFactory

# Phase trials (Tune actors) and remote env runners unpickle the stand-in without `tests/` on
# their sys.path: this module travels by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NAME = "standin_hierarchical"
WINDOW = 4


class StandInHierarchicalEnv(ParallelEnv):
    """Seeded toy market with the HierarchicalTradingEnv agent layout."""

    metadata = {"name": "standin_hierarchical_v0"}

    def __init__(self, config: dict):
        self.symbols = list(config.get("symbols", ["AAA", "BBB"]))
        self.mode = config.get("mode", "joint")
        self.length = int(config.get("episode_length", 64))
        self.phi = float(config.get("signal", 0.5))
        self.eval_mode = bool(config.get("eval_mode", False))
        self.seed0 = int(config.get("seed", 0))
        self.possible_agents = [f"specialist_{s}" for s in self.symbols]
        if self.mode != "specialists":
            self.possible_agents.append("meta")
        n = len(self.symbols)
        self._obs_space = gym.spaces.Box(-np.inf, np.inf, (WINDOW * 1 + 1,), np.float32)
        self._meta_obs = gym.spaces.Box(-np.inf, np.inf, (n * (WINDOW + 1),), np.float32)
        self.rng = np.random.default_rng(self.seed0)
        self.agents = []

    def observation_space(self, agent):
        return self._meta_obs if agent == "meta" else self._obs_space

    def action_space(self, agent):
        n = len(self.symbols)
        if agent == "meta":
            return gym.spaces.Box(0.0, 1.0, (n + 1,), np.float32)
        return gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def obs_layout(self):
        return {"window_size": WINDOW, "n_features": 1}

    def _obs(self):
        out = {}
        for i, s in enumerate(self.symbols):
            window = self.returns[self.t - WINDOW : self.t, i] * 100.0
            out[f"specialist_{s}"] = np.append(window, self.pos[i]).astype(np.float32)
        if "meta" in self.agents:
            out["meta"] = np.concatenate([out[f"specialist_{s}"] for s in self.symbols])
        return out

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        if self.eval_mode:
            self.rng = np.random.default_rng(self.seed0 + 10_000)
        n = len(self.symbols)
        total = self.length + WINDOW + 1
        r = np.zeros((total, n))
        noise = self.rng.normal(0, 0.001, (total, n))
        for t in range(1, total):
            r[t] = self.phi * r[t - 1] + noise[t]
        self.returns = r
        self.t = WINDOW
        self.pos = np.zeros(n)
        self.equity = [1.0]
        self.agents = list(self.possible_agents)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        n = len(self.symbols)
        pos = np.array([float(np.clip(actions[f"specialist_{s}"][0], -1, 1)) for s in self.symbols])
        weights = np.full(n, 1.0 / n)
        if "meta" in actions:
            w = np.clip(np.asarray(actions["meta"], dtype=float), 0, None)
            weights = w[:n] / max(w.sum(), 1e-8)
        nxt = self.returns[self.t]
        cost = 1e-4 * np.abs(pos - self.pos)
        per = pos * nxt - cost
        port = float(np.dot(weights, per))
        self.equity.append(self.equity[-1] * (1.0 + port))
        self.pos = pos
        self.t += 1
        done = self.t >= self.length + WINDOW
        rewards = {f"specialist_{s}": float(per[i] * 100) for i, s in enumerate(self.symbols)}
        if "meta" in self.agents:
            rewards["meta"] = port * 100
        agents = list(self.agents)
        obs = self._obs()
        term = {a: done for a in agents}
        trunc = {a: False for a in agents}
        infos = {a: {"equity": self.equity[-1]} for a in agents}
        if done:
            self.agents = []
        return obs, rewards, term, trunc, infos

    def episode_summary(self):
        return {"equity": np.asarray(self.equity)}


def _create(config):
    return ParallelPettingZooEnv(StandInHierarchicalEnv(config))


def register() -> str:
    register_env(NAME, _create)
    return NAME


def _conf(mode, *, base, eval_mode):
    return {**base, "mode": mode, "eval_mode": eval_mode}


def standin_factory(symbols=("AAA", "BBB"), shared=False, **kw) -> EnvFactory:
    """EnvFactory over the stand-in env (training and validation configs)."""
    register()
    base = {"symbols": list(symbols), **kw}
    return EnvFactory(
        env_name=NAME,
        train_config=functools.partial(_conf, base=base, eval_mode=False),
        val_config=functools.partial(_conf, base=base, eval_mode=True),
        timeframe="1d",
        shared=shared,
        periods_per_year=252.0,  # daily bars on an equity calendar: the run's one annualisation
    )
