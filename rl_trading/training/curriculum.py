"""Curriculum over episode difficulty: training episodes start in calm markets and widen to all.

The level is the fraction of training episode starts, easiest first by
`HierarchicalTradingEnv.episode_difficulty` (realised volatility of the equal-weight basket over
the episode), that episodes are drawn from: `phases.curriculum_start` at the first iteration of
a phase listed in `phases.curriculum_phases`, rising linearly to 1 over the first
`phases.curriculum_ramp` of its iterations. Only training episodes are affected; validation,
backtests and evaluation always run over their whole split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rl_trading.config import AppConfig
from rl_trading.training.env_bridge import unwrap
from rl_trading.training.mapping import PHASE_MODES, phase_iterations

_PHASE_OF_MODE = {mode: phase for phase, mode in PHASE_MODES.items()}


def curriculum_level(cfg: AppConfig, phase: int, iteration: int) -> float | None:
    """Level for training iteration `iteration` (0-based) of `phase`; None: no curriculum."""
    ph = cfg.phases
    if not ph.curriculum or phase not in ph.curriculum_phases:
        return None
    ramp = max(1, math.ceil(ph.curriculum_ramp * phase_iterations(cfg, phase)))
    return min(1.0, ph.curriculum_start + (1.0 - ph.curriculum_start) * iteration / ramp)


def schedule_of(env_config: Mapping[str, Any]) -> tuple[AppConfig, int] | None:
    """(config, phase) of an algorithm's env_config (it carries both) when that phase runs a
    curriculum; None otherwise."""
    phase = _PHASE_OF_MODE.get(env_config.get("mode", ""))
    if phase is None or not env_config.get("cfg"):
        return None
    cfg = AppConfig.model_validate(env_config["cfg"])
    return (cfg, phase) if curriculum_level(cfg, phase, 0) is not None else None


def _set_level(env_runner: Any, level: float) -> int:
    env = getattr(env_runner, "env", None)
    subs = getattr(env, "envs", None) or ([env] if env is not None else [])
    done = 0
    for sub in subs:
        setter = getattr(unwrap(sub), "set_curriculum_level", None)
        if callable(setter):
            setter(level)
            done += 1
    return done


def apply_level(algorithm: Any, level: float) -> int:
    """Set the level on every training env of every env runner; returns how many were set."""
    group = getattr(algorithm, "env_runner_group", None)
    if group is None:
        return 0
    counts = group.foreach_env_runner(
        lambda runner: _set_level(runner, level), local_env_runner=True
    )
    return int(sum(c or 0 for c in counts))
