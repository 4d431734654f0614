"""Acting with a trained RLModule outside RLlib's EnvRunners (validation, backtests, tests)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule


def compute_actions(
    module: RLModule, obs: np.ndarray, explore: bool = False, seed: int | None = None
) -> np.ndarray:
    """Actions for a `[B, ...]` obs batch, mapped to the action space like RLlib's connectors.

    `explore=False` is deterministic (Gaussian mean / arg-max); Box actions are unsquashed
    from [-1, 1] to the space's bounds and clipped, as RLlib does with `normalize_actions`.
    """
    batch = {Columns.OBS: torch.as_tensor(np.asarray(obs, dtype=np.float32))}
    with torch.no_grad():
        if explore:
            if seed is not None:
                torch.manual_seed(seed)
            out = module.forward_exploration(batch)
        else:
            out = module.forward_inference(batch)
        if Columns.ACTIONS in out:  # Gaussian policies act themselves (sample / mean)
            actions = out[Columns.ACTIONS]
        else:  # as RLlib's GetActions: the module's distribution, deterministic in inference
            dist_cls = (
                module.get_exploration_action_dist_cls()
                if explore
                else module.get_inference_action_dist_cls()
            )
            dist = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS])
            actions = (dist if explore else dist.to_deterministic()).sample()
    return to_env_action(actions.cpu().numpy(), module.action_space)


_BOX_BOUNDS: dict[int, tuple[gym.spaces.Box, bool, np.ndarray]] = {}


def _box_bounds(space: gym.spaces.Box) -> tuple[bool, np.ndarray]:
    """(bounded on both sides, high - low) of a Box, computed once per space object."""
    hit = _BOX_BOUNDS.get(id(space))
    if hit is None or hit[0] is not space:
        bounded = bool(np.all(space.bounded_below & space.bounded_above))
        hit = (space, bounded, space.high - space.low)
        _BOX_BOUNDS[id(space)] = hit
    return hit[1], hit[2]


def to_env_action(actions: np.ndarray, space: gym.Space) -> np.ndarray:
    """Map module outputs to env actions (unsquash + clip bounded Boxes, ints for Discrete)."""
    if isinstance(space, gym.spaces.Discrete):
        return actions.astype(np.int64)
    if isinstance(space, gym.spaces.Box):
        bounded, span = _box_bounds(space)
        if bounded:
            scaled = space.low + (np.clip(actions, -1.0, 1.0) + 1.0) * span / 2.0
            return scaled.astype(space.dtype)
    return actions.astype(getattr(space, "dtype", np.float32))


def act_one(module: RLModule, obs: Any) -> np.ndarray:
    """Deterministic action for a single observation."""
    return compute_actions(module, np.asarray(obs, dtype=np.float32)[None])[0]
