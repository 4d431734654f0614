"""RLlib callback: portfolio figures of each finished training episode as sampler metrics."""

from __future__ import annotations

import contextlib
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

from rl_trading.training.curriculum import apply_level, curriculum_level, schedule_of

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
    """Logs final equity, costs and VaR compliance (from the env infos) per episode, and
    drives the episode-difficulty curriculum (rl_trading/training/curriculum.py)."""

    def __init__(self) -> None:
        super().__init__()
        self._level: float | None = None
        self._schedule: tuple | None = None  # (cfg, phase) of a curriculum run
        self._schedule_read = False

    def on_algorithm_init(self, *, algorithm: Any, metrics_logger: Any = None, **kwargs: Any):
        """Put the env runners' modules in eval mode once; set the first curriculum level.

        RLlib's forward_exploration switches a module to eval and back to train on every call
        (a recursive walk over all submodules, 8 policies x every env step); the project's
        modules skip the walk when already in eval mode (policies/base.py). Sampling always
        ran in eval mode, so actions are unchanged. A recreated env runner just pays the walk.
        """
        group = getattr(algorithm, "env_runner_group", None)
        if group is None:
            return
        # a speed-up only: never fail the algorithm for it
        with contextlib.suppress(Exception):
            group.foreach_env_runner(_eval_mode, local_env_runner=True)
        self._curriculum_step(algorithm, int(getattr(algorithm, "iteration", 0) or 0))

    def on_train_result(self, *, algorithm: Any, result: dict, **kwargs: Any) -> None:
        """Report the curriculum level the iteration trained at; set the next one."""
        if self._level is not None:
            result["curriculum_level"] = self._level
        self._curriculum_step(algorithm, int(result.get("training_iteration", 0) or 0))

    def _curriculum_step(self, algorithm: Any, iteration: int) -> None:
        # heavy: ray, torch
        if not self._schedule_read:  # the algorithm's config, parsed once
            env_config = getattr(getattr(algorithm, "config", None), "env_config", None) or {}
            self._schedule, self._schedule_read = schedule_of(env_config), True
        if self._schedule is None:
            return
        level = curriculum_level(*self._schedule, iteration)
        if self._level == 1.0 and level == 1.0:
            return
        apply_level(algorithm, level)  # every iteration: a recreated env runner catches up
        self._level = level

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
