"""Trading environments: single-instrument gymnasium `TradingEnv` and the hierarchical
PettingZoo `HierarchicalTradingEnv` (specialists + meta), with their RLlib registration."""

from envs.hierarchical_env import HierarchicalTradingEnv, env, parallel_env
from envs.trading_env import TradingEnv

__all__ = ["HierarchicalTradingEnv", "TradingEnv", "env", "parallel_env"]
