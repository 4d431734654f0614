"""RLlib's multi-agent env runner, minus per-item costs that many small agents make large.

With 8 specialists x 8 vectorised envs, every env step RLlib's `MultiAgentEnvRunner`
(a) logs four step counters per agent (32 `metrics.log_value` calls per sub-env step),
(b) deep-copies the actions and maps `unsquash_action` over every item through `dm-tree`, and
(c) unbatches module outputs with a linear search over the episodes per item and column.
`FastMultiAgentEnvRunner` (a) counts agent and module steps in plain dicts and logs each
counter once per `sample()` (the same sums), (b) swaps in `FastNormalizeAndClipActions`, the
same arithmetic per item without the tree machinery, and (c) `FastUnBatchToIndividualItems`,
the same items and checks with the episodes looked up once. Sampled episodes, env actions,
weights and counters equal the stock runner's (tests/test_training_speedups.py).
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
from ray.rllib.connectors.module_to_env.unbatch_to_individual_items import (
    UnBatchToIndividualItems,
)
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import (
    NUM_AGENT_STEPS_SAMPLED,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_SAMPLED,
    NUM_MODULE_STEPS_SAMPLED_LIFETIME,
)
from ray.rllib.utils.spaces.space_utils import unbatch as unbatch_fn

from rl_trading.rllib_adapter import HookedMultiAgentEnvRunner, action_space_struct

ItemFn = Callable[[Any], Any]


def item_fn(space: Any, normalize: bool) -> ItemFn | None:
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


class Twin:
    """A drop-in twin of a stock connector, built from a built one by `like()`."""

    twin_settings: tuple[str, ...] = ()  # constructor kwargs besides the two spaces

    @classmethod
    def like(cls, stock: Any) -> Any:
        """A fast twin of a built stock connector (same spaces and settings)."""
        return cls(
            input_observation_space=stock.input_observation_space,
            input_action_space=stock.input_action_space,
            **{name: getattr(stock, name) for name in cls.twin_settings},
        )


class FastNormalizeAndClipActions(Twin, NormalizeAndClipActions):
    """`NormalizeAndClipActions` for flat per-agent action spaces without tree mapping."""

    twin_settings = ("normalize_actions", "clip_actions")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fns: dict[Any, ItemFn | None] = {}

    def __call__(self, *, batch: dict[str, Any], **kwargs: Any) -> Any:
        """Add `ACTIONS_FOR_ENV` (unsquashed or clipped copies of the actions) to the batch."""
        if not (self.normalize_actions or self.clip_actions):
            return batch
        actions = batch.get(Columns.ACTIONS)
        struct = action_space_struct(self)
        if not isinstance(actions, dict) or not isinstance(struct, dict):
            return super().__call__(batch=batch, **kwargs)
        out = {}
        for key, items in actions.items():
            agent = key[1] if isinstance(key, tuple) and len(key) == 3 else None
            if agent not in self._fns:
                self._fns[agent] = (
                    item_fn(struct[agent], self.normalize_actions) if agent in struct else None
                )
            fn = self._fns[agent]
            if fn is None or not isinstance(items, list):
                return super().__call__(batch=batch, **kwargs)
            out[key] = [fn(a) for a in items]
        batch[Columns.ACTIONS_FOR_ENV] = out
        return batch


class FastUnBatchToIndividualItems(Twin, UnBatchToIndividualItems):
    """`UnBatchToIndividualItems` with one episode lookup and live-agent check per item.

    RLlib searches the episode list and re-checks the agent for every item of every column;
    the multi-agent branch here builds the same `(eps_id, agent_id, module_id)`-keyed lists
    and raises the same errors. Other cases take RLlib's path.
    """

    def __call__(self, *, batch: dict[str, Any], **kwargs: Any) -> Any:
        """Split each module's batched columns into per-(episode, agent) item lists."""
        shared = kwargs.get("shared_data") or {}
        structure = shared.get("memorized_map_structure")
        if not isinstance(structure, dict):
            return super().__call__(batch=batch, **kwargs)
        renamed = shared.get("vector_env_episodes_map", {})
        by_id = {}
        for eps in kwargs.get("episodes") or []:
            by_id.setdefault(eps.id_, eps)
        for module_id, module_data in batch.copy().items():
            if module_id not in structure:
                raise KeyError(f"ModuleID={module_id} not found in `memorized_map_structure`!")
            keys = []
            for eps_id, agent_id in structure[module_id]:
                keys.append((eps_id, agent_id, module_id))
                self._check_live(by_id, renamed.get(eps_id, eps_id), agent_id)
            for column, column_data in module_data.items():
                items = unbatch_fn(column_data)
                new_column_data: dict = {}
                for i, key in enumerate(keys):
                    new_column_data.setdefault(key, []).append(items[i])
                module_data[column] = new_column_data
        return batch

    @staticmethod
    def _check_live(by_id: dict, eps_id: Any, agent_id: Any) -> None:
        episode = by_id.get(eps_id)
        if episode is None:
            raise ValueError(
                f"No episode found that matches the ID={eps_id}. Check "
                "shared_data['vector_env_episodes_map'] for a missing mapping."
            )
        if episode.agent_episodes and not episode.is_done:
            sa_episode = episode.agent_episodes.get(agent_id)
            if sa_episode is None or sa_episode.is_done:
                raise ValueError(
                    f"Agent {agent_id!r} in `memorized_map_structure` is missing or already "
                    f"done for episode {episode.id_!r}: only live agents should reach the "
                    "module-to-env pipeline."
                )


# stock connector class -> its drop-in twin (same outputs), swapped in by the runner
_FAST_TWINS: dict[type, Any] = {
    NormalizeAndClipActions: FastNormalizeAndClipActions,
    UnBatchToIndividualItems: FastUnBatchToIndividualItems,
}


def install_twins(pipeline: Any, twins: dict[type, Any]) -> None:
    """Swap each piece of a connector pipeline (None: nothing) whose exact type has a fast
    twin in `twins` for that twin, built from it by `like()`."""
    for i, conn in enumerate(getattr(pipeline, "connectors", None) or []):
        fast = twins.get(type(conn))
        if fast is not None:
            pipeline.connectors[i] = fast.like(conn)


def _fresh_observations(env: Any) -> bool:
    """Whether `env` (RLlib's PettingZoo wrapper around it, if any) declares that it returns
    new observation arrays every step and never mutates them later."""
    inner = env.unwrapped
    return bool(getattr(getattr(inner, "par_env", inner), "fresh_observations", False))


class FastMultiAgentEnvRunner(HookedMultiAgentEnvRunner):
    """`MultiAgentEnvRunner` with batched step counters and the fast action connector."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._agent_steps: Counter = Counter()
        self._module_steps: Counter = Counter()
        install_twins(self.module_to_env_pipeline, _FAST_TWINS)

    def make_env(self) -> None:
        """RLlib's vector env; for envs whose observations are always fresh arrays
        (`fresh_observations`), without the deep copy of every observation dict per step
        (the same arrays, ~8% of sampling)."""
        super().make_env()
        envs = getattr(self.env, "envs", None)
        if envs and getattr(self.env, "copy", False) and all(map(_fresh_observations, envs)):
            self.env.copy = False

    def log_sampled_step(self, num_steps: int, next_obs: dict, episode: Any) -> int:
        """RLlib logs the env-step and episode counters (no agents passed); agent / module
        counts are deferred to one log per sample() call."""
        super().log_sampled_step(num_steps, {}, episode)
        self._count_agent_steps(next_obs, episode)
        return num_steps

    def _count_agent_steps(self, next_obs: dict, episode: Any) -> None:
        """One step of each agent in `next_obs` and of its module (logged by `sample()`)."""
        for aid in next_obs:
            self._agent_steps[aid] += 1
            self._module_steps[episode.module_for(aid)] += 1

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

    def sample_episodes(self, **kwargs: Any) -> Any:
        """RLlib's sampling loop, the deferred agent / module counters logged at its end."""
        try:
            return super().sample_episodes(**kwargs)
        finally:
            self._flush_step_counts()
