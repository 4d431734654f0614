"""RLlib callback: portfolio figures of each finished training episode as sampler metrics."""

from __future__ import annotations

from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

_KEYS = {
    "equity": "portfolio_equity",
    "costs": "portfolio_costs",
    "var_compliance": "var_compliance",
}


class TradingCallbacks(RLlibCallback):
    """Logs final equity, costs and VaR compliance (from the env infos) per episode."""

    def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        """Read the last info of any agent and log the portfolio figures (window-averaged)."""
        if metrics_logger is None:
            return
        try:
            infos = episode.get_infos(-1)
        except Exception:  # noqa: BLE001 - an episode without infos logs nothing
            return
        info = next((v for v in infos.values() if isinstance(v, dict) and "equity" in v), None)
        if info is None:
            return
        for key, name in _KEYS.items():
            if isinstance(info.get(key), int | float):
                metrics_logger.log_value(name, float(info[key]), reduce="mean", window=20)
