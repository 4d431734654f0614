"""Ensembles: averaged Gaussian means / probabilities, majority vote, backtest and registry."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from policies import compute_actions, module_spec
from rl_trading.config import load_config
from rl_trading.data import synthetic_market
from rl_trading.errors import CheckpointError
from rl_trading.evaluation.backtest import backtest
from rl_trading.evaluation.ensemble import Ensemble

OBS = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)


def _module(act_space, seed):
    cfg = load_config(overrides=["policy.hidden_sizes=[16]"])
    module = module_spec(cfg, "default_policy", OBS, act_space).build()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.4)
    return module


def _logits(module, obs):
    from ray.rllib.core.columns import Columns

    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: torch.as_tensor(obs)})
    return out[Columns.ACTION_DIST_INPUTS].numpy()


def test_continuous_ensemble_averages_gaussian_means():
    box = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    a, b = _module(box, 0), _module(box, 1)
    obs = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    ens = Ensemble([a, b], method="mean")
    got = ens.act(obs)
    mean = (_logits(a, obs)[:, :1] + _logits(b, obs)[:, :1]) / 2.0
    np.testing.assert_allclose(got, np.clip(mean, -1, 1), atol=1e-6)
    # Not simply one member's action.
    assert not np.allclose(got, compute_actions(a, obs))
    # Weights: all weight on `a` reproduces `a` exactly.
    only_a = Ensemble([a, b], weights=[1.0, 0.0]).act(obs)
    np.testing.assert_allclose(only_a, compute_actions(a, obs), atol=1e-6)


def test_discrete_vote_and_mean():
    disc = gym.spaces.Discrete(3)
    mods = [_module(disc, s) for s in (0, 1, 2)]
    obs = np.random.default_rng(1).normal(size=(300, 6)).astype(np.float32)
    each = np.stack([compute_actions(m, obs) for m in mods])
    vote = Ensemble(mods, method="vote").act(obs)
    for i in range(len(obs)):
        counts = np.bincount(each[:, i], minlength=3)
        assert vote[i] == int(np.argmax(counts))
    probs = sum(
        np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in (_logits(m, obs) for m in mods)
    )
    assert np.array_equal(Ensemble(mods, method="mean").act(obs), probs.argmax(-1))
    with pytest.raises(CheckpointError):
        Ensemble(mods[:1])
    with pytest.raises(CheckpointError):
        Ensemble(mods, method="median")


def test_ensemble_backtest_and_register(workspace):
    from envs.trading_env import TradingEnv
    from rl_trading.registry import ModelRegistry

    cfg = load_config(overrides=["data.timeframe=1h", "train.window_size=8"])
    bars = synthetic_market(["AAA"], n_bars=400, seed=2, timeframe="1h")
    env = TradingEnv(cfg, bars=bars["AAA"], eval_mode=True)
    reg = ModelRegistry(cfg=cfg)
    names = []
    for seed in (0, 1):
        m = module_spec(cfg, "default_policy", env.observation_space, env.action_space).build()
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.3)
        m.save_to_path(workspace / f"m{seed}" / "default_policy")
        res = backtest(
            workspace / f"m{seed}" / "default_policy", bars, cfg, include_supervised=False
        )
        pm = res.metrics["policy"]
        rec = reg.register(
            workspace / f"m{seed}" / "default_policy",
            model_type="ppo_single",
            metrics={"sharpe": pm["sharpe_ratio"], "max_drawdown": pm["max_drawdown"]},
            preprocessing={"scaler": env.scaler.to_dict()},
        )
        names.append(rec.name)
    ens = Ensemble(names, cfg=cfg)
    res = backtest(ens, bars, cfg, include_supervised=False)
    assert res.meta["scaler_origin"] == "policy preprocessing"
    assert res.runs["policy"].weights.std() > 0
    pm = res.metrics["policy"]
    rec = reg.register(
        ens.save(workspace / "ens"),
        model_type="ensemble_ppo",
        kind="ensemble",
        metrics={"sharpe": pm["sharpe_ratio"], "max_drawdown": pm["max_drawdown"]},
        lineage={"members": names},
    )
    assert rec.kind == "ensemble" and rec.lineage["members"] == names
    again = backtest(rec.name, bars, cfg, include_supervised=False)
    np.testing.assert_allclose(again.runs["policy"].equity, res.runs["policy"].equity)
