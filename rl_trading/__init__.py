"""rl-trading: hierarchical multi-agent RL trading agents on Ray RLlib."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
