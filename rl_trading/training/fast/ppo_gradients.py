"""The gradient of RLlib's PPO loss for a stacked group, written out instead of traced.

A stacked group's minibatch step through autograd is a few hundred small torch ops on
`[G, B]` tensors (the loss, its backward graph, the towers' backward), each a few
microseconds of dispatch on CPU, around the few matmuls that do the arithmetic. The loss's
gradient with respect to the action means, the log-std and the values has a short closed form;
`policies.stacked.stacked_backward` takes it through the towers. Each formula below is the
derivative autograd takes of the same forward (`GroupedPPOTorchLearner._ppo_forward`),
including its conventions at the edges: `torch.min` splits the gradient at ties, `clamp`
passes it on its closed interval. tests/test_training_manual_grad.py compares every gradient
with autograd's, with each branch (clipped ratios, clipped value loss, clamped log-std, loss
masks, KL, entropy, scheduled coefficients) taken, for a group of one, one hidden layer and a
module without valid rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policies.base import LOG_STD_MAX, LOG_STD_MIN


@dataclass
class KLTerms:
    """The KL term's forward values the gradient needs: KL(previous || current) per row."""

    coeff: torch.Tensor  # [G] KL coefficients
    prev_loc: torch.Tensor  # [G, B, A]
    var_ratio: torch.Tensor  # [G, B, A] (previous scale / scale)^2
    t1: torch.Tensor  # [G, B, A] ((previous loc - loc) / scale)^2


def row_weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """d(masked mean)/d(row) `[G, B]`: 1 / valid rows on valid rows, 0 elsewhere (1 / B
    without a mask). A module without valid rows gets 0, as through autograd (its masked
    mean is NaN, but `masked_fill`'s backward zeroes every row)."""
    if mask is None:
        return torch.full_like(like, 1.0 / like.shape[-1])
    return mask / mask.sum(-1, keepdim=True).clamp(min=1)


def ppo_loss_gradients(
    *,
    weights: torch.Tensor,
    advantages: torch.Tensor,
    ratio: torch.Tensor,
    clip_param: float,
    actions: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    log_std: torch.Tensor,
    values: torch.Tensor,
    targets: torch.Tensor,
    vf_loss: torch.Tensor,
    vf_clip_param: float,
    vf_loss_coeff: float,
    entropy_coeff: torch.Tensor,
    kl: KLTerms | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d loss / d loc `[G, B, A]`, d loss / d log_std parameter `[G, A]`, d loss / d values
    `[G, B]`) of the summed per-module PPO losses.

    `weights`: `row_weights`; `ratio`: exp(logp - old logp) `[G, B]`; `loc`, `scale`: the
    Gaussian's means and scales (scale = exp(clamped log_std)); `log_std`: the unclamped
    parameter `[G, A]`; `vf_loss`: (values - targets)^2 before its clip; `entropy_coeff`: `[G, 1]`.
    """
    # surrogate = min(adv * ratio, adv * clamp(ratio)); the loss carries -surrogate per row
    d_surrogate = -weights
    unclipped = advantages * ratio
    clipped = advantages * torch.clamp(ratio, 1 - clip_param, 1 + clip_param)
    tie = unclipped == clipped
    shared = torch.where(tie, d_surrogate * 0.5, d_surrogate)
    d_unclipped = shared.masked_fill(unclipped > clipped, 0.0)
    d_clipped = shared.masked_fill(unclipped < clipped, 0.0)
    in_range = (ratio >= 1 - clip_param) & (ratio <= 1 + clip_param)
    d_ratio = d_unclipped * advantages + (d_clipped * advantages).masked_fill(~in_range, 0.0)
    d_logp = (d_ratio * ratio).unsqueeze(-1)  # ratio = exp(logp - old logp)

    # logp = sum_a -(a - loc)^2 / (2 scale^2) - log scale - log sqrt(2 pi)
    diff = actions - loc
    inv_var = scale.pow(-2)
    d_loc = d_logp * diff * inv_var
    d_log_scale = d_logp * (diff.square() * inv_var - 1.0)
    # entropy = sum_a 0.5 + log sqrt(2 pi) + log scale, weighted by -entropy_coeff per row
    d_log_scale = d_log_scale - (entropy_coeff * weights).unsqueeze(-1)
    if kl is not None:  # KL = sum_a 0.5 (var_ratio + t1 - 1 - log var_ratio), mean * coeff
        d_kl = (kl.coeff.to(weights.dtype).unsqueeze(-1) * weights).unsqueeze(-1)
        d_loc = d_loc + d_kl * (loc - kl.prev_loc) * inv_var
        d_log_scale = d_log_scale + d_kl * (1.0 - kl.var_ratio - kl.t1)
    in_bounds = (log_std >= LOG_STD_MIN) & (log_std <= LOG_STD_MAX)
    d_log_std = d_log_scale.sum(1).masked_fill(~in_bounds, 0.0)

    # vf_loss_coeff * clamp((values - targets)^2, 0, vf_clip_param) per row
    d_vf = (vf_loss_coeff * weights).masked_fill((vf_loss < 0) | (vf_loss > vf_clip_param), 0.0)
    d_values = d_vf * 2.0 * (values - targets)
    return d_loc, d_log_std, d_values
