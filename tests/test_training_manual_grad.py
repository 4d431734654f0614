"""The grouped learner's written-out PPO gradient (fast/ppo_gradients.py with
policies.stacked.stacked_backward) against autograd through the same stacked forward and loss,
with every branch of the loss taken."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from policies import module_spec
from policies.base import LOG_STD_MAX, LOG_STD_MIN
from policies.stacked import stacked_forward_train
from rl_trading.config import PolicyConfig
from rl_trading.training.fast.grouped_learner import GroupedPPOTorchLearner, HeldStack

OBS = gym.spaces.Box(-5.0, 5.0, (12,), np.float32)
B = 96


def _modules(n: int, act_dim: int, hidden: tuple = (16, 8)) -> list:
    act = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
    cfg = PolicyConfig(model="mlp", hidden_sizes=list(hidden))
    torch.manual_seed(0)
    modules = [module_spec(cfg, f"m{i}", OBS, act).build() for i in range(n)]
    with torch.no_grad():  # modules 1, 2: log_std beyond each clamp bound, no gradient there
        values = (-0.4, LOG_STD_MAX + 0.5, LOG_STD_MIN - 0.5)  # n may be 1
        for module, value in zip(modules, values, strict=False):
            module.log_std.fill_(value)
    return modules


def _batch(modules: list, act_dim: int, masked: bool, empty: bool = False) -> dict:
    """Columns that drive every branch: ratios inside and outside the clip range (both signs
    of advantage), value errors above the value clip, masked rows, a moved previous policy."""
    gen = torch.Generator().manual_seed(3)
    obs = torch.randn(len(modules), B, 12, generator=gen)
    with torch.no_grad():
        dist_inputs, values = stacked_forward_train(modules, obs)
    loc, log_std = dist_inputs.chunk(2, dim=-1)
    actions = loc + log_std.exp() * torch.randn(loc.shape, generator=gen)
    logp = torch.distributions.Normal(loc, log_std.exp()).log_prob(actions).sum(-1)
    batch = {}
    for i, _ in enumerate(modules):
        cols = {
            Columns.OBS: obs[i],
            Columns.ACTIONS: actions[i],
            Columns.ACTION_LOGP: logp[i] + 0.4 * torch.randn(B, generator=gen),
            Postprocessing.ADVANTAGES: torch.randn(B, generator=gen),
            Postprocessing.VALUE_TARGETS: values[i] + 3.0 * torch.randn(B, generator=gen),
            Columns.ACTION_DIST_INPUTS: torch.cat(
                [
                    loc[i] + 0.3 * torch.randn(B, act_dim, generator=gen),
                    log_std[i] + 0.2 * torch.randn(B, act_dim, generator=gen),
                ],
                dim=-1,
            ),
        }
        if masked:
            cols[Columns.LOSS_MASK] = torch.rand(B, generator=gen) > 0.2
            if empty and i == 0:  # no valid row: NaN loss, zero gradient (autograd's)
                cols[Columns.LOSS_MASK] = torch.zeros(B, dtype=torch.bool)
        batch[f"m{i}"] = cols
    return batch


def _learner(mids: list[str], scheduled: bool) -> GroupedPPOTorchLearner:
    """A bare grouped learner with just what its loss reads (coefficients, metric buffers);
    `scheduled`: entropy coefficients as tensors, as a schedule gives them."""
    learner = GroupedPPOTorchLearner.__new__(GroupedPPOTorchLearner)
    learner.curr_kl_coeffs_per_module = {m: torch.tensor(0.3 + 0.1 * i) for i, m in enumerate(mids)}
    learner.entropy_coeff_schedulers_per_module = {
        m: SimpleNamespace(
            get_current_value=(lambda v=0.01 * (i + 1): torch.tensor(v) if scheduled else v)
        )
        for i, m in enumerate(mids)
    }
    learner._fixed_entropy_coeffs, learner._window1_stats = {}, {}
    learner._group_totals, learner._manual_mids = [], set()
    return learner


CASES = {  # n modules, hidden sizes, action dims, loss mask, KL term, empty module, schedule
    "masked-kl": (3, (16, 8), 1, True, True, False, False),
    "unmasked-2d-actions": (3, (16, 8), 2, False, True, False, False),
    "no-kl-scheduled-entropy": (3, (16, 8), 2, True, False, False, True),
    "group-of-one-one-layer": (1, (16,), 2, True, True, False, False),
    "module-without-valid-rows": (3, (16, 8), 1, True, True, True, False),
}


def _gradient(manual: bool, case: tuple) -> tuple:
    n, hidden, act_dim, masked, use_kl, empty, scheduled = case
    modules = _modules(n, act_dim, hidden)
    mids = [f"m{i}" for i in range(len(modules))]
    opts = [torch.optim.Adam(list(m.parameters()), fused=True) for m in modules]
    held = HeldStack(modules, opts, mids, ["default_optimizer"] * len(mids), clip=0.5)
    assert held.fused
    cfg = SimpleNamespace(use_kl_loss=use_kl, clip_param=0.2, vf_clip_param=2.0, vf_loss_coeff=0.5)
    learner = _learner(mids, scheduled)
    batch = _batch(modules, act_dim, masked, empty)
    with torch.set_grad_enabled(not manual):
        _, losses, grads = learner._ppo_forward(mids, modules, cfg, batch, held, manual)
    if manual:
        held.set_gradients(grads)
    else:
        learner._group_totals[0][1].sum().backward()
    return held.flat.grad.clone(), torch.stack(list(losses.values())).detach(), held


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_written_out_gradient_matches_autograd(case):
    traced, traced_loss, held = _gradient(False, case)
    manual, manual_loss, _ = _gradient(True, case)
    torch.testing.assert_close(manual_loss, traced_loss, rtol=0, atol=0, equal_nan=True)
    assert traced.abs().max() > 1e-3  # a real gradient, in every parameter
    empty = case[5]
    assert not empty or (not traced[0].any() and not manual[0].any())  # no valid row: zero
    live = slice(1 if empty else 0, None)
    for name, (off, n, _) in zip(held.names, held.layout, strict=True):
        part = traced[:, off : off + n]
        torch.testing.assert_close(manual[:, off : off + n], part, rtol=1e-5, atol=1e-7, msg=name)
        if name == "log_std":  # modules 1, 2 clamped: none, as through autograd
            assert not part[1:].any() and (empty or part[0].abs().min() > 0)
        else:
            assert part[live].abs().amax(dim=1).min() > 0, name


def test_the_branches_are_taken():
    """The test batch clips ratios (both directions) and value losses and masks rows."""
    modules = _modules(3, 1)
    batch = _batch(modules, 1, masked=True)
    with torch.no_grad():
        obs = torch.stack([batch[m][Columns.OBS] for m in batch])
        dist_inputs, values = stacked_forward_train(modules, obs)
    loc, log_std = dist_inputs.chunk(2, dim=-1)
    actions = torch.stack([batch[m][Columns.ACTIONS] for m in batch])
    logp = torch.distributions.Normal(loc, log_std.exp()).log_prob(actions).sum(-1)
    ratio = torch.exp(logp - torch.stack([batch[m][Columns.ACTION_LOGP] for m in batch]))
    targets = torch.stack([batch[m][Postprocessing.VALUE_TARGETS] for m in batch])
    assert (ratio > 1.2).sum() > 5 and (ratio < 0.8).sum() > 5
    assert ((ratio - 1).abs() < 0.2).sum() > 5
    assert ((values - targets) ** 2 > 2.0).sum() > 5
    assert (~torch.stack([batch[m][Columns.LOSS_MASK] for m in batch])).sum() > 5


def test_grouped_learner_writes_gradients_out_by_default():
    assert GroupedPPOTorchLearner.manual_gradients is True
