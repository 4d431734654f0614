"""Agent -> policy mapping of the hierarchy: one policy per specialist (or one shared) + meta."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rl_trading.config import AppConfig

META = "meta"
SPECIALIST_PREFIX = "specialist_"
SHARED_SPECIALIST = "specialist"
PHASE_MODES = {1: "specialists", 2: "meta", 3: "joint"}


def policy_mapping_fn(
    agent_id: str, episode: Any = None, shared: bool = False, **kwargs: Any
) -> str:
    """`meta` -> "meta"; `specialist_X` -> "specialist_X", or "specialist" when `shared`.

    Module level (picklable); use ``functools.partial(policy_mapping_fn, shared=True)`` for the
    shared specialist policy.
    """
    if agent_id == META:
        return META
    if not agent_id.startswith(SPECIALIST_PREFIX):
        raise ValueError(f"unknown agent id {agent_id!r}")
    return SHARED_SPECIALIST if shared else agent_id


def is_specialist(policy_id: str) -> bool:
    """Whether a policy id names a specialist policy (per instrument or shared)."""
    return policy_id == SHARED_SPECIALIST or policy_id.startswith(SPECIALIST_PREFIX)


def policy_ids(agent_ids: Iterable[str], shared: bool = False) -> list[str]:
    """Distinct policy ids of these agents, specialists first, in a stable order."""
    out: list[str] = []
    for aid in agent_ids:
        pid = policy_mapping_fn(aid, shared=shared)
        if pid not in out:
            out.append(pid)
    return sorted(out, key=lambda p: (p == META, p))


def phase_number(phase: int | str) -> int:
    """1, 2 or 3 from `1`, `"1"` or `"phase1"`."""
    text = str(phase).lower().removeprefix("phase")
    if text not in {"1", "2", "3"}:
        raise ValueError(f"unknown phase {phase!r} (phase1, phase2 or phase3)")
    return int(text)


def phase_timesteps(cfg: AppConfig, phase: int) -> int:
    """Env-step budget of a phase."""
    return {
        1: cfg.phases.phase1_timesteps,
        2: cfg.phases.phase2_timesteps,
        3: cfg.phases.phase3_timesteps,
    }[phase]


def phase_iterations(cfg: AppConfig, phase: int | str) -> int:
    """Training iterations of a phase: its budget over the train batch (at least 1)."""
    phase = phase_number(phase)
    return max(1, math.ceil(phase_timesteps(cfg, phase) / cfg.ppo.train_batch_size))
