"""Several MLP actor-critics with the same shapes run as one batched network.

The learner updates eight specialist MLPs of identical shape on equal-sized minibatches. Run
one by one, each small matmul and activation pays torch's per-op overhead eight times; here
the weights of the group are stacked (`torch.stack`, so gradients flow back to every module's
own parameters) and every layer is one `baddbmm` over `[G, B, features]`. The arithmetic per
module is the same as its own forward; only the floating-point kernels differ (tests compare
within float32 rounding, tests/test_training_grouped.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

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
    if type(module) is not MLPModule or not module.continuous:
        return None
    sigs = tuple(_tower_signature(t) for t in module.towers().values())
    if any(s is None for s in sigs) or not sigs[0] or not sigs[2]:
        return None
    if sigs[0][:2] != sigs[2][:2] or sigs[0][1:2] != (("tanh",),):
        return None  # the two first layers (Linear + Tanh) share their input: run as one
    return (sigs, tuple(module.log_std.shape), module.obs_dim)


def stack_groups(
    modules: Mapping[str, object], sizes: Mapping[str, int], singles: bool = False
) -> list[tuple]:
    """Module ids (in `sizes` order) that can act as one stacked network, in groups of two or
    more: the same `stack_signature` and the same batch size (`sizes`: id -> rows).
    `singles`: a stackable module without a partner (the meta) as a group of one as well, which
    acts without the module's per-call overhead."""
    keyed: dict[tuple, list[str]] = {}
    for mid, n in sizes.items():
        sig = stack_signature(modules[mid])
        if sig is not None:
            keyed.setdefault((sig, n), []).append(mid)
    return [tuple(group) for group in keyed.values() if singles or len(group) > 1]


def stack_parameters(modules: Sequence[MLPModule]) -> dict[str, torch.Tensor]:
    """`{parameter name: [G, ...]}` stacked from the modules' own parameters (differentiable:
    gradients flow back to each module)."""
    named = [dict(m.named_parameters()) for m in modules]
    return {name: torch.stack([d[name] for d in named]) for name in named[0]}


def sigmoid_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) as 2 sigmoid(2x) - 1: the learner's tanh forward (`_SigmoidTanh`)."""
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) computed as 2 sigmoid(2x) - 1, with tanh's own backward (1 - y^2).

    On these CPUs torch's vectorised tanh is about 3x slower than its sigmoid, and the
    learner's tanh layers were ~7% of an update. The two agree to 2e-7 absolute (float32
    rounding of a value in [-1, 1]); acting keeps torch.tanh."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        y = sigmoid_tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def train_tanh(x: torch.Tensor) -> torch.Tensor:
    """The learner's tanh (`_SigmoidTanh`)."""
    return _SigmoidTanh.apply(x)


def _tower(
    module: MLPModule,
    name: str,
    params: dict,
    x: torch.Tensor,
    skip: int = 0,
    tanh=torch.tanh,
):
    """Apply the stacked layers of tower `name` (from layer `skip` on) to `x` `[G, B, in]`."""
    for i, layer in enumerate(module.towers()[name]):
        if i < skip:
            continue
        if isinstance(layer, nn.Linear):
            key = f"{name}.{i}"
            weight, bias = params[f"{key}.weight"], params[f"{key}.bias"]
            x = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        else:
            x = tanh(x)
    return x


# the actor's and critic's first-layer parameters (weights, then biases), which run as one
# matmul: a layout holding them adjacent gives `stacked_forward_train` the fused layer as a view
FIRST_LAYER_NAMES = ("_pi_enc.0.weight", "_vf_enc.0.weight", "_pi_enc.0.bias", "_vf_enc.0.bias")


def stacked_forward_train(
    modules: Sequence[MLPModule],
    obs: torch.Tensor,
    params: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(action-distribution inputs `[G, B, 2A]`, values `[G, B]`) of G same-shape MLP modules.

    `obs` is `[G, B, obs_dim]`; `params` are stacked parameters by name (default: stacked from
    the modules now), optionally with the fused first layer as `"first.weight"` `[G, H, in]`
    and `"first.bias"`. Matches each module's `_forward_train` + `compute_values`: the actor and
    critic first layers read the same input, so they run as one matmul. The gradient is
    autograd's.
    """
    p = stack_parameters(modules) if params is None else params
    shape = modules[0]
    if "first.weight" in p:
        weight, bias = p["first.weight"], p["first.bias"]
    else:
        weight = torch.cat([p["_pi_enc.0.weight"], p["_vf_enc.0.weight"]], dim=1)
        bias = torch.cat([p["_pi_enc.0.bias"], p["_vf_enc.0.bias"]], dim=1)
    tanh = train_tanh
    hidden = tanh(torch.baddbmm(bias.unsqueeze(1), obs, weight.transpose(1, 2)))
    towers = shape.towers()
    sizes = [towers["_pi_enc"][0].out_features, towers["_vf_enc"][0].out_features]
    pi_x, vf_x = hidden.split(sizes, -1)
    act = _tower(shape, "_pi_enc", p, pi_x, skip=2, tanh=tanh)
    mean = _tower(shape, "_pi_head", p, act, tanh=tanh)
    crit = _tower(shape, "_vf_enc", p, vf_x, skip=2, tanh=tanh)
    values = _tower(shape, "_vf_head", p, crit, tanh=tanh).squeeze(-1)
    log_std = p["log_std"].clamp(LOG_STD_MIN, LOG_STD_MAX)
    dist_inputs = torch.cat([mean, log_std.unsqueeze(1).expand_as(mean)], dim=-1)
    return dist_inputs, values


class StackedActor:
    """Deterministic actions (Gaussian means) of G same-shape MLP modules in one pass.

    For acting outside RLlib (validation, backtests): the weights are stacked once, so every
    later step is a few batched matmuls instead of G module calls. Equal to each module's
    `forward_inference` within float32 rounding.
    """

    def __init__(self, modules: Sequence[MLPModule]) -> None:
        self._shape = modules[0]
        with torch.no_grad():
            self._stacked = stack_parameters(modules)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """Means `[G, B, A]` for observations `[G, B, obs_dim]`."""
        with torch.no_grad():
            emb = _tower(self._shape, "_pi_enc", self._stacked, obs)
            return _tower(self._shape, "_pi_head", self._stacked, emb)

    def dist_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """Action-distribution inputs `[G, B, 2A]` (means, clamped log-stds), as each module's
        `_forward` computes them."""
        mean = self(obs)
        log_std = self._stacked["log_std"].clamp(LOG_STD_MIN, LOG_STD_MAX)
        return torch.cat([mean, log_std.unsqueeze(1).expand_as(mean)], dim=-1)
