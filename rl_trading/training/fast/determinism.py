"""Hash-seed independent agent ordering inside RLlib's multi-agent episodes.

RLlib 2.60 returns agent ids as plain ``set`` s (``MultiAgentEpisode.agent_ids``,
``get_agents_that_stepped``, ``get_agents_to_act``), and its connectors iterate them to build
batches. With string agent ids, set order depends on PYTHONHASHSEED, so the order in which
modules sample actions (torch RNG draws) and shuffle their minibatches (numpy RNG draws)
differed between processes: same seed, different training. `install` makes those sets iterate
in sorted order. It is not applied on import: only where the project builds its algorithm,
i.e. `build_phase_config` (the driver, its local env runner and learner) and the `AgentOrder`
connector piece that config puts first in the env-to-module and learner pipelines (every
remote env runner and learner builds it before it samples or learns). A process that merely
imports the project, or restores an RLModule to act, keeps RLlib's classes untouched. This is
applied in both `resources.rllib_fast_paths` modes (the determinism tests run in both).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ray.rllib.connectors.connector_v2 import ConnectorV2

_INSTALLED = False


class SortedIterSet(set):
    """A set that iterates its members in sorted order (falls back to set order if unsortable)."""

    def __iter__(self):
        items = list(set.__iter__(self))
        with contextlib.suppress(TypeError):  # mixed, unorderable ids: keep the set order
            items.sort()
        return iter(items)


def _sorted_method(orig: Any) -> Any:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> set:
        return SortedIterSet(orig(self, *args, **kwargs))

    wrapper.__name__ = getattr(orig, "__name__", "wrapper")
    wrapper.__doc__ = getattr(orig, "__doc__", None)
    wrapper._rl_trading_sorted = True  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Patch RLlib's MultiAgentEpisode agent-id sets to iterate in sorted order (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from ray.rllib.env.multi_agent_episode import MultiAgentEpisode

    for name in ("get_agents_that_stepped", "get_agents_to_act"):
        orig = getattr(MultiAgentEpisode, name)
        if not getattr(orig, "_rl_trading_sorted", False):
            setattr(MultiAgentEpisode, name, _sorted_method(orig))
    prop = MultiAgentEpisode.__dict__.get("agent_ids")
    if isinstance(prop, property) and not getattr(prop.fget, "_rl_trading_sorted", False):
        MultiAgentEpisode.agent_ids = property(_sorted_method(prop.fget), doc=prop.__doc__)
    _INSTALLED = True


def installed() -> bool:
    """Whether `install` ran in this process (tests: not on a plain import of the project)."""
    return _INSTALLED


class AgentOrder(ConnectorV2):
    """Pass-through connector piece: building it installs the sorted agent order (`install`)
    in the env runner / learner process that runs the project's algorithm."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        install()
        super().__init__(*args, **kwargs)

    def __call__(self, *, batch: Any, **kwargs: Any) -> Any:
        """The batch unchanged."""
        return batch


def env_to_module_agent_order(env: Any = None, spaces: Any = None, device: Any = None) -> Any:
    """`env_runners(env_to_module_connector=...)`: the `AgentOrder` piece (picklable by name)."""
    return AgentOrder()


def learner_agent_order(obs_space: Any = None, act_space: Any = None) -> Any:
    """`training(learner_connector=...)`: the `AgentOrder` piece (picklable by name)."""
    return AgentOrder()
