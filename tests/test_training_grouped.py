"""Same-shape MLP policies run as one stacked network: in the learner (the default PPO
learner), in validation, and the joint Adam step. Each must match the per-module path."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns

from policies import module_spec
from policies.stacked import StackedActor, stack_groups, stack_signature, stacked_forward_train
from rl_trading.config import PolicyConfig
from rl_trading.data import split_by_time, synthetic_market
from rl_trading.training.algo_config import build_phase_config
from rl_trading.training.env_bridge import hierarchical_factory
from rl_trading.training.fast.grouped_learner import GroupedPPOTorchLearner
from rl_trading.training.fast.learner import step_jointly
from rl_trading.training.validation import validate

OBS = gym.spaces.Box(-5.0, 5.0, (12,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def _modules(n: int, model: str = "mlp", hidden=(16, 8), act: gym.Space = ACT) -> list:
    cfg = PolicyConfig(model=model, hidden_sizes=list(hidden))
    torch.manual_seed(0)
    out = []
    for i in range(n):
        module = module_spec(cfg, f"specialist_{i}", OBS, act).build()
        with torch.no_grad():  # distinct log_std per module
            if hasattr(module, "log_std"):
                module.log_std.fill_(-0.5 + 0.1 * i)
        out.append(module)
    return out


def test_stack_signature_only_groups_same_shape_gaussian_mlps():
    a, b = _modules(2)
    assert stack_signature(a) is not None and stack_signature(a) == stack_signature(b)
    assert stack_signature(_modules(1, hidden=(16, 16))[0]) != stack_signature(a)
    assert stack_signature(_modules(1, model="transformer")[0]) is None
    assert stack_signature(_modules(1, model="cnn_lstm")[0]) is None
    assert stack_signature(_modules(1, act=gym.spaces.Discrete(3))[0]) is None


def test_stack_groups_need_the_same_shape_and_batch_size():
    """Acting (env runner, validation) stacks modules of one signature and as many rows."""
    a, b, c = _modules(3)
    (wide,) = _modules(1, hidden=(16, 16))
    (other,) = _modules(1, model="transformer")
    mods = {"a": a, "b": b, "c": c, "w": wide, "t": other}
    assert stack_groups(mods, {"a": 4, "b": 4, "c": 4, "w": 4, "t": 4}) == [("a", "b", "c")]
    assert stack_groups(mods, {"c": 4, "a": 2, "b": 2, "w": 2}) == [("a", "b")]
    assert stack_groups(mods, {"a": 4, "w": 4, "t": 4}) == []
    assert stack_groups(mods, {"a": 4, "w": 4, "t": 4}, singles=True) == [("a",), ("w",)]
    assert stack_groups(mods, {"c": 4, "a": 2, "b": 2}, singles=True) == [("c",), ("a", "b")]


def test_stacked_forward_matches_each_module():
    modules = _modules(3)
    obs = torch.randn(3, 40, 12)
    dist_inputs, values = stacked_forward_train(modules, obs)
    for i, module in enumerate(modules):
        out = module.forward_train({Columns.OBS: obs[i]})
        torch.testing.assert_close(dist_inputs[i], out[Columns.ACTION_DIST_INPUTS])
        want = module.compute_values({Columns.OBS: obs[i]}, out[Columns.EMBEDDINGS])
        torch.testing.assert_close(values[i], want)
    # gradients reach every module's own parameters
    (dist_inputs.sum() + values.sum()).backward()
    for module in modules:
        assert all(p.grad is not None for p in module.parameters())


def test_stacked_actor_matches_forward_inference():
    modules = _modules(4)
    for m in modules:
        m.eval()
    obs = torch.randn(4, 5, 12)
    means = StackedActor(modules)(obs)
    for i, module in enumerate(modules):
        want = module.forward_inference({Columns.OBS: obs[i]})[Columns.ACTIONS]
        torch.testing.assert_close(means[i], want)


def test_joint_adam_step_is_bit_identical_to_separate_steps():
    """Adams with equal settings step in one call; other settings in their own; results
    equal to one `step()` each, bit for bit, from the first (state-creating) step on."""

    def make() -> tuple[list, list]:
        torch.manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(4)]
        opts = [
            torch.optim.Adam([params[0]], lr=1e-2, foreach=True),
            torch.optim.Adam([params[1]], lr=1e-2, foreach=True),
            torch.optim.Adam([params[2]], lr=3e-3, foreach=True),
            torch.optim.SGD([params[3]], lr=0.1),
        ]
        return params, opts

    joint_p, joint_o = make()
    sep_p, sep_o = make()
    for step in range(3):
        torch.manual_seed(10 + step)
        grads = [torch.randn(5, 3) for _ in range(4)]
        for p, q, g in zip(joint_p, sep_p, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        step_jointly(joint_o)
        for opt in sep_o:
            opt.step()
        for p, q in zip(joint_p, sep_p, strict=True):
            assert torch.equal(p, q)


SYMBOLS = ["AAA", "BBB", "CCC"]


def _phase1(learner_class: type, iterations: int = 1, phase: int = 1) -> tuple[dict, dict]:
    from rl_trading.config import AppConfig

    cfg = AppConfig.model_validate(
        {
            "seed": 5,
            "data": {"symbols": SYMBOLS, "embargo_bars": 5},
            "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
            "ppo": {"train_batch_size": 192, "minibatch_size": 64, "num_epochs": 3},
            "policy": {"hidden_sizes": [16, 16]},
            "resources": {
                "num_env_runners": 0,
                "num_envs_per_env_runner": 2,
                "rllib_fast_paths": True,
            },
        }
    )
    splits = split_by_time(synthetic_market(SYMBOLS, n_bars=900, seed=2), 0.7, 0.15, 5)
    config = build_phase_config(cfg, phase, hierarchical_factory(cfg, splits.train, splits.val))
    assert config.learner_class is GroupedPPOTorchLearner  # the default
    algo = config.learners(learner_class=learner_class).build_algo()
    try:
        for _ in range(iterations):
            result = algo.train()
        return algo.learner_group.get_weights(), result["learners"]
    finally:
        algo.stop()


class _CountingGrouped(GroupedPPOTorchLearner):
    stacked_calls = 0

    held_calls = 0

    groups: set = set()

    def _stacked_ppo_losses(self, mids, batch, held=None):
        counts = _CountingGrouped  # subclasses count here too
        counts.stacked_calls += 1
        counts.held_calls += held is not None
        counts.groups.add(tuple(sorted(mids)))
        return super()._stacked_ppo_losses(mids, batch, held)


def _assert_same_training(grouped: dict, g_stats: dict, stock: dict, s_stats: dict) -> None:
    """Weights within float32 rounding and every numeric per-module learner stat alike.

    The absolute bound is 1e-6 (weights are ~1e-2): the learner's tanh differs from torch's by
    up to 2e-7, and Adam's normalised step turns such differences in a near-zero gradient
    into a few 1e-7 of weight; a wrong loss term or clip moves weights by 1e-4 and more."""
    for pid in stock:
        for name, value in stock[pid].items():
            np.testing.assert_allclose(grouped[pid][name], value, rtol=1e-5, atol=1e-6)
        for key, value in s_stats[pid].items():
            if isinstance(value, float) and "timer" not in key and "throughput" not in key:
                want = pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True)
                assert g_stats[pid][key] == want, (pid, key)


@pytest.mark.rllib
def test_grouped_learner_matches_rllib_ppo_learner(ray_session):
    """Same weights (float32 rounding) and the same per-module learner stats as RLlib's
    PPOTorchLearner after two iterations of minibatch updates, all of them stacked (the
    stacked forward, the gradient through autograd)."""
    _CountingGrouped.stacked_calls = _CountingGrouped.held_calls = 0
    _CountingGrouped.groups = set()
    grouped, g_stats = _phase1(_CountingGrouped, iterations=2)
    stock, s_stats = _phase1(PPOTorchLearner, iterations=2)
    # >= 2 x 192 steps / 64 x 3 epochs (PPO adds one bootstrap step per episode chunk); the
    # second update starts from the Adam state the first one wrote back into the optimizers
    assert _CountingGrouped.stacked_calls >= 18
    assert _CountingGrouped.held_calls == _CountingGrouped.stacked_calls  # held stacks
    assert _CountingGrouped.groups == {tuple(f"specialist_{s}" for s in SYMBOLS)}
    assert grouped.keys() == stock.keys() and len(grouped) == len(SYMBOLS)
    _assert_same_training(grouped, g_stats, stock, s_stats)
    for key in ("policy_loss", "vf_loss", "entropy", "mean_kl_loss", "vf_explained_var"):
        assert key in g_stats[f"specialist_{SYMBOLS[0]}"], key
    for key in (  # the step counters, summed over the update before they are logged
        "num_module_steps_trained",
        "num_module_steps_trained_lifetime",
        "num_env_steps_trained",
        "num_env_steps_trained_lifetime",
    ):
        assert g_stats["__all_modules__"][key] == s_stats["__all_modules__"][key] > 0, key
    assert "gradients_default_optimizer_global_norm" in g_stats[f"specialist_{SYMBOLS[0]}"]


@pytest.mark.parametrize("mode", ["specialists", "joint"])
def test_stacked_validation_matches_per_policy_validation(monkeypatch, mode):
    """Validation acting through stacked networks (the specialists as one, the meta as a
    stack of one in joint mode) gives the per-policy results within float32 rounding."""
    from rl_trading.config import AppConfig
    from rl_trading.training import validation
    from rl_trading.training.env_bridge import all_agent_spaces

    cfg = AppConfig.model_validate(
        {
            "data": {"symbols": SYMBOLS, "embargo_bars": 5},
            "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
            "policy": {"hidden_sizes": [16, 16]},
        }
    )
    splits = split_by_time(synthetic_market(SYMBOLS, n_bars=900, seed=2), 0.7, 0.15, 5)
    factory = hierarchical_factory(cfg, splits.train, splits.val)
    obs, act = all_agent_spaces(factory)
    torch.manual_seed(3)
    modules = {
        aid: module_spec(cfg, aid, obs[aid], act[aid], factory.model_config("joint")).build()
        for aid in obs
        if aid.startswith("specialist_") or mode == "joint"
    }
    for module in modules.values():
        module.eval()
    calls = []
    stacked_call = StackedActor.__call__
    monkeypatch.setattr(
        StackedActor, "__call__", lambda self, obs: calls.append(1) or stacked_call(self, obs)
    )
    stacked = validate(factory, mode, modules)
    # every step acted through the stacked network (and the meta's stack of one)
    assert len(calls) == stacked["val_steps"] * (2 if mode == "joint" else 1)
    monkeypatch.setattr(validation._PolicyActor, "_groups", lambda self, by_policy: [])
    per_policy = validate(factory, mode, modules)
    assert stacked["val_steps"] == per_policy["val_steps"] > 50
    for key, value in per_policy.items():
        assert stacked[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def _backward_through_views(held, grads: list, module) -> None:
    """Give the held stack exactly `grads` (per module, per parameter in `module`'s own order)
    through its views (the fused first layer's gradient is the two first layers' in turn)."""
    from policies.stacked import FIRST_LAYER_NAMES

    own_order = [name for name, _ in module.named_parameters()]

    def stacked(name: str) -> torch.Tensor:
        return torch.stack([gs[own_order.index(name)] for gs in grads])

    pi_w, vf_w, pi_b, vf_b = FIRST_LAYER_NAMES
    fused = {
        "first.weight": lambda: torch.cat([stacked(pi_w), stacked(vf_w)], dim=1),
        "first.bias": lambda: torch.cat([stacked(pi_b), stacked(vf_b)], dim=1),
    }
    views = held.views()
    loss = sum(
        (view * (fused[name]() if name in fused else stacked(name))).sum()
        for name, view in views.items()
    )
    loss.backward()


def test_held_stack_steps_like_separate_fused_adams_and_writes_back():
    """A held stack's Adam step equals each module's own fused Adam step (same gradients,
    state carried in and out); optimizers with other settings are not held together."""
    from rl_trading.training.fast.grouped_learner import HeldStack

    def setup() -> tuple[list, list]:
        modules = _modules(3)
        opts = [torch.optim.Adam(list(m.parameters()), lr=1e-2, fused=True) for m in modules]
        return modules, opts

    def grads_for(modules: list, seed: int) -> list:
        gen = torch.Generator().manual_seed(seed)
        return [[torch.randn(p.shape, generator=gen) for p in m.parameters()] for m in modules]

    sep_m, sep_o = setup()
    held_m, held_o = setup()
    params_of = [list(m.parameters()) for m in held_m]
    for update in range(2):  # two updates of two steps: state goes in, out and in again
        assert HeldStack.can_hold(held_o, params_of)
        mids = ["a", "b", "c"]
        held = HeldStack(held_m, held_o, mids, ["default_optimizer"] * 3, clip=1e9)
        for step in range(2):
            grads = grads_for(sep_m, 10 * update + step)
            for m, opt, gs in zip(sep_m, sep_o, grads, strict=True):
                for p, g in zip(m.parameters(), gs, strict=True):
                    p.grad = g.clone()
                opt.step()
            _backward_through_views(held, grads, held_m[0])
            held.step(log=lambda keys, values: None)  # no clipping at this bound
        held.release()
        for a, b in zip(sep_m, held_m, strict=True):
            for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
                torch.testing.assert_close(q, p, rtol=0, atol=1e-7, msg=name)
    assert float(held_o[0].state[params_of[0][0]]["step"]) == 4.0
    held_o[1].param_groups[0]["lr"] = 3e-3
    assert not HeldStack.can_hold(held_o, params_of)


@pytest.mark.parametrize("poison", [None, float("nan"), float("inf")])
def test_held_stack_clips_and_zeroes_like_rllib(poison):
    """Each module's clip from its own global norm, and non-finite gradients (one tensor of
    module 0 poisoned) handled as RLlib does: `clip_gradients` (per-tensor norms with nan/inf
    bounded), then `nan_to_num`, then Adam. Module 1 is untouched by module 0's values."""
    from ray.rllib.utils.torch_utils import clip_gradients

    from rl_trading.training.fast.grouped_learner import HeldStack

    def setup() -> tuple[list, list]:
        modules = _modules(2)
        opts = [torch.optim.Adam(list(m.parameters()), lr=1e-2, fused=True) for m in modules]
        return modules, opts

    gen = torch.Generator().manual_seed(4)
    sep_m, sep_o = setup()
    grads = [[torch.randn(p.shape, generator=gen) for p in m.parameters()] for m in sep_m]
    if poison is not None:
        grads[0][2].view(-1)[3] = poison
    clip = 0.7
    logged = {}
    held_m, held_o = setup()
    held = HeldStack(held_m, held_o, ["a", "b"], ["default_optimizer"] * 2, clip=clip)
    _backward_through_views(held, grads, held_m[0])
    held.step(log=lambda keys, values: logged.update(zip(keys, values.tolist(), strict=True)))
    held.release()
    for i, (m, opt, gs) in enumerate(zip(sep_m, sep_o, grads, strict=True)):
        clipped = {k: g.clone() for k, g in enumerate(gs)}
        norm = clip_gradients(clipped, grad_clip=clip, grad_clip_by="global_norm")
        assert logged[("ab"[i], "gradients_default_optimizer_global_norm")] == pytest.approx(
            float(norm), rel=1e-5
        )
        for k, p in enumerate(m.parameters()):
            p.grad = torch.nan_to_num(clipped[k])
        opt.step()
    for a, b in zip(sep_m, held_m, strict=True):
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            assert torch.isfinite(q).all(), name
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.rllib
def test_grouped_learner_matches_rllib_in_phase_3_with_the_meta_as_a_group_of_one(ray_session):
    """Phase 3 trains the specialists (one stacked group) and the meta (its own shape: a group
    of one on the same held path): weights and learner stats as RLlib's PPOTorchLearner."""
    _CountingGrouped.groups = set()
    grouped, g_stats = _phase1(_CountingGrouped, iterations=2, phase=3)
    stock, s_stats = _phase1(PPOTorchLearner, iterations=2, phase=3)
    assert _CountingGrouped.groups == {tuple(f"specialist_{s}" for s in SYMBOLS), ("meta",)}
    assert grouped.keys() == stock.keys() and "meta" in grouped
    _assert_same_training(grouped, g_stats, stock, s_stats)


@pytest.mark.rllib
def test_grouped_learner_matches_rllib_in_phase_2_with_frozen_specialists(ray_session):
    """Phase 2 trains the meta alone over frozen specialists: the specialists' optimizers hold
    no gradients and are neither zeroed nor stepped; weights and stats (the frozen modules'
    zero gradient norms included) as RLlib's PPOTorchLearner."""
    _CountingGrouped.groups = set()
    grouped, g_stats = _phase1(_CountingGrouped, iterations=2, phase=2)
    stock, s_stats = _phase1(PPOTorchLearner, iterations=2, phase=2)
    assert _CountingGrouped.groups == {("meta",)}
    assert grouped.keys() == stock.keys() and "meta" in grouped
    _assert_same_training(grouped, g_stats, stock, s_stats)


def test_train_tanh_matches_torch_tanh_and_its_gradient():
    """The learner's tanh (2 sigmoid(2x) - 1) is torch.tanh within float32 rounding, and its
    gradient is tanh's (1 - y^2) at its own output."""
    from policies.stacked import train_tanh

    x = (torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 4).requires_grad_()
    y = train_tanh(x)
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=3e-7)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, 1 - y.detach() ** 2, rtol=0, atol=1e-7)
