"""rl-trading: hierarchical multi-agent RL trading agents on Ray RLlib."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["DistributedTrainer", "Policy", "TrainingConfig", "__version__", "load_policy"]


def __getattr__(name: str) -> Any:
    """Lazy exports, so `import rl_trading` stays light (no ray / torch)."""
    if name == "DistributedTrainer":
        from rl_trading.training.trainer import DistributedTrainer

        return DistributedTrainer
    if name == "TrainingConfig":
        from rl_trading.config import TrainingConfig

        return TrainingConfig
    if name in ("load_policy", "Policy"):
        from rl_trading import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'rl_trading' has no attribute {name!r}")
