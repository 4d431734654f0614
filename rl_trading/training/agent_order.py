"""Hash-seed independent agent order in RLlib's connector pipelines, through public hooks.

RLlib 2.60 hands its connector pieces agent ids as plain ``set`` s (``MultiAgentEpisode``'s
``agent_ids``, ``get_agents_that_stepped``). With string agent ids their order follows
PYTHONHASHSEED, and so does the order of the per-(episode, agent, module) items in every
batch column. `AgentToModuleMapping` takes the module order (which module samples first:
torch RNG draws; which module's minibatches shuffle first: numpy RNG draws) from that item
order, so the same seed trained differently in two processes.

`AgentOrder` is a pass-through `ConnectorV2` piece that puts every column's items in one fixed
order (the episodes' order, then the agent id) just before `AgentToModuleMapping`: module
order and the row order within a module no longer depend on the hash seed. `OrderedAgents`
is an `AlgorithmConfig` mixin whose public `build_env_to_module_connector` and
`build_learner_connector` insert the piece there, so every env runner and learner that builds
its pipelines from the config (local or remote, stock or the project's classes) gets it. The
learner pipeline also gets reward.normalize's piece there (training/reward_norm.py).
Nothing in RLlib is patched.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.sac import SACConfig
from ray.rllib.connectors.common import AgentToModuleMapping, NumpyToTensor
from ray.rllib.connectors.connector_v2 import ConnectorV2

from rl_trading.errors import RLTradingError
from rl_trading.training.reward_norm import RewardNormalizer

#: learner_config_dict key: divide rewards by their running std in the learner (reward.normalize)
REWARD_NORMALIZE = "reward_normalize"


class AgentOrder(ConnectorV2):
    """Orders each column's `(episode id, agent id, module id)` items by episode (their order
    in `episodes`), then agent id; other columns and the batch's values are left as they are."""

    def __call__(
        self,
        *,
        rl_module: Any,
        batch: dict[str, Any],
        episodes: list,
        explore: bool | None = None,
        shared_data: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        """The batch, each multi-agent column's items in episode, then agent-id order."""
        rank: dict[Any, int] = {}
        for i, episode in enumerate(episodes):
            rank.setdefault(episode.id_, i)
        last = len(rank)

        def order(key: tuple) -> tuple[int, str]:
            return rank.get(key[0], last), str(key[1])

        for column, items in list(batch.items()):
            if isinstance(items, dict) and items and _agent_keyed(items):
                batch[column] = {key: items[key] for key in sorted(items, key=order)}
        return batch


def _agent_keyed(items: dict) -> bool:
    """Whether a column maps `(episode id, agent id, module id)` keys to items."""
    return all(isinstance(key, tuple) and len(key) == 3 for key in items)


def insert_once(pipeline: Any, before: type, piece: ConnectorV2) -> Any:
    """`pipeline` with `piece` just before its `before` piece, when it has one and holds no
    piece of `piece`'s type yet."""
    connectors = getattr(pipeline, "connectors", None) or []
    if any(isinstance(c, before) for c in connectors) and not any(
        isinstance(c, type(piece)) for c in connectors
    ):
        pipeline.insert_before(before, piece)
    return pipeline


def with_agent_order(pipeline: Any) -> Any:
    """`pipeline` with an `AgentOrder` piece just before its `AgentToModuleMapping` (if any)."""
    return insert_once(pipeline, AgentToModuleMapping, AgentOrder())


class OrderedAgents:
    """`AlgorithmConfig` mixin: env-to-module and learner pipelines with `AgentOrder`."""

    def build_env_to_module_connector(self, *args: Any, **kwargs: Any) -> Any:
        """RLlib's env-to-module pipeline, with the agent order fixed (`with_agent_order`)."""
        return with_agent_order(super().build_env_to_module_connector(*args, **kwargs))

    def build_learner_connector(self, *args: Any, **kwargs: Any) -> Any:
        """RLlib's learner pipeline, with the agent order fixed (`with_agent_order`) and, when
        `learner_config_dict[REWARD_NORMALIZE]`, the rewards normalised before they become
        tensors, so before PPO's advantages (training/reward_norm)."""
        pipeline = with_agent_order(super().build_learner_connector(*args, **kwargs))
        if self.learner_config_dict.get(REWARD_NORMALIZE):
            pipeline = insert_once(pipeline, NumpyToTensor, RewardNormalizer())
            if not any(isinstance(c, RewardNormalizer) for c in pipeline.connectors):
                # never train silently without it: RLlib's learner pipeline had NumpyToTensor
                raise RLTradingError(
                    "reward.normalize: RLlib's learner pipeline has no NumpyToTensor to "
                    "place the reward normaliser before"
                )
        return pipeline


class OrderedPPOConfig(OrderedAgents, PPOConfig):
    """`PPOConfig` whose pipelines order agents independently of the hash seed."""


class OrderedSACConfig(OrderedAgents, SACConfig):
    """`SACConfig` whose pipelines order agents independently of the hash seed."""
