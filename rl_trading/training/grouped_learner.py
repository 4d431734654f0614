"""PPO learner that updates same-shape MLP policies as one stacked network (the default).

Phase 1 trains eight specialist MLPs of identical shape, each on its own equal-sized
minibatch. RLlib runs them one after another: forward, PPO loss, backward and gradient clip,
each a few dozen small torch ops paid eight times per minibatch, which made the learner most
of an iteration's time on CPU. Here such a group runs stacked (`policies/stacked.py`): one
batched forward, the PPO loss on `[G, B]` tensors, one backward, and one global-norm clip per
module computed from a single multi-tensor norm; Adam runs as torch's fused kernel. Every
module still has its own parameters, optimizer, loss, KL coefficient and metrics, exactly as
in `PPOTorchLearner`; modules that cannot be stacked (other architectures, the meta, a
distributed learner group) take RLlib's path. The loss is RLlib's PPO loss term for term
(tests/test_training_grouped.py compares the weights after an update with
`PPOTorchLearner`'s within float32 rounding).
"""

from __future__ import annotations

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
from ray.rllib.utils.numpy import SMALL_NUMBER

from policies.stacked import stack_signature, stacked_forward_train
from rl_trading.training.fast_learner import FastPPOTorchLearner

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # as torch.distributions.Normal
_NORM_CAP = 10e8  # RLlib's nan_to_num bound on gradient norms (torch_utils.compute_global_norm)


class GroupedPPOTorchLearner(FastPPOTorchLearner):
    """FastPPOTorchLearner that runs groups of same-shape MLP modules as one network."""

    # Adam as torch's fused kernel: one kernel per tensor instead of a dozen element-wise ops,
    # the same update within float32 rounding, ~3x faster on these small CPU tensors
    adam_kwargs = {"fused": True}

    def _stack_groups(self, batch: dict[str, Any]) -> list[list[str]]:
        """Module ids of this minibatch that can run stacked, in groups of two or more."""
        cfg = self.config
        if cfg.num_learners > 1 or self._grad_scalers is not None or cfg.torch_compile_learner:
            return []  # DDP syncs through the wrapped forward; keep RLlib's path there
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
                tuple(mb[Columns.OBS].shape),
                Columns.LOSS_MASK in mb,
            )
            by_key.setdefault(key, []).append(mid)
        return [group for group in by_key.values() if len(group) > 1]

    def _uncompiled_update(self, batch: dict, **kwargs: Any):
        """TorchLearner's update step, with stackable modules forwarded and scored together."""
        groups = self._stack_groups(batch)
        if not groups:
            return super()._uncompiled_update(batch, **kwargs)
        self._compute_off_policyness(batch)
        stacked = {mid for group in groups for mid in group}
        rest = {mid: mb for mid, mb in batch.items() if mid not in stacked}
        fwd_out: dict[str, Any] = {}
        loss_per_module: dict[str, Any] = {}
        if rest:
            fwd_out = self.module.forward_train(rest)
            loss_per_module = self.compute_losses(fwd_out=fwd_out, batch=rest)
        for group in groups:
            out, losses = self._stacked_ppo_losses(group, batch)
            fwd_out.update(out)
            loss_per_module.update(losses)
        gradients = self.compute_gradients(loss_per_module)
        self.apply_gradients(self.postprocess_gradients(gradients))
        return fwd_out, loss_per_module, {}

    def _stacked_ppo_losses(
        self, mids: list[str], batch: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """PPOTorchLearner.compute_loss_for_module for each of `mids`, on `[G, B]` tensors."""
        modules = [self.module[mid].unwrapped() for mid in mids]
        cfg = self.config.get_config_for_module(mids[0])

        def col(name: str) -> torch.Tensor:
            return torch.stack([batch[mid][name] for mid in mids])

        obs = torch.stack([m._flat_obs(batch[mid]) for m, mid in zip(modules, mids, strict=True)])
        dist_inputs, values = stacked_forward_train(modules, obs)

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

            def masked_mean(x: torch.Tensor) -> torch.Tensor:
                return torch.where(mask, x, torch.zeros_like(x)).sum(-1) / num_valid

        else:

            def masked_mean(x: torch.Tensor) -> torch.Tensor:
                return x.mean(-1)

        if cfg.use_kl_loss:  # KL(previous || current) of the two Gaussians
            prev_loc, prev_log_std = col(Columns.ACTION_DIST_INPUTS).chunk(2, dim=-1)
            var_ratio = (prev_log_std.exp() / scale).pow(2)
            t1 = ((prev_loc - loc) / scale).pow(2)
            action_kl = (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1)
            mean_kl = masked_mean(action_kl)
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

        entropy_coeff = torch.stack(
            [
                torch.as_tensor(
                    self.entropy_coeff_schedulers_per_module[mid].get_current_value(),
                    dtype=entropy.dtype,
                    device=entropy.device,
                )
                for mid in mids
            ]
        ).unsqueeze(-1)
        total = masked_mean(
            -surrogate + cfg.vf_loss_coeff * vf_loss_clipped - entropy_coeff * entropy
        )
        if cfg.use_kl_loss:
            kl_coeff = torch.stack([self.curr_kl_coeffs_per_module[mid] for mid in mids])
            total = total + kl_coeff.to(total.dtype) * mean_kl

        with torch.no_grad():  # per-module stats, as PPOTorchLearner logs them
            y_var = torch.var(targets, dim=1)
            diff_var = torch.var(targets - values, dim=1)
            explained_var = torch.clamp(1 - diff_var / (y_var + SMALL_NUMBER), min=-1.0)
            stats = {
                POLICY_LOSS_KEY: -masked_mean(surrogate),
                VF_LOSS_KEY: masked_mean(vf_loss_clipped),
                LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY: masked_mean(vf_loss),
                LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained_var,
                ENTROPY_KEY: mean_entropy.detach(),
                LEARNER_RESULTS_KL_KEY: mean_kl.detach(),
            }
        for i, mid in enumerate(mids):
            self.metrics.log_dict({k: v[i] for k, v in stats.items()}, key=mid, window=1)
        fwd_out = {mid: {Columns.ACTION_DIST_INPUTS: dist_inputs[i]} for i, mid in enumerate(mids)}
        return fwd_out, {mid: total[i] for i, mid in enumerate(mids)}

    def postprocess_gradients(self, gradients_dict: dict) -> dict:
        """Per-module global-norm clipping as RLlib's, from one multi-tensor norm call."""
        entries = []  # (module id, optimizer name, clip value, gradient refs)
        for mid in list(self.module.keys()):
            mcfg = self.config.get_config_for_module(mid)
            optimizers = self.get_optimizers_for_module(mid)
            if not optimizers:
                continue
            if not mcfg.grad_clip or mcfg.grad_clip_by != "global_norm":
                return super().postprocess_gradients(gradients_dict)
            for name, opt in optimizers:
                refs = [
                    ref
                    for ref in self._optimizer_parameters[opt]
                    if gradients_dict.get(ref) is not None
                ]
                entries.append((mid, name, float(mcfg.grad_clip), refs))
        grads = [gradients_dict[ref] for *_, refs in entries for ref in refs]
        if not grads:
            return super().postprocess_gradients(gradients_dict)
        norms = torch.stack(torch._foreach_norm([g.detach() for g in grads]))
        norms = norms.nan_to_num(neginf=-_NORM_CAP, posinf=_NORM_CAP)
        dev = norms.device
        counts = torch.tensor([len(refs) for *_, refs in entries], device=dev)
        owner = torch.repeat_interleave(torch.arange(len(entries), device=dev), counts)
        squares = torch.zeros(len(entries), dtype=norms.dtype, device=dev)
        squares.index_add_(0, owner, norms**2)
        global_norms = squares.sqrt().nan_to_num(neginf=-_NORM_CAP, posinf=_NORM_CAP)
        clip = torch.tensor([e[2] for e in entries], dtype=norms.dtype, device=dev)
        coeff = torch.clamp(clip / torch.clamp(global_norms + 1e-6, min=clip), max=1.0)
        torch._foreach_mul_([g.detach() for g in grads], list(coeff[owner].unbind()))
        for i, (mid, name, _, _) in enumerate(entries):
            self.metrics.log_value(
                key=(mid, f"gradients_{name}_global_norm"), value=global_norms[i], window=1
            )
        return {ref: gradients_dict[ref] for *_, refs in entries for ref in refs}
