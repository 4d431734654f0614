"""Reference-design Python API: `DistributedTrainer` over the three-phase RLlib pipeline."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rl_trading import ray_utils
from rl_trading.config import AppConfig, TrainingConfig
from rl_trading.errors import CheckpointError, ConfigError
from rl_trading.training.checkpoints import checkpoint_policies, load_module
from rl_trading.training.env_bridge import EnvFactory, hierarchical_factory
from rl_trading.training.mapping import is_specialist, policy_mapping_fn

__all__ = ["DistributedTrainer", "TrainingConfig"]


class DistributedTrainer:
    """Train, evaluate, tune, save and load the hierarchical agents from Python.

    ``DistributedTrainer(cfg).train(train_bars, val_bars)`` runs phases 1-3 (resources,
    Ray address and MLflow tracking from `cfg`) and returns their metrics.
    """

    def __init__(self, cfg: AppConfig | None = None, run_dir: str | Path | None = None):
        self.cfg = cfg or AppConfig()
        self.run_dir = Path(run_dir) if run_dir else self.cfg.resolved_run_dir()
        self.factory: EnvFactory | None = None
        self.results: dict[str, Any] = {}
        self.last_tune: Any = None
        self.modules: dict[str, Any] = {}
        self._algos: list[Any] = []
        self._train_bars: dict[str, Any] = {}

    def create_env(self, data: dict[str, Any], val_data: dict[str, Any] | None = None) -> Any:
        """A joint-mode HierarchicalTradingEnv on `data` (scalers fit on `data`)."""
        self._train_bars = data
        self.factory = hierarchical_factory(self.cfg, data, val_data)
        return self.factory.make("joint")

    def create_agent(self, env: Any = None, phase: int = 1) -> Any:
        """A built RLlib Algorithm of `phase` for the env made by `create_env`."""
        # heavy: ray, torch
        from rl_trading.training.algo_config import build_algorithm, build_phase_config

        if self.factory is None:
            raise ConfigError("call create_env(data) before create_agent()")
        ray_utils.init_ray(self.cfg.resources.address, num_cpus=self.cfg.resources.num_cpus)
        config = build_phase_config(self.cfg, phase, self.factory)
        algo = build_algorithm(config, self.run_dir / "logs")
        self._algos.append(algo)
        return algo

    def train(
        self, train_data: dict[str, Any], val_data: dict[str, Any], resume: bool = False
    ) -> dict[str, float]:
        """Run phases 1-3; returns `phaseN.<metric>` for each phase's last iteration."""
        from rl_trading.training.session import train  # heavy: ray, torch

        self._train_bars = train_data
        self.factory = hierarchical_factory(self.cfg, train_data, val_data)
        _, self.results = train(
            self.cfg, (1, 2, 3), run_dir=self.run_dir, resume=resume, factory=self.factory
        )
        out: dict[str, float] = {}
        for name, res in self.results.items():
            out.update({f"{name}.{k}": v for k, v in res.metrics.items()})
            out[f"{name}.iterations"] = float(res.iterations)
        self.load_model(self.results["phase3"].best_checkpoint)
        return out

    def evaluate(self, agent: Any = None, env: Any = None) -> dict[str, float]:
        """Deterministic episode of `agent` (Algorithm, modules dict, checkpoint path or the
        trained/loaded model) on the validation bars, or `env` (bars dict or EnvFactory)."""
        from rl_trading.training.validation import validate  # heavy: ray, torch

        modules = self._as_modules(agent)
        factory = self.factory
        if isinstance(env, EnvFactory):
            factory = env
        elif isinstance(env, dict):  # bars by symbol, evaluated with training-fit scalers
            if self.factory is None:
                raise ConfigError("call create_env(train_data) before evaluating on new bars")
            factory = hierarchical_factory(self.cfg, self._train_bars, env)
        if factory is None or factory.val_config is None:
            raise ConfigError("no evaluation data: call train() or create_env(data, val_data)")
        mode = "joint" if "meta" in modules else "specialists"
        return validate(factory, mode, modules, seed=self.cfg.seed)

    def tune(
        self, train_data: dict[str, Any], val_data: dict[str, Any], phase: int = 1, **kwargs: Any
    ) -> Any:
        """Population-Based Training of a phase (the `tuning` package); returns the best config.

        The full result (best checkpoint, trials table, lineage plot) is kept in `last_tune`.
        """
        try:
            from tuning.pbt import run_pbt  # heavy: ray, sqlalchemy
        except ImportError:
            raise ConfigError("tuning is unavailable: the tuning.pbt module is missing") from None
        self.last_tune = run_pbt(self.cfg, phase, train_data, val_data, **kwargs)
        return self.last_tune.best_config

    def save_model(self, path: str | Path) -> Path:
        """Copy the final (phase 3 best, else latest) checkpoint to `path`."""
        if not self.results:
            raise CheckpointError("nothing to save: train() first")
        last = list(self.results.values())[-1].best_checkpoint
        path = Path(path)
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(last, path)
        return path

    def load_model(self, path: str | Path) -> dict[str, Any]:
        """Load every policy of an algorithm checkpoint as RLModules (for evaluate/inference)."""
        self.modules = {pid: load_module(path, pid) for pid in checkpoint_policies(path)}
        return self.modules

    def act(self, observations: dict[str, Any]) -> dict[str, np.ndarray]:
        """Deterministic actions of the loaded model for a dict of agent observations."""
        from policies import act_one  # heavy: ray, torch

        shared = "specialist" in self.modules
        return {
            aid: act_one(self.modules[policy_mapping_fn(aid, shared=shared)], obs)
            for aid, obs in observations.items()
        }

    def cleanup(self) -> None:
        """Stop algorithms built by this trainer."""
        from rl_trading.training.algo_config import release_algorithm  # heavy: ray, torch

        for algo in self._algos:
            release_algorithm(algo)
        self._algos.clear()

    def _as_modules(self, agent: Any) -> dict[str, Any]:
        if agent is None:
            if not self.modules:
                raise CheckpointError("no model: train() or load_model() first")
            return self.modules
        if isinstance(agent, str | Path):
            return self.load_model(agent)
        if isinstance(agent, dict):
            return agent
        if hasattr(agent, "learner_group"):  # an RLlib Algorithm
            # heavy: ray, torch
            from rl_trading.training.runner import driver_modules, sync_driver_modules

            pids = list(agent.learner_group.get_weights().keys())
            phase = 1 if all(is_specialist(p) for p in pids) else 3
            mods = driver_modules(self.cfg, self.factory, phase)
            sync_driver_modules(agent, mods)
            return {pid: mods[pid] for pid in list(mods.keys())}
        raise ConfigError(f"cannot evaluate an agent of type {type(agent).__name__}")
