"""The one module that touches Ray / RLlib / torch internals (private names), pinned to Ray 2.60.

The project extends RLlib through its public surface where there is one (`AlgorithmConfig`
subclasses, `ConnectorV2` pieces, `Learner.compute_gradients` / `postprocess_gradients` /
`apply_gradients` / `configure_optimizers_for_module`, `RLlibCallback`). What has no public
form (the learner's update step and minibatch iterator, the env runner's sampling loop and its
state, torch's multi-tensor kernels and Adam's state initialisation) is reached here and
nowhere else, under public names:

- `HookedPPOTorchLearner`: RLlib's private learner steps as overridable public methods
  (`update_step`, `make_train_batch`, `make_minibatch_iterator`, `log_off_policyness`,
  `log_steps_trained`) and read-only views of its optimizer bookkeeping;
- `HookedMultiAgentEnvRunner`: the sampling loop (`sample_episodes`, `log_sampled_step`) and
  the runner state a re-written loop needs;
- `CyclicIteratorState`: the state of RLlib's cyclic minibatch iterator;
- small functions for connector, SampleBatch, torch optimizer and Ray-internal details
  (the learner's lr schedules, Ray's dashboard URL, its GCS client, its cluster-mode flag,
  Tune's default storage path, a `shared_data` flag between two learner connector pieces).

`tests/test_training_adapter.py` checks that every private name listed in `PRIVATE_NAMES`
still exists on the installed Ray / torch, failing with the name that moved, and that no other
module of the project uses a Ray / RLlib / torch private name. Upgrading Ray means re-reading
the RLlib source behind each name below (RAY_VERSION) and re-running those tests and
tests/test_training_speedups.py, tests/test_training_grouped.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from ray._private import ray_constants
from ray._private.worker import get_dashboard_url
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.connectors.module_to_env.normalize_and_clip_actions import (
    NormalizeAndClipActions,
)
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.policy.sample_batch import SampleBatch
from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator
from ray.tune.trainable import trainable as tune_trainable_module
from torch.optim import optimizer as torch_optimizer

RAY_VERSION = "2.60"  # the Ray minor version the names below were read from

# (owner, private attribute) pairs this module relies on; instance attributes are looked up on
# a built instance by the test, class attributes on the class
PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "ray.rllib.core.learner.torch.torch_learner.TorchLearner": (
        "_uncompiled_update",
        "_compute_off_policyness",
        "_set_optimizer_lr",
    ),
    "ray.rllib.core.learner.learner.Learner": (
        "_make_batch_if_necessary",
        "_create_iterator_if_necessary",
        "_log_steps_trained_metrics",
    ),
    "ray.rllib.core.learner.learner.Learner()": (  # set in __init__ / build
        "_learner_connector",
        "_params",
        "_module_optimizers",
        "_optimizer_parameters",
        "_weights_seq_no",
    ),
    "ray.rllib.core.learner.torch.torch_learner.TorchLearner()": (
        "_grad_scalers",
        "_lr_scheduler_classes",
    ),
    "ray.rllib.env.multi_agent_env_runner.MultiAgentEnvRunner": (
        "_sample",
        "_increase_sampled_metrics",
        "_new_episode",
        "_make_on_episode_callback",
        "_prune_zero_len_sa_episodes",
        "_try_env_step",
        "_reset_envs_and_episodes",
        "_log_env_steps",
    ),
    "ray.rllib.env.multi_agent_env_runner.MultiAgentEnvRunner()": (
        "_ongoing_episodes",
        "_env_to_module",
        "_module_to_env",
        "_shared_data",
        "_needs_initial_reset",
        "_cached_to_module",
        "_done_episodes_for_metrics",
        "_ongoing_episodes_for_metrics",
        "_weights_seq_no",
        "_metrics_num_env_steps_sampled",
    ),
    "ray.rllib.utils.minibatch_utils.MiniBatchCyclicIterator()": (
        "_batch",
        "_start",
        "_minibatch_size",
        "_num_covered_epochs",
        "_num_epochs",
        "_num_total_minibatches",
        "_minibatch_count",
        "_shuffle_batch_per_epoch",
    ),
    "ray.rllib.connectors.module_to_env.normalize_and_clip_actions.NormalizeAndClipActions()": (
        "_action_space_struct",
    ),
    "ray.rllib.policy.sample_batch.SampleBatch()": ("_slice_seq_lens_in_B",),
    "torch.optim.Adam": ("_init_group",),
    "torch.optim.Adam()": ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks"),
    "torch.optim.optimizer": ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks"),
    "torch": ("_foreach_norm", "_foreach_mul_"),
    "ray.rllib.core.learner.learner.Learner()#lr": ("_optimizer_lr_schedules",),
    "ray": ("_private", "_raylet"),
    "ray._private.worker": ("get_dashboard_url",),
    "ray._private.ray_constants": ("ENABLE_RAY_CLUSTER",),
    "ray._raylet": ("GcsClient",),
    "ray.tune.trainable.trainable": ("DEFAULT_STORAGE_PATH",),
    "ray.rllib.policy.sample_batch.SampleBatch(**)": (
        "_time_major",
        "_zero_padded",
        "_max_seq_len",
        "_num_grad_updates",
    ),
}

# the `shared_data` flag RLlib's `AddOneTsToEpisodesAndTruncate` sets for the pieces after it
# (`AddTimeDimToBatchAndZeroPad` reads it); the project's twin of that piece sets it too
LOSS_MASK_ADDED_KEY = "_added_loss_mask_for_valid_episode_ts"

# Python source run in a subprocess (`ray_utils.check_gcs`): asks the GCS at argv[1] for one
# key, raising (non-zero exit) when it is not a live Ray head
GCS_PROBE = (
    "import sys\n"
    "from ray._raylet import GcsClient\n"
    "GcsClient(address=sys.argv[1]).internal_kv_get(b'rl_trading_probe', None, timeout=5)\n"
)


# -- learner ---------------------------------------------------------------------------------
LEARNER_CONNECTOR_STATE = "learner_connector"  # key of the pipeline's state in a learner's


class LearnerConnectorState:
    """Learner mixin: the learner connector pipeline's state (reward.normalize's running
    moments) is part of the learner's state, so a checkpoint keeps it and a restore or resume
    goes on with it (RLlib 2.60's `Learner.get_state` leaves the pipeline out)."""

    def get_state(
        self, components: Any = None, *, not_components: Any = None, **kwargs: Any
    ) -> dict:
        """`Learner.get_state`, plus the pipeline's state when the whole state or this key
        is asked for (weight syncs ask for the module only)."""
        state = super().get_state(components, not_components=not_components, **kwargs)
        wanted = components is None or LEARNER_CONNECTOR_STATE in component_names(components)
        wanted = wanted and LEARNER_CONNECTOR_STATE not in component_names(not_components)
        if wanted and self._learner_connector is not None:
            state[LEARNER_CONNECTOR_STATE] = self._learner_connector.get_state()
        return state

    def set_state(self, state: dict) -> None:
        """`Learner.set_state`, then the pipeline's state when `state` carries it."""
        super().set_state(state)
        if LEARNER_CONNECTOR_STATE in state and self._learner_connector is not None:
            self._learner_connector.set_state(state[LEARNER_CONNECTOR_STATE])


def component_names(components: Any) -> tuple[str, ...]:
    """`components` of a `get_state` call as a tuple of names (None: none)."""
    if components is None:
        return ()
    return (components,) if isinstance(components, str) else tuple(components)


class StatefulPPOTorchLearner(LearnerConnectorState, PPOTorchLearner):
    """RLlib's stock `PPOTorchLearner` whose checkpoints keep the learner connector's state
    (the stock path's learner under reward.normalize)."""


class StatefulSACTorchLearner(LearnerConnectorState, SACTorchLearner):
    """RLlib's `SACTorchLearner` whose checkpoints keep the learner connector's state (SAC's
    learner under reward.normalize)."""


class HookedPPOTorchLearner(LearnerConnectorState, PPOTorchLearner):
    """`PPOTorchLearner` whose private update steps are public, overridable methods.

    Each hook's default is RLlib's own step; a subclass overrides the public name and calls
    `super()` for the stock behaviour."""

    # private step -> public hook
    def _uncompiled_update(self, batch: dict, **kwargs: Any) -> Any:
        return self.update_step(batch, **kwargs)

    def _make_batch_if_necessary(self, training_data: Any) -> Any:
        return self.make_train_batch(training_data)

    def _create_iterator_if_necessary(self, **kwargs: Any) -> Any:
        return self.make_minibatch_iterator(**kwargs)

    def _compute_off_policyness(self, batch: Any) -> None:
        self.log_off_policyness(batch)

    def _log_steps_trained_metrics(self, batch: Any) -> None:
        self.log_steps_trained(batch)

    # the hooks (RLlib's steps by default)
    def update_step(self, batch: dict, **kwargs: Any) -> Any:
        """One minibatch: forward, losses, gradients, optimizer step (`TorchLearner`'s)."""
        return super()._uncompiled_update(batch, **kwargs)

    def make_train_batch(self, training_data: Any) -> Any:
        """The learner connector's batch from the training data (RLlib's)."""
        return super()._make_batch_if_necessary(training_data)

    def make_minibatch_iterator(self, **kwargs: Any) -> Any:
        """The update's minibatch iterator (RLlib's)."""
        return super()._create_iterator_if_necessary(**kwargs)

    def log_off_policyness(self, batch: Any) -> None:
        """RLlib's off-policyness metric of a minibatch."""
        super()._compute_off_policyness(batch)

    def log_steps_trained(self, batch: Any) -> None:
        """RLlib's per-minibatch step counters."""
        super()._log_steps_trained_metrics(batch)

    # read-only views of RLlib's bookkeeping
    @property
    def learner_connector(self) -> Any:
        """The learner connector pipeline."""
        return self._learner_connector

    @property
    def params_by_ref(self) -> dict:
        """Parameter reference -> torch parameter (what gradient dicts are keyed by)."""
        return self._params

    @property
    def optimizer_names(self) -> dict:
        """Module id -> names of its optimizers."""
        return self._module_optimizers

    def optimizer_param_refs(self, optimizer: Any) -> list:
        """Parameter references an optimizer updates."""
        return self._optimizer_parameters[optimizer]

    @property
    def uses_grad_scalers(self) -> bool:
        """Whether mixed-precision gradient scalers are configured."""
        return self._grad_scalers is not None

    @property
    def uses_lr_scheduler_classes(self) -> bool:
        """Whether torch lr scheduler classes are configured."""
        return self._lr_scheduler_classes is not None

    @property
    def weights_seq_no(self) -> int:
        """The weights' sequence number (step counters log it)."""
        return self._weights_seq_no


class CyclicIteratorState(MiniBatchCyclicIterator):
    """RLlib's cyclic minibatch iterator with its loop state under public names."""

    @classmethod
    def like(cls, stock: MiniBatchCyclicIterator) -> CyclicIteratorState:
        """A new iterator of this class over the same batch, with the same settings as the
        not yet started `stock` one (RLlib's constructor has no side effects)."""
        return cls(
            stock._batch,
            num_epochs=stock._num_epochs,
            minibatch_size=stock._minibatch_size,
            shuffle_batch_per_epoch=stock._shuffle_batch_per_epoch,
            num_total_minibatches=stock._num_total_minibatches,
        )

    @property
    def source_batch(self) -> Any:
        """The MultiAgentBatch the minibatches are cut from."""
        return self._batch

    @property
    def starts(self) -> dict:
        """Module id -> the next minibatch's first row (mutable)."""
        return self._start

    @property
    def minibatch_rows(self) -> int:
        return self._minibatch_size

    @property
    def covered_epochs(self) -> dict:
        """Module id -> epochs covered so far (mutable)."""
        return self._num_covered_epochs

    @property
    def num_epochs(self) -> int:
        return self._num_epochs

    @property
    def total_minibatches(self) -> int:
        """The fixed number of minibatches (0: go by epochs)."""
        return self._num_total_minibatches

    @property
    def minibatch_count(self) -> int:
        return self._minibatch_count

    @minibatch_count.setter
    def minibatch_count(self, value: int) -> None:
        self._minibatch_count = value

    @property
    def shuffle_per_epoch(self) -> bool:
        return self._shuffle_batch_per_epoch

    def stock_iter(self) -> Iterator:
        """RLlib's own loop."""
        return MiniBatchCyclicIterator.__iter__(self)


# -- env runner ------------------------------------------------------------------------------
class HookedMultiAgentEnvRunner(MultiAgentEnvRunner):
    """`MultiAgentEnvRunner` whose sampling loop is a public hook and whose loop state is
    reachable under public names (for a re-written loop, `fast/fused_runner.py`)."""

    def _sample(self, **kwargs: Any) -> Any:
        return self.sample_episodes(**kwargs)

    def _increase_sampled_metrics(self, num_steps: int, next_obs: dict, episode: Any) -> Any:
        return self.log_sampled_step(num_steps, next_obs, episode)

    def sample_episodes(self, **kwargs: Any) -> Any:
        """The sampling loop behind `sample()` (RLlib's)."""
        return super()._sample(**kwargs)

    def log_sampled_step(self, num_steps: int, next_obs: dict, episode: Any) -> Any:
        """RLlib's per-step sampling counters."""
        return super()._increase_sampled_metrics(num_steps, next_obs, episode)

    @property
    def ongoing_episodes(self) -> list:
        return self._ongoing_episodes

    @ongoing_episodes.setter
    def ongoing_episodes(self, value: list) -> None:
        self._ongoing_episodes = value

    @property
    def env_to_module_pipeline(self) -> Any:
        return self._env_to_module

    @property
    def module_to_env_pipeline(self) -> Any:
        return getattr(self, "_module_to_env", None)

    @property
    def shared_data(self) -> dict:
        return self._shared_data

    @property
    def needs_initial_reset(self) -> bool:
        return self._needs_initial_reset

    @needs_initial_reset.setter
    def needs_initial_reset(self, value: bool) -> None:
        self._needs_initial_reset = value

    def set_cached_to_module(self, value: Any) -> None:
        """The env-to-module output RLlib's loop acts on at its next step."""
        self._cached_to_module = value

    @property
    def done_episodes_for_metrics(self) -> list:
        return self._done_episodes_for_metrics

    @property
    def ongoing_episodes_for_metrics(self) -> dict:
        return self._ongoing_episodes_for_metrics

    @property
    def weights_seq_no(self) -> int:
        return self._weights_seq_no

    def log_env_steps_sampled(self, num_steps: int) -> None:
        """RLlib's env-step counter of the runner (its throughput window)."""
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=num_steps)

    def try_env_step(self, actions: Any) -> Any:
        return self._try_env_step(actions)

    def reset_envs_and_episodes(self, explore: bool) -> None:
        self._reset_envs_and_episodes(explore)

    def new_episode(self, env_index: int, episodes: list) -> None:
        self._new_episode(env_index, episodes)

    def episode_callback(self, which: str, env_index: int, episodes: list) -> None:
        self._make_on_episode_callback(which, env_index, episodes)

    def prune_empty_agent_episodes(self, episode: Any) -> None:
        self._prune_zero_len_sa_episodes(episode)


# -- small functions -------------------------------------------------------------------------
def action_space_struct(connector: NormalizeAndClipActions) -> Any:
    """The per-agent action spaces a `NormalizeAndClipActions` piece works with."""
    return connector._action_space_struct


def slices_sequences(batch: SampleBatch) -> bool:
    """Whether a SampleBatch slices by sequence (then rows cannot be sliced directly)."""
    return bool(batch._slice_seq_lens_in_B)


def sample_batch_rows(batch: SampleBatch, start: int, end: int) -> SampleBatch:
    """Rows [start, end) of a flat SampleBatch with its settings (what slicing keeps)."""
    return SampleBatch(
        {k: v[start:end] for k, v in batch.items()},
        _time_major=batch.time_major,
        _zero_padded=batch.zero_padded,
        _max_seq_len=batch.max_seq_len,
        _num_grad_updates=float(batch.num_grad_updates or 0.0),
    )


def foreach_norm(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each tensor, in one multi-tensor kernel."""
    return torch._foreach_norm(tensors)


def foreach_mul_(tensors: list[torch.Tensor], scalars: list[torch.Tensor]) -> None:
    """`tensors[i] *= scalars[i]` in place, in one multi-tensor kernel."""
    torch._foreach_mul_(tensors, scalars)


def has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether an optimizer (or every optimizer, globally) has step pre/post hooks."""
    return bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or global_optimizer_hooks()
    )


def global_optimizer_hooks() -> bool:
    """Whether torch has global optimizer step hooks registered."""
    return bool(
        torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks
    )


def adam_init_group(optimizer: torch.optim.Adam, lists: tuple[list, ...]) -> bool:
    """Adam's own per-step gathering of its (only) group's tensors and state into `lists`
    (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps), creating missing state as
    `step()` would; whether any tensor is complex."""
    return optimizer._init_group(optimizer.param_groups[0], *lists)


def reapply_config_lr(learner: Any) -> None:
    """Set each of a learner's optimizers to its configured (schedule's first) learning rate,
    as RLlib does when it builds them (after an lr was changed in place, e.g. by PBT)."""
    for optimizer, schedule in learner._optimizer_lr_schedules.items():
        learner._set_optimizer_lr(optimizer, lr=float(schedule.update(timestep=0)))


def dashboard_url() -> str | None:
    """Dashboard URL of the Ray this process is connected to (None when it has none)."""
    try:
        return get_dashboard_url() or None
    except Exception:  # noqa: BLE001 - an older or remote Ray without the attribute
        return None


@contextlib.contextmanager
def ray_cluster_mode(enabled: bool) -> Iterator[None]:
    """Ray's cluster-mode flag (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`, read once at import) set
    to `enabled` for the length of the block (a node started inside keeps a loopback IP)."""
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = enabled
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextlib.contextmanager
def tune_default_storage(path: str) -> Iterator[None]:
    """Tune's default storage path (where a Trainable built outside a Tune trial makes its
    log folder; RLlib 2.60 has no logger_creator argument any more) set to `path` for the
    length of the block."""
    before = tune_trainable_module.DEFAULT_STORAGE_PATH
    tune_trainable_module.DEFAULT_STORAGE_PATH = path
    try:
        yield
    finally:
        tune_trainable_module.DEFAULT_STORAGE_PATH = before
