"""PPO torch learner: one fused finiteness check per update, one multi-tensor Adam step.

RLlib's ``TorchLearner.apply_gradients`` runs ``torch.isfinite(grad).all()`` twice for every
parameter tensor (8 specialists x 13 tensors = 208 small kernels + Python per minibatch), about
a fifth of the learner's time with these small MLPs on CPU. Here all gradient norms come from
one multi-tensor norm: when they are all finite, every gradient entry is finite and the
stock path would set the grads and step every optimizer, which is what we do. Otherwise
(NaN/inf, or a norm overflowing) the stock ``apply_gradients`` runs unchanged, so the results
are identical to RLlib's in every case. Its Adam optimizers use torch's multi-tensor
(`foreach`) implementation, which CPU tensors do not get by default: the same arithmetic per
element (bit-identical weights, tests/test_training_speedups.py). The optimizers that share
their hyperparameters (all specialists in phase 1) step together in one multi-tensor Adam call
over all their tensors: Adam updates every tensor independently, so this is the same
arithmetic as one `step()` per optimizer, in a tenth of the small ops. Minibatches come from
RLlib's cyclic iterator, except that a minibatch that is one contiguous slice of a module's
batch is taken as that slice instead of being sliced and then re-concatenated (a copy of every
column) by generic SampleBatch code, and the per-epoch shuffle gathers torch columns with
`index_select`: the same rows, order and shuffles. Modules this phase does not train (phase 2's
frozen specialists) are left out of the learner connector, which RLlib runs over every agent
before it drops their batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.connectors.learner.add_one_ts_to_episodes_and_truncate import (
    AddOneTsToEpisodesAndTruncate,
)
from ray.rllib.core.columns import Columns
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch, concat_samples
from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator
from ray.rllib.utils.postprocessing.episodes import add_one_ts_to_episodes_and_truncate
from torch.optim import adam as torch_adam

from policies.pretrained import register_optimizers
from rl_trading.rllib_adapter import (
    LOSS_MASK_ADDED_KEY,
    CyclicIteratorState,
    HookedPPOTorchLearner,
    adam_init_group,
    foreach_norm,
    global_optimizer_hooks,
    has_step_hooks,
    sample_batch_rows,
    slices_sequences,
)
from rl_trading.training.fast.env_runner import Twin, install_twins

# Adam param-group settings that must agree for optimizers to step in one call
ADAM_SETTINGS = (
    "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay",
)  # fmt: skip


class FastAddOneTsToEpisodesAndTruncate(Twin, AddOneTsToEpisodesAndTruncate):
    """RLlib's `AddOneTsToEpisodesAndTruncate` with its three per-step flag columns (loss
    mask, terminateds, truncateds) added as one bool array per episode chunk instead of one
    Python bool at a time (~100k `add_batch_item` calls per phase-3 update). The next pieces
    batch both forms into the same bool arrays (tests/test_training_speedups.py)."""

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
        """The stock piece's body (episode ids, the appended timestep, flag conventions)."""
        if isinstance(episodes[0], MultiAgentEpisode):
            for i, ma_episode in enumerate(episodes):
                ma_episode.id_ += "_" + str(i)
                for sa_episode in ma_episode.agent_episodes.values():
                    sa_episode.multi_agent_episode_id = ma_episode.id_
        for i, sa_episode in enumerate(
            self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False)
        ):
            sa_episode.id_ += "_" + str(i)
            len_ = len(sa_episode)
            add_one_ts_to_episodes_and_truncate([sa_episode])
            loss_mask = np.ones(len_ + 1, dtype=bool)
            loss_mask[len_] = False
            self.add_n_batch_items(batch, Columns.LOSS_MASK, loss_mask, len_ + 1, sa_episode)
            for column, flag in (
                (Columns.TERMINATEDS, sa_episode.is_terminated),
                (Columns.TRUNCATEDS, sa_episode.is_truncated),
            ):
                # last real step: its flag; the appended bootstrap step: never set
                values = np.zeros(len_ + 1, dtype=bool)
                if len_ > 0:
                    values[len_ - 1] = bool(flag)
                self.add_n_batch_items(batch, column, values, len_ + 1, sa_episode)
        shared_data[LOSS_MASK_ADDED_KEY] = True
        return batch


_LEARNER_TWINS = {AddOneTsToEpisodesAndTruncate: FastAddOneTsToEpisodesAndTruncate}


def plain_adam(opt: torch.optim.Optimizer) -> bool:
    """A torch Adam with one param group, a float lr and no step hooks: its `step()` is just
    the Adam arithmetic over its tensors, so another call may do that arithmetic for it."""
    if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
        return False
    group = opt.param_groups[0]
    return (
        not group.get("capturable")
        and not group.get("differentiable")
        and not isinstance(group["lr"], torch.Tensor)
        and not has_step_hooks(opt)
    )


def _joinable(opt: torch.optim.Optimizer) -> bool:
    """A plain multi-tensor (not fused) Adam: safe to step jointly with its likes."""
    group = opt.param_groups[0]
    return plain_adam(opt) and bool(group.get("foreach")) and not group.get("fused")


def step_jointly(optimizers: list[torch.optim.Optimizer]) -> None:
    """`opt.step()` for each optimizer, with same-setting Adams in one multi-tensor call."""
    if global_optimizer_hooks():
        for opt in optimizers:
            opt.step()
        return
    joint: dict[tuple, list[torch.optim.Adam]] = {}
    for opt in optimizers:
        if _joinable(opt):
            group = opt.param_groups[0]
            joint.setdefault(tuple(group[k] for k in ADAM_SETTINGS), []).append(opt)
        else:
            opt.step()
    for key, opts in joint.items():
        if len(opts) == 1:
            opts[0].step()
            continue
        settings = dict(zip(ADAM_SETTINGS, key, strict=True))
        lists: tuple[list, ...] = ([], [], [], [], [], [])
        has_complex = False
        with torch.no_grad():
            for opt in opts:  # creates missing state exactly as step() would
                has_complex |= adam_init_group(opt, lists)
            beta1, beta2 = settings.pop("betas")
            torch_adam.adam(
                *lists,
                foreach=True,
                has_complex=has_complex,
                beta1=beta1,
                beta2=beta2,
                **settings,
            )


def _plain(batch: SampleBatch) -> bool:
    """A batch of flat tensor / array columns, no sequences or infos (safe to slice directly)."""
    if slices_sequences(batch) or SampleBatch.SEQ_LENS in batch or SampleBatch.INFOS in batch:
        return False
    return all(isinstance(v, torch.Tensor | np.ndarray) for v in batch.values())


def shuffle_rows(batch: SampleBatch) -> None:
    """`batch.shuffle()` for a plain batch: the same `np.random.permutation` draw applied to
    every column, torch columns by `index_select` (several times faster than indexing with a
    numpy array, which `SampleBatch.shuffle` does; the same rows, bit for bit)."""
    permutation = np.random.permutation(batch.count)
    index = torch.from_numpy(permutation)
    shuffled = {
        key: value.index_select(0, index.to(value.device))
        if isinstance(value, torch.Tensor)
        else value[permutation]
        for key, value in batch.items()
    }
    batch.update(shuffled)
    batch.intercepted_values = {}


class FastMiniBatchCyclicIterator(CyclicIteratorState):
    """RLlib's cyclic minibatch iterator; contiguous minibatches skip the slice + concat copy."""

    def __iter__(self):
        """Same loop as `MiniBatchCyclicIterator.__iter__` (same rows, epochs and shuffles)."""
        source = self.source_batch
        batches = source.policy_batches.values()
        if not all(len(b) > 0 and _plain(b) for b in batches):  # sequences, infos, empty
            yield from self.stock_iter()
            return
        starts, covered, total = self.starts, self.covered_epochs, self.total_minibatches
        while (total == 0 and min(covered.values()) < self.num_epochs) or (
            total > 0 and self.minibatch_count < total
        ):
            minibatch = {}
            for module_id, module_batch in source.policy_batches.items():
                start = starts[module_id]
                n_steps = self.minibatch_rows
                parts = []
                while start + n_steps >= len(module_batch):
                    part = module_batch[start:]
                    parts.append(part)
                    n_steps -= len(part)
                    start = 0
                    covered[module_id] += 1
                    if self.shuffle_per_epoch:
                        shuffle_rows(module_batch)
                end = start + n_steps
                if parts:
                    if end > start:
                        parts.append(module_batch[start:end])
                    minibatch[module_id] = concat_samples(parts)
                else:
                    minibatch[module_id] = sample_batch_rows(module_batch, start, end)
                starts[module_id] = end
            yield MultiAgentBatch(minibatch, len(source))
            self.minibatch_count += 1


class FastPPOTorchLearner(HookedPPOTorchLearner):
    """PPOTorchLearner with one fused finiteness check, joint multi-tensor Adam steps and
    copy-free contiguous minibatches (bit-identical updates)."""

    adam_kwargs: dict[str, bool] = {"foreach": True}  # multi-tensor Adam (CPU default: loop)
    connector_batch_modules: frozenset = frozenset()  # modules in the last connector batch

    def build(self) -> None:
        """RLlib's build, with the learner connector's pieces swapped for their fast twins."""
        super().build()
        install_twins(self.learner_connector, _LEARNER_TWINS)

    def make_train_batch(self, training_data: Any) -> Any:
        """RLlib's, with the agents of modules this learner does not train (phase 2's frozen
        specialists) hidden from the learner connector: RLlib batches their episodes, runs
        their value networks and GAE, then drops their batches before the first minibatch.
        Every piece works per agent or per module, so the trained modules' batches are the
        same (tests/test_training_speedups.py: bit-identical weights in phase 2)."""
        untrained = self._untrained_modules()
        episodes = training_data.episodes
        if not untrained or not episodes or not isinstance(episodes[0], MultiAgentEpisode):
            return self._note_modules(super().make_train_batch(training_data))
        kept = [episode.agent_episodes for episode in episodes]
        try:
            for episode in episodes:
                episode.agent_episodes = {
                    aid: sa
                    for aid, sa in episode.agent_episodes.items()
                    if episode.module_for(aid) not in untrained
                }
            return self._note_modules(super().make_train_batch(training_data))
        finally:
            for episode, agent_episodes in zip(episodes, kept, strict=True):
                episode.agent_episodes = agent_episodes

    def _note_modules(self, batch: Any) -> Any:
        """Record which modules the learner connector's batch holds (tests), return it."""
        if isinstance(batch, MultiAgentBatch):
            self.connector_batch_modules = frozenset(batch.policy_batches)
        return batch

    def _untrained_modules(self) -> frozenset:
        """Module ids that `policies_to_train` (a collection, not a function) leaves out."""
        chosen = self.config.policies_to_train
        if chosen is None or callable(chosen):
            return frozenset()
        return frozenset(self.module.keys()) - frozenset(chosen)

    def make_minibatch_iterator(self, **kwargs: Any) -> Any:
        """RLlib's minibatch iterator; its cyclic one as `FastMiniBatchCyclicIterator`."""
        batch_iter = super().make_minibatch_iterator(**kwargs)
        if type(batch_iter) is MiniBatchCyclicIterator:
            return FastMiniBatchCyclicIterator.like(batch_iter)
        return batch_iter

    def configure_optimizers_for_module(self, module_id: Any, config: Any = None) -> None:
        """RLlib's default optimizer (Adam, `config.lr` schedule) with `adam_kwargs`; a
        pretrained-encoder module's encoder frozen or in its own optimizer (policies/pretrained)."""
        if register_optimizers(self, module_id, config, **self.adam_kwargs):
            return
        params = self.get_parameters(self.module[module_id])
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(params, **self.adam_kwargs),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    def apply_gradients(self, gradients_dict: dict[Any, torch.Tensor]) -> None:
        """Set the grads and step the optimizers; stock RLlib path when anything is not finite."""
        if (
            self.config.torch_skip_nan_gradients
            or self.uses_grad_scalers
            or self.uses_lr_scheduler_classes
        ):
            return super().apply_gradients(gradients_dict)
        grads = list(gradients_dict.values())
        if any(g is None for g in grads):
            return super().apply_gradients(gradients_dict)
        if grads and not bool(torch.isfinite(torch.stack(foreach_norm(grads))).all()):
            return super().apply_gradients(gradients_dict)
        for pid, grad in gradients_dict.items():
            self.params_by_ref[pid].grad = grad
        step_jointly(self._optimizers_to_step())
        return None

    def _optimizers_to_step(self) -> list:
        """The optimizers `apply_gradients` steps: all of them."""
        return [
            self.get_optimizer(module_id, name)
            for module_id, names in self.optimizer_names.items()
            for name in names
        ]
