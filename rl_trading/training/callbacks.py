"""RLlib callback: portfolio figures of each finished training episode as sampler metrics."""

from __future__ import annotations

from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

_KEYS = {
    "equity": "portfolio_equity",
    "costs": "portfolio_costs",
    "var_compliance": "var_compliance",
}


def _eval_mode(env_runner: Any) -> None:
    multi = getattr(env_runner, "module", None)
    for module in multi.values() if hasattr(multi, "values") else [multi]:
        if callable(getattr(module, "eval", None)):
            module.eval()


class TradingCallbacks(RLlibCallback):
    """Logs final equity, costs and VaR compliance (from the env infos) per episode."""

    def on_algorithm_init(self, *, algorithm: Any, metrics_logger: Any = None, **kwargs: Any):
        """Put the env runners' modules in eval mode once.

        RLlib's forward_exploration switches a module to eval and back to train on every call
        (a recursive walk over all submodules, 8 policies x every env step: ~20% of sampling
        time here); a module already in eval mode is switched only one way. Sampling always
        ran in eval mode, so actions are unchanged. A recreated env runner just pays the walk.
        """
        group = getattr(algorithm, "env_runner_group", None)
        if group is None:
            return
        try:
            group.foreach_env_runner(_eval_mode, local_env_runner=True)
        except Exception:  # noqa: BLE001 - a speed-up only; never fail the algorithm for it
            return

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
