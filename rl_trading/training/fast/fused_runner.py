"""Fused acting in the env runner: one pass from the envs' observations to their actions.

Per env step RLlib's `MultiAgentEnvRunner` runs two connector pipelines of seven pieces each
(episodes -> per-agent items -> per-module batches -> tensors, then back: tensors -> numpy ->
per-agent items -> per-env dicts -> unsquashed actions) and one forward per policy. With 8
specialists x 8 envs that per-item Python is most of the sampling time. When both pipelines
are RLlib's defaults (nothing to preserve in them) and every policy is a Gaussian
`ActorCriticModule` that samples its own actions, `FusedActingEnvRunner.sample_episodes` builds the
per-module observation batches straight from the observations just stepped, runs same-shape
MLP policies as one stacked network (`policies.stacked.StackedActor`, other modules through
their own forward), draws each module's actions with the module's own `explore_outputs`
(same torch RNG draws in the same module order as RLlib) and writes the same per-agent
actions, extra model outputs, env actions, episodes, metrics and callbacks as RLlib's loop,
of which the rest is kept line for line. Anything else falls back to RLlib's loop.
Tested against the stock runner (tests/test_training_speedups.py): same episodes within
float32 rounding of the stacked matmuls.
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.connectors.common import (
    AddObservationsFromEpisodesToBatch,
    AddStatesFromEpisodesToBatch,
    AddTimeDimToBatchAndZeroPad,
    AgentToModuleMapping,
    BatchIndividualItems,
    NumpyToTensor,
)
from ray.rllib.connectors.module_to_env import (
    GetActions,
    ListifyDataForVectorEnv,
    ModuleToAgentUnmapping,
    NormalizeAndClipActions,
    RemoveSingleTsTimeRankFromBatch,
    TensorToNumpy,
    UnBatchToIndividualItems,
)
from ray.rllib.core.columns import Columns
from ray.rllib.env.env_runner import ENV_STEP_FAILURE
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.utils.metrics import (
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES,
    NUM_EPISODES_LIFETIME,
    RLMODULE_INFERENCE_TIMER,
    WEIGHTS_SEQ_NO,
)

from policies.base import ActorCriticModule
from policies.stacked import StackedActor, stack_groups
from rl_trading.rllib_adapter import action_space_struct
from rl_trading.training.agent_order import AgentOrder
from rl_trading.training.fast.env_runner import FastMultiAgentEnvRunner, item_fn

# the connector pieces whose work the fused pass does (RLlib's defaults + our agent order)
_ENV_TO_MODULE = (
    AgentOrder,
    AddObservationsFromEpisodesToBatch,
    AddTimeDimToBatchAndZeroPad,
    AddStatesFromEpisodesToBatch,
    AgentToModuleMapping,
    BatchIndividualItems,
    NumpyToTensor,
)
_MODULE_TO_ENV = (
    GetActions,
    TensorToNumpy,
    UnBatchToIndividualItems,
    ModuleToAgentUnmapping,
    RemoveSingleTsTimeRankFromBatch,
    NormalizeAndClipActions,
    ListifyDataForVectorEnv,
)


def _pipeline_is(pipeline: Any, allowed: tuple[type, ...]) -> bool:
    conns = getattr(pipeline, "connectors", None)
    return conns is not None and all(isinstance(c, allowed) for c in conns)


class FusedActingEnvRunner(FastMultiAgentEnvRunner):
    """`FastMultiAgentEnvRunner` whose sampling loop acts without the connector pipelines."""

    fused_sample_calls = 0  # sample() calls that took the fused pass (in this process)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fused = self._fused_supported()
        self._action_fns: dict[Any, Any] = {}
        # (normalize, clip, per-agent action spaces) of the NormalizeAndClipActions piece
        self._action_settings: tuple[bool, bool, Any] = (False, False, None)
        if self._fused:
            for conn in self.module_to_env_pipeline.connectors:
                if isinstance(conn, NormalizeAndClipActions):
                    self._action_settings = (
                        conn.normalize_actions,
                        conn.clip_actions,
                        action_space_struct(conn),
                    )
        self._to_module_stale = False

    # -- when the fused pass applies ----------------------------------------------------------
    def _fused_supported(self) -> bool:
        module = getattr(self, "module", None)
        if module is None or not hasattr(module, "items"):
            return False
        for sub in module.values():
            if not isinstance(sub, ActorCriticModule) or not sub.continuous:
                return False
            if not sub.fast_acting or sub.is_stateful():
                return False
        return _pipeline_is(self.env_to_module_pipeline, _ENV_TO_MODULE) and _pipeline_is(
            self.module_to_env_pipeline, _MODULE_TO_ENV
        )

    # -- acting -------------------------------------------------------------------------------
    def _act(
        self, last_obs: list[dict], done: list[set], stacks: dict
    ) -> tuple[list[dict], list[dict], list[dict]]:
        """(module actions, env actions, extra model outputs) per env and agent to act.

        Item order per module is RLlib's: by env, then by (sorted) agent id; modules run and
        draw their samples in the order they first appear. Same-shape modules with as many
        rows each run as one `StackedActor` (`stacks`: built once per sample() call, as the
        weights are fixed within it).
        """
        rows: dict[str, list[tuple[int, Any]]] = {}
        obs_items: dict[str, list[Any]] = {}
        for i, episode in enumerate(self.ongoing_episodes):
            if not episode.is_reset or episode.is_done:
                continue
            for aid in sorted(last_obs[i]):
                if aid == "__all__" or aid in done[i]:
                    continue
                mid = episode.module_for(aid)
                rows.setdefault(mid, []).append((i, aid))
                obs_items.setdefault(mid, []).append(last_obs[i][aid])
        n = self.num_envs
        actions: list[dict] = [{} for _ in range(n)]
        env_actions: list[dict] = [{} for _ in range(n)]
        extras: list[dict] = [{} for _ in range(n)]
        if not rows:
            return actions, env_actions, extras
        obs = {mid: torch.from_numpy(np.stack(items)) for mid, items in obs_items.items()}
        layout = tuple((mid, len(r)) for mid, r in rows.items())
        if layout not in stacks:
            stacks[layout] = [
                (group, StackedActor([self.module[m] for m in group]))
                for group in stack_groups(self.module, dict(layout), singles=True)
            ]
        stacked_inputs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for group, actor in stacks[layout]:
                inputs = actor.dist_inputs(torch.stack([obs[m] for m in group]).float())
                stacked_inputs.update(zip(group, inputs, strict=True))
            outputs = {}
            for mid, x in obs.items():  # RLlib's module order: first appearance
                sub = self.module[mid]
                if mid in stacked_inputs:
                    out = sub.explore_outputs({Columns.ACTION_DIST_INPUTS: stacked_inputs[mid]})
                else:
                    out = sub.forward_exploration({Columns.OBS: x})
                outputs[mid] = {k: v.numpy() for k, v in out.items()}
        normalize, clip, spaces = self._action_settings
        seq = self.weights_seq_no
        for mid, out in outputs.items():
            acts = out.pop(Columns.ACTIONS)
            for_env = acts
            if normalize or clip:  # one array op per module where its agents share a space
                fn = self._module_action_fn(mid, rows[mid], spaces, normalize)
                for_env = fn(acts) if fn is not None else None
            for r, (i, aid) in enumerate(rows[mid]):
                a = acts[r]
                actions[i][aid] = a
                if for_env is not None:
                    env_actions[i][aid] = for_env[r]
                else:
                    fn = self._action_fns.get(aid)
                    if fn is None:
                        fn = self._action_fns[aid] = item_fn(spaces[aid], normalize)
                    env_actions[i][aid] = fn(a)
                extras[i][aid] = {**{col: values[r] for col, values in out.items()},
                                  WEIGHTS_SEQ_NO: seq}  # fmt: skip
        return actions, env_actions, extras

    def _module_action_fn(
        self, mid: str, rows: list[tuple[int, str]], spaces: Any, normalize: bool
    ) -> Any:
        """The per-item action fn applied to a module's whole `[B, A]` batch at once, when all
        its agents have the same float Box space (the same element-wise arithmetic), else None."""
        agents = {aid for _, aid in rows}
        key = (mid, frozenset(agents))
        if key not in self._action_fns:
            first = spaces[next(iter(agents))]
            same = isinstance(first, gym.spaces.Box) and all(
                isinstance(spaces[a], gym.spaces.Box)
                and spaces[a].shape == first.shape
                and spaces[a].dtype == first.dtype
                and np.array_equal(spaces[a].low, first.low)
                and np.array_equal(spaces[a].high, first.high)
                for a in agents
            )
            fn = item_fn(first, normalize) if same else None
            self._action_fns[key] = None if fn is copy.deepcopy else fn
        return self._action_fns[key]

    # -- the sampling loop (RLlib 2.60's MultiAgentEnvRunner loop, acting fused) ---------------
    def sample_episodes(
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[MultiAgentEpisode]:
        if not (self._fused and explore and not random_actions):
            if self._to_module_stale and not (
                force_reset or num_episodes is not None or self.needs_initial_reset
            ):  # RLlib's loop acts on the cached env-to-module output of the last step
                self.set_cached_to_module(
                    self.env_to_module_pipeline(
                        episodes=self.ongoing_episodes,
                        batch={},
                        explore=explore,
                        rl_module=self.module,
                        shared_data=self.shared_data,
                        metrics=None,
                    )
                )
            self._to_module_stale = False
            return super().sample_episodes(
                num_timesteps=num_timesteps,
                num_episodes=num_episodes,
                explore=explore,
                random_actions=random_actions,
                force_reset=force_reset,
            )
        self._env_steps = self._episodes_done = 0
        type(self).fused_sample_calls += 1
        try:
            return self._fused_sample(num_timesteps, num_episodes, force_reset)
        finally:
            self._to_module_stale = True
            self._flush_env_counts()
            self._flush_step_counts()

    def _count_step(self, next_obs: dict, episode: MultiAgentEpisode) -> None:
        """RLlib's per-step counters, summed here and logged once per sample() call."""
        self._env_steps += 1
        self._episodes_done += episode.is_done
        self._count_agent_steps(next_obs, episode)

    def _flush_env_counts(self) -> None:
        steps, episodes = self._env_steps, self._episodes_done
        self._env_steps = self._episodes_done = 0
        if steps:
            self.log_env_steps_sampled(steps)
            self.metrics.log_value(NUM_ENV_STEPS_SAMPLED, steps, reduce="sum")
            self.metrics.log_value(
                NUM_ENV_STEPS_SAMPLED_LIFETIME, steps, reduce="lifetime_sum", with_throughput=True
            )
        if episodes:
            self.metrics.log_value(NUM_EPISODES, episodes, reduce="sum")
            self.metrics.log_value(NUM_EPISODES_LIFETIME, episodes, reduce="lifetime_sum")

    def _last_observations(self) -> tuple[list[dict], list[set]]:
        """Each ongoing episode's latest observations of its agents to act (none done)."""
        obs, done = [], []
        for episode in self.ongoing_episodes:
            if episode.is_reset and not episode.is_done:
                latest = episode.get_observations(-1)
                obs.append({a: latest[a] for a in episode.get_agents_to_act()})
            else:
                obs.append({})
            done.append(set())
        return obs, done

    def _fused_sample(
        self, num_timesteps: int | None, num_episodes: int | None, force_reset: bool
    ) -> list[MultiAgentEpisode]:
        done_episodes_to_return: list[MultiAgentEpisode] = []
        env_ts = 0
        agent_ts = 0
        eps = 0
        if force_reset or num_episodes is not None or self.needs_initial_reset:
            self.reset_envs_and_episodes(True)
        if num_episodes is not None:
            self.needs_initial_reset = True
        last_obs, last_done = self._last_observations()
        stacks: dict = {}  # stacked actors by batch layout, for this call's fixed weights
        by_steps = self.config.count_steps_by == "env_steps"
        while (
            (eps < num_episodes)
            if num_timesteps is None
            else ((env_ts if by_steps else agent_ts) < num_timesteps)
        ):
            with self.metrics.log_time(RLMODULE_INFERENCE_TIMER):
                actions, actions_for_env, extras = self._act(last_obs, last_done, stacks)
            self.shared_data["vector_env_episodes_map"] = {}
            results = self.try_env_step(actions_for_env)
            if results == ENV_STEP_FAILURE:
                env_ts = 0
                agent_ts = 0
                self.reset_envs_and_episodes(True)
                last_obs, last_done = self._last_observations()
                continue
            observations, rewards, terminateds, truncateds, infos = results

            call_on_episode_start = set()
            for env_index in range(self.num_envs):
                episode = self.ongoing_episodes[env_index]
                if not episode.is_reset:
                    episode.add_env_reset(
                        observations=observations[env_index], infos=infos[env_index]
                    )
                    call_on_episode_start.add(env_index)
                else:
                    episode.add_env_step(
                        observations=observations[env_index],
                        actions=actions[env_index],
                        rewards=rewards[env_index],
                        infos=infos[env_index],
                        terminateds=terminateds[env_index],
                        truncateds=truncateds[env_index],
                        extra_model_outputs=extras[env_index],
                    )
                    env_ts += 1
                    agent_ts += len(observations[env_index])
                    self._count_step(observations[env_index], episode)

            for env_index in range(self.num_envs):
                if env_index in call_on_episode_start:
                    self.episode_callback("on_episode_start", env_index, self.ongoing_episodes)
                else:
                    self.episode_callback("on_episode_step", env_index, self.ongoing_episodes)
                if self.ongoing_episodes[env_index].is_done:
                    eps += 1
                    self.episode_callback("on_episode_end", env_index, self.ongoing_episodes)
                    self.ongoing_episodes[env_index].validate()
                    self.prune_empty_agent_episodes(self.ongoing_episodes[env_index])
                    done_episodes_to_return.append(self.ongoing_episodes[env_index])
                    if self.episodes_to_numpy:
                        self.ongoing_episodes[env_index].to_numpy()
                    old_episode_id = self.ongoing_episodes[env_index].id_
                    self.new_episode(env_index, self.ongoing_episodes)
                    self.shared_data["vector_env_episodes_map"].update(
                        {old_episode_id: self.ongoing_episodes[env_index].id_}
                    )
                    if num_episodes is not None and eps >= num_episodes:
                        break

            last_obs = observations
            last_done = [
                {a for a, d in term.items() if d} | {a for a, d in trunc.items() if d}
                for term, trunc in zip(terminateds, truncateds, strict=True)
            ]

        # RLlib's tail, unchanged: done episodes for metrics, ongoing ones cut and returned
        self.done_episodes_for_metrics.extend(done_episodes_to_return)
        ongoing_episodes_to_return = []
        if num_timesteps is not None:
            continuations = [
                eps.cut(len_lookback_buffer=self.config.episode_lookback_horizon)
                for eps in self.ongoing_episodes
            ]
            for eps in self.ongoing_episodes:
                if eps.env_t == 0:
                    continue
                eps.validate()
                self.ongoing_episodes_for_metrics[eps.id_].append(eps)
                self.prune_empty_agent_episodes(eps)
                if self.episodes_to_numpy:
                    ongoing_episodes_to_return.append(eps.to_numpy())
                else:
                    ongoing_episodes_to_return.append(eps)
            self.ongoing_episodes = continuations
        return done_episodes_to_return + ongoing_episodes_to_return
