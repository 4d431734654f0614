"""Hierarchical RLlib training: three phases, checkpoints, resume, validation and MLflow.

Heavy submodules (ray, torch) load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "policy_mapping_fn": "rl_trading.training.mapping",
    "build_phase_config": "rl_trading.training.algo_config",
    "phase_iterations": "rl_trading.training.algo_config",
    "EnvFactory": "rl_trading.training.env_bridge",
    "hierarchical_factory": "rl_trading.training.env_bridge",
    "run_phase": "rl_trading.training.runner",
    "run_pipeline": "rl_trading.training.runner",
    "PhaseResult": "rl_trading.training.runner",
    "train": "rl_trading.training.session",
    "load_algorithm": "rl_trading.training.checkpoints",
    "load_module": "rl_trading.training.checkpoints",
    "DistributedTrainer": "rl_trading.training.trainer",
    "TrainingConfig": "rl_trading.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rl_trading.training' has no attribute {name!r}")
