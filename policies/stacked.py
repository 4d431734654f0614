"""Several MLP actor-critics with the same shapes run as one batched network.

The learner updates eight specialist MLPs of identical shape on equal-sized minibatches. Run
one by one, each small matmul and activation pays torch's per-op overhead eight times; here
the weights of the group are stacked (`torch.stack`, so gradients flow back to every module's
own parameters) and every layer is one `baddbmm` over `[G, B, features]`. The arithmetic per
module is the same as its own forward; only the floating-point kernels differ (tests compare
within float32 rounding, tests/test_training_grouped.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import nn

from policies.base import LOG_STD_MAX, LOG_STD_MIN
from policies.mlp import MLPModule


def _tower_signature(seq: nn.Sequential) -> tuple | None:
    """Layer kinds and weight shapes of a Linear/Tanh stack; None for anything else."""
    sig: list = []
    for layer in seq:
        if type(layer) is nn.Linear and layer.bias is not None:
            sig.append(("linear", tuple(layer.weight.shape)))
        elif type(layer) is nn.Tanh:
            sig.append(("tanh",))
        else:
            return None
    return tuple(sig)


def stack_signature(module: object) -> Hashable | None:
    """A key equal for modules that can run stacked together; None if this one cannot.

    Only the project's MLP module with a Gaussian head qualifies: plain Linear/Tanh towers
    (actor, critic, both heads) and a state-independent `log_std`.
    """
    if type(module) is not MLPModule or not getattr(module, "_continuous", False):
        return None
    towers = [module._pi_enc, module._pi_head, module._vf_enc, module._vf_head]
    sigs = tuple(_tower_signature(t) for t in towers)
    if any(s is None for s in sigs) or not sigs[0] or not sigs[2]:
        return None
    if sigs[0][:2] != sigs[2][:2] or sigs[0][1:2] != (("tanh",),):
        return None  # the two first layers (Linear + Tanh) share their input: run as one
    return (sigs, tuple(module.log_std.shape), module._obs_dim)


def _run(layers: Sequence[Sequence[nn.Module]], x: torch.Tensor) -> torch.Tensor:
    """Apply the same-position layers of G towers to `x` `[G, B, in]`."""
    for same in zip(*layers, strict=True):
        if isinstance(same[0], nn.Linear):
            weight = torch.stack([m.weight for m in same])  # [G, out, in]
            bias = torch.stack([m.bias for m in same]).unsqueeze(1)  # [G, 1, out]
            x = torch.baddbmm(bias, x, weight.transpose(1, 2))
        else:
            x = torch.tanh(x)
    return x


def stacked_forward_train(
    modules: Sequence[MLPModule], obs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(action-distribution inputs `[G, B, 2A]`, values `[G, B]`) of G same-shape MLP modules.

    `obs` is `[G, B, obs_dim]`. Matches each module's `_forward_train` + `compute_values`: the
    actor and critic first layers read the same input, so they run as one matmul.
    """
    first_pi = [m._pi_enc[0] for m in modules]
    first_vf = [m._vf_enc[0] for m in modules]
    pairs = list(zip(first_pi, first_vf, strict=True))
    weight = torch.stack([torch.cat([a.weight, c.weight]) for a, c in pairs])
    bias = torch.stack([torch.cat([a.bias, c.bias]) for a, c in pairs])
    hidden = torch.tanh(torch.baddbmm(bias.unsqueeze(1), obs, weight.transpose(1, 2)))
    pi_x, vf_x = hidden.split([first_pi[0].out_features, first_vf[0].out_features], dim=-1)
    pi_layers = [[*list(m._pi_enc)[2:], *m._pi_head] for m in modules]
    vf_layers = [[*list(m._vf_enc)[2:], *m._vf_head] for m in modules]
    mean = _run(pi_layers, pi_x)
    values = _run(vf_layers, vf_x).squeeze(-1)
    log_std = torch.stack([m.log_std for m in modules]).clamp(LOG_STD_MIN, LOG_STD_MAX)
    dist_inputs = torch.cat([mean, log_std.unsqueeze(1).expand_as(mean)], dim=-1)
    return dist_inputs, values


class StackedActor:
    """Deterministic actions (Gaussian means) of G same-shape MLP modules in one pass.

    For acting outside RLlib (validation, backtests): the weights are stacked once, so every
    later step is a few batched matmuls instead of G module calls. Equal to each module's
    `forward_inference` within float32 rounding.
    """

    def __init__(self, modules: Sequence[MLPModule]) -> None:
        with torch.no_grad():
            layers = [[*m._pi_enc, *m._pi_head] for m in modules]
            self._layers: list[tuple[torch.Tensor, torch.Tensor] | None] = []
            for same in zip(*layers, strict=True):
                if isinstance(same[0], nn.Linear):
                    weight = torch.stack([m.weight for m in same]).transpose(1, 2).contiguous()
                    bias = torch.stack([m.bias for m in same]).unsqueeze(1)
                    self._layers.append((weight, bias))
                else:
                    self._layers.append(None)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """Means `[G, B, A]` for observations `[G, B, obs_dim]`."""
        x = obs
        with torch.no_grad():
            for layer in self._layers:
                x = torch.tanh(x) if layer is None else torch.baddbmm(layer[1], x, layer[0])
        return x
