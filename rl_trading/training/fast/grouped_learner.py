"""PPO learner that updates same-shape MLP policies as one stacked network (the default).

Phase 1 trains eight specialist MLPs of identical shape, each on its own equal-sized
minibatch. RLlib runs them one after another: forward, PPO loss, backward, gradient clip and
Adam, each a few dozen small torch ops paid eight times per minibatch, which made the learner
most of an iteration's time on CPU. Here such a group runs stacked: its weights and Adam state
are held as `[G, ...]` tensors for one update (`HeldStack`), the forward is one batched matmul
per layer (`policies/stacked.py`), the PPO loss runs on `[G, B]` tensors, then one backward,
each module's global-norm clip from its own norms, and one fused Adam step; at the end of the
update everything is written back into the modules and their optimizers. Every module keeps
its own parameters, optimizer, loss, KL coefficient and metrics, exactly as in
`PPOTorchLearner`. A module of its own shape (the meta) runs the same path as a group of one;
modules that cannot be stacked (other architectures, a distributed learner group) take
RLlib's path. The loss is RLlib's PPO loss term for term (tests/test_training_grouped.py
compares the weights after two iterations with `PPOTorchLearner`'s within float32 rounding,
in phase 1 and, with the meta, phase 3).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from ray.rllib.algorithms.ppo.ppo import (
    LEARNER_RESULTS_KL_KEY,
    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    MODULE_TRAIN_BATCH_SIZE_MEAN,
    NUM_ENV_STEPS_TRAINED,
    NUM_ENV_STEPS_TRAINED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    WEIGHTS_SEQ_NO,
)
from ray.rllib.utils.numpy import SMALL_NUMBER

from policies.stacked import FIRST_LAYER_NAMES, stack_signature, stacked_forward_train
from rl_trading.rllib_adapter import foreach_mul_, foreach_norm
from rl_trading.training.fast.learner import ADAM_SETTINGS, FastPPOTorchLearner, plain_adam

logger = logging.getLogger(__name__)
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # as torch.distributions.Normal
_NORM_CAP = 10e8  # RLlib's nan_to_num bound on gradient norms (torch_utils.compute_global_norm)


def _has_grads(opt: torch.optim.Optimizer) -> bool:
    """Whether any parameter of `opt` holds a gradient (else zero_grad / Adam do nothing)."""
    return any(p.grad is not None for group in opt.param_groups for p in group["params"])


def _capped(norms: torch.Tensor) -> torch.Tensor:
    """Gradient norms with nan/inf bounded as RLlib's `compute_global_norm` does."""
    return norms.nan_to_num(neginf=-_NORM_CAP, posinf=_NORM_CAP)


def _clip_coefficients(global_norms: torch.Tensor, clip: torch.Tensor | float) -> torch.Tensor:
    """RLlib's global-norm clip factor per module (`torch_utils.clip_gradients`), at most 1."""
    return torch.clamp(clip / torch.clamp(global_norms + 1e-6, min=clip), max=1.0)


class HeldStack:
    """One group's parameters and Adam state held as one flat `[G, P]` tensor for one update.

    Stacking per minibatch copies every weight in and every gradient out again, and clipping
    and Adam then run on G x 13 small tensors. Held, the group trains as one leaf: the forward
    reads per-name views of it (`views()`, one `torch.split`), autograd brings the gradient
    back as one `[G, P]` tensor (the split's backward is one concatenation), so each module's
    global norm is one row norm, the clip one multiply, and Adam one fused step whose state
    was gathered from the modules' own optimizers (the same element-wise update).
    At the end of the update (or before any other use of these modules) `release()` writes the
    weights and Adam state back into the modules and their optimizers.
    """

    def __init__(
        self, modules: list, optimizers: list, mids: list[str], names: list[str], clip: float
    ) -> None:
        self.mids = tuple(mids)
        self.optimizers = optimizers
        self.clip = clip  # the group's `grad_clip` (global norm)
        # metric key of each module's clipped norm, as RLlib's postprocess_gradients logs it
        self.norm_keys = [
            (mid, f"gradients_{name}_global_norm") for mid, name in zip(mids, names, strict=True)
        ]
        named = [dict(m.named_parameters()) for m in modules]
        order = list(named[0])
        if set(FIRST_LAYER_NAMES) <= set(order):  # adjacent: the fused first layer is a view
            order = [*FIRST_LAYER_NAMES, *(n for n in order if n not in FIRST_LAYER_NAMES)]
        self.members = {name: [d[name] for d in named] for name in order}
        layout, off = [], 0
        for ps in self.members.values():
            layout.append((off, ps[0].numel(), tuple(ps[0].shape)))
            off += ps[0].numel()
        self.layout = tuple(layout)
        self.names = tuple(self.members)
        g = len(modules)

        def flat_of(tensors_per_name: list[list[torch.Tensor]]) -> torch.Tensor:
            return torch.cat(
                [torch.stack([t.detach() for t in ts]).reshape(g, -1) for ts in tensors_per_name],
                dim=1,
            )

        with torch.no_grad():
            self.flat = flat_of(list(self.members.values())).requires_grad_()
        # the pieces `views()` splits the flat tensor into: with the actor's and critic's
        # first layers adjacent, each pair as one piece (the fused first layer)
        self._pieces: list[tuple[str, int, tuple]] = []
        rest = list(zip(self.names, self.layout, strict=True))
        if self.names[:4] == FIRST_LAYER_NAMES:
            (_, w_n, w_shape), (_, v_n, v_shape), (_, b_n, _), (_, c_n, _) = self.layout[:4]
            self._pieces += [
                ("first.weight", w_n + v_n, (w_shape[0] + v_shape[0], w_shape[1])),
                ("first.bias", b_n + c_n, (b_n + c_n,)),
            ]
            rest = rest[4:]
        self._pieces += [(name, n, shape) for name, (_, n, shape) in rest]
        group = optimizers[0].param_groups[0]
        self.optimizer = torch.optim.Adam(
            [self.flat], **{k: group[k] for k in ADAM_SETTINGS}, fused=True
        )
        states = [
            [opt.state.get(p) for opt, p in zip(optimizers, ps, strict=True)]
            for ps in self.members.values()
        ]
        if states[0][0]:
            self.optimizer.state[self.flat] = {
                "step": states[0][0]["step"].detach().clone().to(self.flat.device),
                "exp_avg": flat_of([[st["exp_avg"] for st in sts] for sts in states]),
                "exp_avg_sq": flat_of([[st["exp_avg_sq"] for st in sts] for sts in states]),
            }

    def views(self) -> dict[str, torch.Tensor]:
        """`{parameter name: [G, ...]}` views of the held weights, for one forward pass (with
        the first layers adjacent, the fused layer as `first.weight` / `first.bias`)."""
        g = self.flat.shape[0]
        parts = self.flat.split([n for _, n, _ in self._pieces], dim=1)
        return {
            name: part.view(g, *shape)
            for (name, _, shape), part in zip(self._pieces, parts, strict=True)
        }

    @staticmethod
    def can_hold(optimizers: list, params_of: list) -> bool:
        """Plain one-group Adams with equal settings over each module's parameters, in order,
        whose state (if any) has one common step count."""
        first = None
        step = None
        for opt, params in zip(optimizers, params_of, strict=True):
            if not plain_adam(opt):
                return False
            group = opt.param_groups[0]
            if group["amsgrad"] or group.get("decoupled_weight_decay"):
                return False
            if [id(p) for p in group["params"]] != [id(p) for p in params]:
                return False
            settings = tuple(group[k] for k in ADAM_SETTINGS)
            first = settings if first is None else first
            if settings != first:
                return False
            for p in params:
                st = opt.state.get(p)
                value = float(st["step"]) if st else 0.0
                step = value if step is None else step
                if value != step or (st and not {"exp_avg", "exp_avg_sq"} <= st.keys()):
                    return False
        return True

    def step(self, log: Any) -> None:
        """RLlib's per-module global-norm clip, its nan/inf handling, then one Adam step;
        `log(keys, values)` takes the modules' clipped-norm metrics (window 1)."""
        grad = self.flat.grad
        if grad is None:
            return
        grad = grad.detach()
        norms = torch.linalg.vector_norm(grad, dim=1)
        # a finite norm means finite gradients (one sync); otherwise RLlib's own arithmetic:
        # per-tensor norms with nan/inf bounded, then each module's global norm of those
        finite = bool(torch.isfinite(norms).all())
        if not finite:
            per_tensor = torch.stack(
                [torch.linalg.vector_norm(grad[:, o : o + n], dim=1) for o, n, _ in self.layout]
            )
            norms = torch.linalg.vector_norm(_capped(per_tensor), dim=0)
        norms = _capped(norms)
        grad.mul_(_clip_coefficients(norms, self.clip).unsqueeze(1))
        log(self.norm_keys, norms)
        # as TorchLearner.apply_gradients: nan/inf -> 0
        if not finite and not bool(torch.isfinite(grad).all()):
            logger.warning("Gradients of %s contain `nan/inf` values; set to zero.", self.mids)
            self.flat.grad = torch.nan_to_num(grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def release(self) -> None:
        """Write the weights and Adam state back into the modules and their optimizers."""
        state = self.optimizer.state.get(self.flat)
        with torch.no_grad():
            for name, (off, n, shape) in zip(self.names, self.layout, strict=True):
                pairs = zip(self.optimizers, self.members[name], strict=True)
                for i, (opt, p) in enumerate(pairs):
                    p.copy_(self.flat[i, off : off + n].view(shape))
                    if not state:
                        continue
                    avg = state["exp_avg"][i, off : off + n].view(shape)
                    avg_sq = state["exp_avg_sq"][i, off : off + n].view(shape)
                    own = opt.state.get(p)
                    if own:
                        own["exp_avg"].copy_(avg)
                        own["exp_avg_sq"].copy_(avg_sq)
                        own["step"] = state["step"].clone().to(own["step"].device)
                    else:
                        opt.state[p] = {
                            "step": state["step"].clone(),
                            "exp_avg": avg.clone(),
                            "exp_avg_sq": avg_sq.clone(),
                        }


class GroupedPPOTorchLearner(FastPPOTorchLearner):
    """FastPPOTorchLearner that runs groups of same-shape MLP modules as one network."""

    # Adam as torch's fused kernel: one kernel per tensor instead of a dozen element-wise ops,
    # the same update within float32 rounding, ~3x faster on these small CPU tensors
    adam_kwargs = {"fused": True}

    def _stack_groups(self, batch: dict[str, Any]) -> list[list[str]]:
        """Module ids of this minibatch that can run stacked, in groups of same-shape modules.

        A group of one (the meta) takes the same path: its held weights, the loss on stacked
        tensors and one fused Adam cost less per step than RLlib's per-module update."""
        cfg = self.config
        if cfg.num_learners > 1 or self.uses_grad_scalers or cfg.torch_compile_learner:
            return []  # DDP syncs through the wrapped forward; keep RLlib's path there
        # the grouping depends on the modules and the minibatch shapes only: found once
        shape = tuple(
            (mid, id(self.module[mid]) if mid in self.module else None,
             tuple(mb[Columns.OBS].shape) if Columns.OBS in mb else None,
             Columns.LOSS_MASK in mb)
            for mid, mb in batch.items()
        )  # fmt: skip
        if shape not in self._groups_of:
            self._groups_of[shape] = self._find_groups(batch)
        return [list(group) for group in self._groups_of[shape]]

    def _find_groups(self, batch: dict[str, Any]) -> list[list[str]]:
        cfg = self.config
        by_key: dict[tuple, list[str]] = {}
        for mid, mb in batch.items():
            if mid not in self.module:
                continue
            module = self.module[mid].unwrapped()
            sig = stack_signature(module)
            if sig is None or Columns.OBS not in mb:
                continue
            if module.get_train_action_dist_cls() is not TorchDiagGaussian:
                continue
            if module.get_exploration_action_dist_cls() is not TorchDiagGaussian:
                continue
            mcfg = cfg.get_config_for_module(mid)
            if not mcfg.use_critic:
                continue
            key = (
                sig,
                mcfg.clip_param,
                mcfg.vf_clip_param,
                mcfg.vf_loss_coeff,
                mcfg.use_kl_loss,
                mcfg.grad_clip,
                mcfg.grad_clip_by,
                tuple(mb[Columns.OBS].shape),
                Columns.LOSS_MASK in mb,
            )
            by_key.setdefault(key, []).append(mid)
        return list(by_key.values())

    def build(self) -> None:
        """RLlib's build, plus the (empty) table of held stacks."""
        super().build()
        self._held: dict[tuple[str, ...], HeldStack] = {}
        self._window1: dict[tuple, tuple[torch.Tensor, int]] = {}
        self._window1_stats: dict[str, tuple[dict[str, torch.Tensor], int]] = {}
        self._off_policy_batch: dict | None = None
        self._groups_of: dict[tuple, list[list[str]]] = {}
        self._steps_trained: list[tuple[dict[str, int], int]] = []
        self._group_totals: list[tuple[tuple[str, ...], torch.Tensor]] = []
        self._fixed_entropy_coeffs: dict[tuple, tuple[list, torch.Tensor]] = {}

    # -- window-1 metrics: only the update's last minibatch counts, so log that one ------------
    def _defer(self, keys: list, values: torch.Tensor) -> None:
        """Keep the latest of per-module window-1 metrics (`values[i]` for `keys[i]`) until the
        update ends: a window of 1 reports the last minibatch's value (same result, one log)."""
        for i, key in enumerate(keys):
            self._window1[key] = (values, i)

    def _defer_stats(self, mids: list[str], stats: Any) -> None:
        """As `_defer`, for the PPO loss statistics of a stacked group: `stats()` gives
        `{name: [G]}`, called only for the update's last minibatch."""
        for i, mid in enumerate(mids):
            self._window1_stats[mid] = (stats, i)

    def _entropy_coeffs(self, mids: list[str], like: torch.Tensor) -> torch.Tensor:
        """The modules' current entropy coefficients as a `[G, 1]` tensor; fixed (float)
        coefficients are built once, scheduled ones (tensors updated in place) every call."""
        values = [self.entropy_coeff_schedulers_per_module[mid].get_current_value() for mid in mids]
        key = (tuple(mids), like.dtype, like.device)
        fixed = all(isinstance(v, float | int) for v in values)
        cached = self._fixed_entropy_coeffs.get(key) if fixed else None
        if cached is not None and cached[0] == values:
            return cached[1]
        coeffs = torch.stack(
            [torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in values]
        ).unsqueeze(-1)
        if fixed:
            self._fixed_entropy_coeffs[key] = (values, coeffs)
        return coeffs

    def log_off_policyness(self, batch: dict) -> None:
        """RLlib's off-policyness metric (window 1), computed for the update's last minibatch."""
        self._off_policy_batch = batch

    def log_steps_trained(self, batch: Any) -> None:
        """RLlib's per-minibatch step counters, summed over the update and logged once."""
        sizes = {mid: len(mb) for mid, mb in batch.policy_batches.items()}
        self._steps_trained.append((sizes, batch.env_steps()))

    def _flush_steps_trained(self) -> None:
        """What RLlib's `_log_steps_trained_metrics` logs per minibatch, in one call per key:
        sums and lifetime sums of the totals, the last weights seq no (window 1), and the mean
        minibatch size per module (each size in turn where they differ)."""
        if not self._steps_trained:
            return
        log = self.metrics.log_value
        per_module: dict[str, list[int]] = {}
        for sizes, _ in self._steps_trained:
            for mid, n in sizes.items():
                per_module.setdefault(mid, []).append(n)
        for mid, ns in per_module.items():
            log((mid, WEIGHTS_SEQ_NO), self.weights_seq_no, window=1)
            for n in ns if len(set(ns)) > 1 else ns[:1]:
                log(key=(mid, MODULE_TRAIN_BATCH_SIZE_MEAN), value=n, reduce="mean")
            total = sum(ns)
            log(key=(mid, NUM_MODULE_STEPS_TRAINED), value=total, reduce="sum")
            log(
                key=(mid, NUM_MODULE_STEPS_TRAINED_LIFETIME),
                value=total,
                reduce="lifetime_sum",
                with_throughput=True,
            )
        all_steps = sum(sum(ns) for ns in per_module.values())
        env_steps = sum(e for _, e in self._steps_trained)
        for key, value, reduce in (
            (NUM_MODULE_STEPS_TRAINED, all_steps, "sum"),
            (NUM_MODULE_STEPS_TRAINED_LIFETIME, all_steps, "lifetime_sum"),
            (NUM_ENV_STEPS_TRAINED, env_steps, "sum"),
            (NUM_ENV_STEPS_TRAINED_LIFETIME, env_steps, "lifetime_sum"),
        ):
            log((ALL_MODULES, key), value, reduce=reduce, with_throughput=True)
        self._steps_trained.clear()

    def _flush_window1(self) -> None:
        if self._off_policy_batch is not None:
            super().log_off_policyness(self._off_policy_batch)
            self._off_policy_batch = None
        for key, (values, i) in self._window1.items():
            self.metrics.log_value(key=key, value=values[i], window=1)
        computed: dict[int, dict[str, torch.Tensor]] = {}
        for mid, (stats, i) in self._window1_stats.items():
            if id(stats) not in computed:
                computed[id(stats)] = stats()
            values = computed[id(stats)]
            self.metrics.log_dict({k: v[i] for k, v in values.items()}, key=mid, window=1)
        self._window1.clear()
        self._window1_stats.clear()

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        """Log the deferred metrics, then RLlib's (PPO reads the KL from them)."""
        self._flush_window1()
        self._flush_steps_trained()
        super().after_gradient_based_update(timesteps=timesteps)

    def update(self, *args: Any, **kwargs: Any) -> Any:
        """RLlib's update; held stacks write their weights back at its end, come what may."""
        try:
            return super().update(*args, **kwargs)
        finally:
            self._release_held()

    def _release_held(self, keep: list[list[str]] | None = None) -> None:
        """Write back (and drop) the held stacks, except those of exactly the groups `keep`."""
        kept = {tuple(group) for group in keep or []}
        for key in [k for k in self._held if k not in kept]:
            self._held.pop(key).release()

    def _hold(self, group: list[str]) -> HeldStack | None:
        """The group's held stack (created on first use), or None where it cannot be held."""
        key = tuple(group)
        if key in self._held:
            return self._held[key]
        cfg = self.config.get_config_for_module(group[0])
        if (
            not cfg.grad_clip
            or cfg.grad_clip_by != "global_norm"
            or self.config.torch_skip_nan_gradients
            or self.uses_lr_scheduler_classes
        ):
            return None
        named = [self.get_optimizers_for_module(mid) for mid in group]
        if any(len(pairs) != 1 for pairs in named):
            return None
        names, optimizers = [pairs[0][0] for pairs in named], [pairs[0][1] for pairs in named]
        modules = [self.module[mid].unwrapped() for mid in group]
        if not HeldStack.can_hold(optimizers, [list(m.parameters()) for m in modules]):
            return None
        self._held[key] = HeldStack(modules, optimizers, group, names, float(cfg.grad_clip))
        return self._held[key]

    def _held_mids(self) -> set[str]:
        return {mid for key in self._held for mid in key}

    def update_step(self, batch: dict, **kwargs: Any) -> Any:
        """TorchLearner's update step, with stackable modules forwarded and scored together."""
        groups = self._stack_groups(batch)
        self._release_held(keep=groups)  # modules leaving a held group need their weights back
        if not groups:
            return super().update_step(batch, **kwargs)
        self.log_off_policyness(batch)
        stacked = {mid for group in groups for mid in group}
        rest = {mid: mb for mid, mb in batch.items() if mid not in stacked}
        fwd_out: dict[str, Any] = {}
        loss_per_module: dict[str, Any] = {}
        if rest:
            fwd_out = self.module.forward_train(rest)
            loss_per_module = self.compute_losses(fwd_out=fwd_out, batch=rest)
        stepping = []
        self._group_totals = []
        for group in groups:
            held = self._hold(group)
            out, losses = self._stacked_ppo_losses(group, batch, held)
            fwd_out.update(out)
            loss_per_module.update(losses)
            if held is not None:
                stepping.append(held)
        try:
            gradients = self.compute_gradients(loss_per_module)
        finally:
            self._group_totals = []
        for held in stepping:
            held.step(self._defer)
        self.apply_gradients(self.postprocess_gradients(gradients))
        return fwd_out, loss_per_module, {}

    def compute_gradients(self, loss_per_module: dict, **kwargs: Any) -> dict:
        """TorchLearner.compute_gradients, with a stacked group's loss summed as one `[G]`
        tensor. Optimizers whose
        parameters hold no gradient (held modules, whose gradient is their stack's; modules
        not trained this phase) are not zeroed, and only gradients that exist are returned
        (the rest are None there, which every consumer skips)."""
        if not self._group_totals or self.uses_grad_scalers:
            return super().compute_gradients(loss_per_module, **kwargs)
        for optim in self._unheld_optimizers(trained_only=False):
            if _has_grads(optim):
                optim.zero_grad(set_to_none=True)
        grouped = {mid for mids, _ in self._group_totals for mid in mids}
        parts = [total.sum() for _, total in self._group_totals]
        parts += [loss for mid, loss in loss_per_module.items() if mid not in grouped]
        total_loss = sum(parts)
        if isinstance(total_loss, int) or total_loss.grad_fn is None:
            return {}
        total_loss.backward()
        return {pid: p.grad for pid, p in self.params_by_ref.items() if p.grad is not None}

    def _optimizers_to_step(self) -> list:
        """Every optimizer but those of held modules (their stack's Adam stepped already) and
        those without any gradient (for which Adam's step does nothing)."""
        return [opt for opt in self._unheld_optimizers() if _has_grads(opt)]

    def _unheld_optimizers(self, trained_only: bool = True) -> list:
        """The optimizers of modules that are not held (a held module's gradient lands in its
        stack's flat tensor, never on its own parameters), of trained modules only unless
        `trained_only` is off (zeroing: no module keeps a stale gradient, as in RLlib)."""
        held = self._held_mids()
        untrained = self._untrained_modules() if trained_only else frozenset()
        return [
            self.get_optimizer(mid, name)
            for mid, names in self.optimizer_names.items()
            if mid not in held and mid not in untrained
            for name in names
        ]

    def _stacked_ppo_losses(
        self, mids: list[str], batch: dict[str, Any], held: HeldStack | None = None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """PPOTorchLearner.compute_loss_for_module for each of `mids`, on `[G, B]` tensors.

        `held`: the group's held stack (the forward reads its views; else the modules' own
        parameters, stacked). The group's total loss is left for one backward pass through
        autograd (`_group_totals`)."""
        modules = [self.module[mid].unwrapped() for mid in mids]
        cfg = self.config.get_config_for_module(mids[0])

        def col(name: str) -> torch.Tensor:
            return torch.stack([batch[mid][name] for mid in mids])

        obs = torch.stack([m.flat_obs(batch[mid]) for m, mid in zip(modules, mids, strict=True)])
        params = None if held is None else held.views()
        dist_inputs, values = stacked_forward_train(modules, obs, params)

        # Normal(loc, exp(log_std)) as TorchDiagGaussian.from_logits, summed over action dims
        loc, log_std = dist_inputs.chunk(2, dim=-1)
        scale = log_std.exp()
        log_scale = scale.log()
        actions = col(Columns.ACTIONS)
        logp = (-((actions - loc) ** 2) / (2 * scale**2) - log_scale - _LOG_SQRT_2PI).sum(-1)
        logp_ratio = torch.exp(logp - col(Columns.ACTION_LOGP))

        if Columns.LOSS_MASK in batch[mids[0]]:
            mask = col(Columns.LOSS_MASK).bool()
            num_valid = mask.sum(-1)
            masked_out = ~mask

            def masked_mean(x: torch.Tensor) -> torch.Tensor:
                return x.masked_fill(masked_out, 0.0).sum(-1) / num_valid

        else:

            def masked_mean(x: torch.Tensor) -> torch.Tensor:
                return x.mean(-1)

        kl_coeff = None
        if cfg.use_kl_loss:  # KL(previous || current) of the two Gaussians
            prev_loc, prev_log_std = col(Columns.ACTION_DIST_INPUTS).chunk(2, dim=-1)
            var_ratio = (prev_log_std.exp() / scale).pow(2)
            t1 = ((prev_loc - loc) / scale).pow(2)
            action_kl = (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1)
            mean_kl = masked_mean(action_kl)
            kl_coeff = torch.stack([self.curr_kl_coeffs_per_module[mid] for mid in mids])
        else:
            mean_kl = torch.zeros(len(mids), device=logp.device)

        entropy = (0.5 + _LOG_SQRT_2PI + log_scale).sum(-1)
        mean_entropy = masked_mean(entropy)

        advantages = col(Postprocessing.ADVANTAGES)
        clipped_ratio = torch.clamp(logp_ratio, 1 - cfg.clip_param, 1 + cfg.clip_param)
        surrogate = torch.min(advantages * logp_ratio, advantages * clipped_ratio)

        targets = col(Postprocessing.VALUE_TARGETS)
        vf_loss = torch.pow(values - targets, 2.0)
        vf_loss_clipped = torch.clamp(vf_loss, 0, cfg.vf_clip_param)

        entropy_coeff = self._entropy_coeffs(mids, entropy)
        total = masked_mean(
            -surrogate + cfg.vf_loss_coeff * vf_loss_clipped - entropy_coeff * entropy
        )
        if kl_coeff is not None:
            total = total + kl_coeff.to(total.dtype) * mean_kl
        self._group_totals.append((tuple(mids), total))

        kept = [t.detach() for t in (targets, values, surrogate, vf_loss_clipped, vf_loss)]
        kept_means = mean_entropy.detach(), mean_kl.detach()

        def stats() -> dict[str, torch.Tensor]:
            """Per-module stats as PPOTorchLearner logs them (window 1: computed only for the
            update's last minibatch)."""
            targets, values, surrogate, vf_loss_clipped, vf_loss = kept
            with torch.no_grad():
                y_var = torch.var(targets, dim=1)
                diff_var = torch.var(targets - values, dim=1)
                explained_var = torch.clamp(1 - diff_var / (y_var + SMALL_NUMBER), min=-1.0)
                return {
                    POLICY_LOSS_KEY: -masked_mean(surrogate),
                    VF_LOSS_KEY: masked_mean(vf_loss_clipped),
                    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY: masked_mean(vf_loss),
                    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained_var,
                    ENTROPY_KEY: kept_means[0],
                    LEARNER_RESULTS_KL_KEY: kept_means[1],
                }

        self._defer_stats(mids, stats)
        fwd_out = {mid: {Columns.ACTION_DIST_INPUTS: dist_inputs[i]} for i, mid in enumerate(mids)}
        return fwd_out, {mid: total[i] for i, mid in enumerate(mids)}

    def postprocess_gradients(self, gradients_dict: dict) -> dict:
        """Per-module global-norm clipping as RLlib's, from one multi-tensor norm call."""
        entries = []  # (module id, optimizer name, clip value, gradient refs)
        held = self._held_mids()  # clipped by their stack already
        for mid in list(self.module.keys()):
            if mid in held:
                continue
            mcfg = self.config.get_config_for_module(mid)
            optimizers = self.get_optimizers_for_module(mid)
            if not optimizers:
                continue
            if not mcfg.grad_clip or mcfg.grad_clip_by != "global_norm":
                return super().postprocess_gradients(gradients_dict)
            for name, opt in optimizers:
                refs = [
                    ref
                    for ref in self.optimizer_param_refs(opt)
                    if gradients_dict.get(ref) is not None
                ]
                entries.append((mid, name, float(mcfg.grad_clip), refs))
        grads = [gradients_dict[ref] for *_, refs in entries for ref in refs]
        keys = [(mid, f"gradients_{name}_global_norm") for mid, name, _, _ in entries]
        if not grads:  # nothing to clip: RLlib logs a zero norm per optimizer
            self._defer(keys, torch.zeros(len(keys)))
            return {}
        norms = _capped(torch.stack(foreach_norm([g.detach() for g in grads])))
        dev = norms.device
        counts = torch.tensor([len(refs) for *_, refs in entries], device=dev)
        owner = torch.repeat_interleave(torch.arange(len(entries), device=dev), counts)
        squares = torch.zeros(len(entries), dtype=norms.dtype, device=dev)
        squares.index_add_(0, owner, norms**2)
        global_norms = _capped(squares.sqrt())
        clip = torch.tensor([e[2] for e in entries], dtype=norms.dtype, device=dev)
        coeff = _clip_coefficients(global_norms, clip)
        foreach_mul_([g.detach() for g in grads], list(coeff[owner].unbind()))
        self._defer(keys, global_norms)
        return {ref: gradients_dict[ref] for *_, refs in entries for ref in refs}
