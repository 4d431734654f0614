"""rl-trading: hierarchical multi-agent RL trading agents on Ray RLlib.

The top-level names load on first access (PEP 562), so `import rl_trading` and every
submodule import stay light: `DistributedTrainer` brings Ray, `load_policy` torch. Nothing in
the project imports this package's names; it is the users' entry (the top of the layers).
"""

from __future__ import annotations

from typing import Any

from rl_trading.version import __version__

__all__ = ["DistributedTrainer", "Policy", "TrainingConfig", "__version__", "load_policy"]


def __getattr__(name: str) -> Any:
    """Lazy exports, so `import rl_trading` stays light (no ray / torch)."""
    if name == "DistributedTrainer":
        from rl_trading.training.trainer import DistributedTrainer  # heavy: ray

        return DistributedTrainer
    if name == "TrainingConfig":
        from rl_trading.config import TrainingConfig  # facade: pydantic config, loaded on use

        return TrainingConfig
    if name in ("load_policy", "Policy"):
        from rl_trading import inference  # facade: torch when a policy loads

        return getattr(inference, name)
    raise AttributeError(f"module 'rl_trading' has no attribute {name!r}")
