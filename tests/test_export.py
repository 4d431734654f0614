"""ONNX export: onnxruntime reproduces the RLModule's deterministic actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from policies import compute_actions, module_spec
from rl_trading.config import AppConfig
from rl_trading.errors import CheckpointError
from rl_trading.evaluation.export import export_onnx, load_module, onnx_actions

WINDOW, N_FEAT, N_EXTRA = 8, 5, 3
OBS_DIM = WINDOW * N_FEAT + N_EXTRA


def _module(model: str, act_space: gym.Space, seed: int = 0):
    cfg = AppConfig()
    cfg.policy.model = model
    cfg.policy.hidden_sizes = [32, 32]
    cfg.policy.d_model = 16
    cfg.policy.num_heads = 2
    cfg.policy.num_layers = 1
    cfg.policy.cnn_channels = 8
    cfg.policy.lstm_hidden = 16
    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    extra = {"window_size": WINDOW, "n_features": N_FEAT}
    module = module_spec(cfg, "specialist_X", obs_space, act_space, extra).build()
    # Random, larger weights so actions spread over the whole range (incl. clipping).
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return module


@pytest.mark.parametrize(
    ("model", "act_space"),
    [
        ("mlp", gym.spaces.Box(-1.0, 1.0, (1,), np.float32)),
        ("mlp", gym.spaces.Box(np.array([-0.5, 0.0]), np.array([0.5, 1.0]), dtype=np.float32)),
        ("mlp", gym.spaces.Discrete(3)),
        ("transformer", gym.spaces.Box(-1.0, 1.0, (1,), np.float32)),
        ("cnn_lstm", gym.spaces.Box(-1.0, 1.0, (1,), np.float32)),
    ],
)
def test_onnx_parity_on_1000_observations(tmp_path, model, act_space):
    module = _module(model, act_space)
    module.save_to_path(tmp_path / "module")
    restored = load_module(tmp_path / "module")
    path = export_onnx(restored, tmp_path / "policy.onnx")
    assert path.stat().st_size > 0
    obs = np.random.default_rng(1).normal(0.0, 2.0, size=(1000, OBS_DIM)).astype(np.float32)
    expected = compute_actions(restored, obs)
    got = onnx_actions(path, obs)
    if isinstance(act_space, gym.spaces.Discrete):
        assert got.dtype == np.int64
        assert np.array_equal(got.reshape(-1), expected.reshape(-1))
        assert len(np.unique(got)) > 1  # the check is not trivially about one constant action
    else:
        np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5, rtol=0)
        assert expected.std() > 0.05  # actions really vary across observations


def test_load_module_errors(tmp_path):
    with pytest.raises(CheckpointError):
        load_module(tmp_path)
    with pytest.raises(CheckpointError, match="meta"):
        load_module(tmp_path, policy_id="meta")
