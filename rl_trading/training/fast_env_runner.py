"""RLlib's multi-agent env runner, minus two per-item costs that many small agents make large.

With 8 specialists x 8 vectorised envs, every env step RLlib's `MultiAgentEnvRunner`
(a) logs four step counters per agent (32 `metrics.log_value` calls per sub-env step) and
(b) deep-copies the actions and maps `unsquash_action` over every item through `dm-tree`.
`FastMultiAgentEnvRunner` (a) counts agent and module steps in plain dicts and logs each
counter once per `sample()` (the same sums), and (b) swaps RLlib's `NormalizeAndClipActions`
for `FastNormalizeAndClipActions`, the same arithmetic per item without the tree machinery.
Sampled episodes, env actions and metrics equal the stock runner's (tests/test_fast_env_runner.py).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.connectors.module_to_env.normalize_and_clip_actions import (
    NormalizeAndClipActions,
)
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.utils.metrics import (
    NUM_AGENT_STEPS_SAMPLED,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES,
    NUM_EPISODES_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
)

ItemFn = Callable[[Any], Any]


def _item_fn(space: Any, normalize: bool) -> ItemFn | None:
    """Per-item equivalent of RLlib's `unsquash_action` / `clip_action` for one flat space.

    None for nested (Dict / Tuple) spaces, which keep RLlib's own path.
    """
    if isinstance(space, gym.spaces.Box):
        low, high = space.low, space.high
        if not normalize:
            return lambda a: np.clip(a, low, high)
        if np.all(space.bounded_below) and np.all(space.bounded_above):
            if space.dtype in (np.float32, np.float64):
                span = high - low
                # the expression of unsquash_action, term by term: same values, same dtype
                return lambda a: np.clip(low + (a + 1.0) * span / 2.0, low, high)
            if np.issubdtype(space.dtype, np.integer):
                return lambda a: low + a
        return copy.deepcopy
    if isinstance(space, gym.spaces.Space) and not isinstance(
        space, gym.spaces.Dict | gym.spaces.Tuple
    ):
        return copy.deepcopy  # Discrete, MultiDiscrete, ...: passed through unchanged
    return None


class FastNormalizeAndClipActions(NormalizeAndClipActions):
    """`NormalizeAndClipActions` for flat per-agent action spaces without tree mapping."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fns: dict[Any, ItemFn | None] = {}

    def __call__(self, *, batch: dict[str, Any], **kwargs: Any) -> Any:
        """Add `ACTIONS_FOR_ENV` (unsquashed or clipped copies of the actions) to the batch."""
        if not (self.normalize_actions or self.clip_actions):
            return batch
        actions = batch.get(Columns.ACTIONS)
        struct = self._action_space_struct
        if not isinstance(actions, dict) or not isinstance(struct, dict):
            return super().__call__(batch=batch, **kwargs)
        out = {}
        for key, items in actions.items():
            agent = key[1] if isinstance(key, tuple) and len(key) == 3 else None
            if agent not in self._fns:
                self._fns[agent] = (
                    _item_fn(struct[agent], self.normalize_actions) if agent in struct else None
                )
            fn = self._fns[agent]
            if fn is None or not isinstance(items, list):
                return super().__call__(batch=batch, **kwargs)
            out[key] = [fn(a) for a in items]
        batch[Columns.ACTIONS_FOR_ENV] = out
        return batch

    @classmethod
    def like(cls, stock: NormalizeAndClipActions) -> FastNormalizeAndClipActions:
        """A fast twin of a built stock connector (same spaces and settings)."""
        return cls(
            input_observation_space=stock.input_observation_space,
            input_action_space=stock.input_action_space,
            normalize_actions=stock.normalize_actions,
            clip_actions=stock.clip_actions,
        )


class FastMultiAgentEnvRunner(MultiAgentEnvRunner):
    """`MultiAgentEnvRunner` with batched step counters and the fast action connector."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._agent_steps: Counter = Counter()
        self._module_steps: Counter = Counter()
        pipeline = getattr(self, "_module_to_env", None)
        if pipeline is not None:
            for i, conn in enumerate(pipeline.connectors):
                if type(conn) is NormalizeAndClipActions:
                    pipeline.connectors[i] = FastNormalizeAndClipActions.like(conn)

    def _increase_sampled_metrics(self, num_steps: int, next_obs: dict, episode: Any) -> int:
        # env-step and episode counters as RLlib logs them; agent / module counts deferred
        self.metrics.log_value(NUM_ENV_STEPS_SAMPLED, num_steps, reduce="sum")
        self.metrics.log_value(
            NUM_ENV_STEPS_SAMPLED_LIFETIME,
            num_steps,
            reduce="lifetime_sum",
            with_throughput=True,
        )
        if episode.is_done:
            self.metrics.log_value(NUM_EPISODES, 1, reduce="sum")
            self.metrics.log_value(NUM_EPISODES_LIFETIME, 1, reduce="lifetime_sum")
        for aid in next_obs:
            self._agent_steps[aid] += 1
            self._module_steps[episode.module_for(aid)] += 1
        return num_steps

    def _flush_step_counts(self) -> None:
        for aid, n in self._agent_steps.items():
            self.metrics.log_value((NUM_AGENT_STEPS_SAMPLED, str(aid)), n, reduce="sum")
            self.metrics.log_value(
                (NUM_AGENT_STEPS_SAMPLED_LIFETIME, str(aid)), n, reduce="lifetime_sum"
            )
        for mid, n in self._module_steps.items():
            self.metrics.log_value((NUM_MODULE_STEPS_SAMPLED, mid), n, reduce="sum")
            self.metrics.log_value(
                (NUM_MODULE_STEPS_SAMPLED_LIFETIME, mid), n, reduce="lifetime_sum"
            )
        self._agent_steps.clear()
        self._module_steps.clear()

    def _sample(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._sample(*args, **kwargs)
        finally:
            self._flush_step_counts()
