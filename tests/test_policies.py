"""The torch RLModules: build from spaces alone, forward shapes, values, determinism."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from policies import (
    CNNLSTMModule,
    MLPModule,
    TransformerModule,
    compute_actions,
    model_name_for,
    module_spec,
)
from rl_trading.config import AppConfig, PolicyConfig

WINDOW, N_FEAT, N_EXTRA = 8, 5, 3
OBS = gym.spaces.Box(-np.inf, np.inf, (WINDOW * N_FEAT + N_EXTRA,), np.float32)
BOX = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
ALLOC = gym.spaces.Box(0.0, 1.0, (4,), np.float32)
DISC = gym.spaces.Discrete(3)
SMALL = {
    "hidden_sizes": [32, 32],
    "d_model": 16,
    "num_layers": 1,
    "num_heads": 2,
    "cnn_channels": 8,
    "lstm_hidden": 16,
    "window_size": WINDOW,
    "n_features": N_FEAT,
}
CLASSES = [MLPModule, TransformerModule, CNNLSTMModule]


def _batch(n: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {Columns.OBS: torch.as_tensor(rng.normal(size=(n, OBS.shape[0])).astype(np.float32))}


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("act", [BOX, ALLOC, DISC], ids=["box1", "alloc4", "discrete3"])
def test_module_forward_shapes_and_values(cls, act):
    torch.manual_seed(0)
    module = cls(observation_space=OBS, action_space=act, model_config=dict(SMALL))
    batch = _batch()
    width = 2 * act.shape[0] if isinstance(act, gym.spaces.Box) else act.n
    for fwd in (module.forward_inference, module.forward_exploration, module.forward_train):
        out = fwd(batch)
        assert out[Columns.ACTION_DIST_INPUTS].shape == (6, width)
        assert torch.isfinite(out[Columns.ACTION_DIST_INPUTS]).all()
    train_out = module.forward_train(batch)
    values = module.compute_values(batch)
    assert values.shape == (6,)
    # The critic embedding from forward_train gives the same values (PPO's fast path).
    reused = module.compute_values(batch, embeddings=train_out[Columns.EMBEDDINGS])
    torch.testing.assert_close(values, reused)
    # Gradients reach both heads.
    loss = train_out[Columns.ACTION_DIST_INPUTS].sum() + values.sum()
    loss.backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("cls", CLASSES)
def test_deterministic_actions_repeat_and_respect_bounds(cls):
    torch.manual_seed(1)
    module = cls(observation_space=OBS, action_space=ALLOC, model_config=dict(SMALL))
    obs = _batch(10, seed=3)[Columns.OBS].numpy()
    a1, a2 = compute_actions(module, obs), compute_actions(module, obs)
    np.testing.assert_array_equal(a1, a2)
    assert a1.shape == (10, 4) and (a1 >= 0).all() and (a1 <= 1).all()
    # Exploration actually samples (differs from the mean) yet stays in bounds.
    e = compute_actions(module, obs, explore=True, seed=0)
    assert not np.allclose(e, a1) and (e >= 0).all() and (e <= 1).all()
    d = cls(observation_space=OBS, action_space=DISC, model_config=dict(SMALL))
    ad = compute_actions(d, obs)
    assert ad.dtype == np.int64 and set(ad.tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(ad, compute_actions(d, obs))


def test_window_layout_is_used():
    """The transformer attends over `window_size` steps: changing an old step changes actions."""
    torch.manual_seed(2)
    module = TransformerModule(observation_space=OBS, action_space=BOX, model_config=dict(SMALL))
    assert (module._window, module._n_feat, module._n_extra) == (WINDOW, N_FEAT, N_EXTRA)
    obs = _batch(1, seed=4)[Columns.OBS]
    base = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    obs2 = obs.clone()
    obs2[0, 0] += 5.0  # first feature of the oldest step
    moved = module.forward_inference({Columns.OBS: obs2})[Columns.ACTION_DIST_INPUTS]
    assert not torch.allclose(base, moved)
    # Without a layout the whole observation is one step.
    flat = TransformerModule(observation_space=OBS, action_space=BOX, model_config={"d_model": 8})
    assert (flat._window, flat._n_feat, flat._n_extra) == (1, OBS.shape[0], 0)


def test_module_spec_selects_model_per_policy():
    pol = PolicyConfig(model="mlp", per_policy={"specialist": "transformer", "meta": "cnn_lstm"})
    assert model_name_for(pol, "specialist_EURUSD") == "transformer"
    assert model_name_for(pol, "meta") == "cnn_lstm"
    assert model_name_for(PolicyConfig(), "specialist_X") == "mlp"
    cfg = AppConfig(policy=pol)
    spec = module_spec(cfg, "specialist_EURUSD", OBS, BOX, {"window_size": WINDOW})
    assert spec.module_class is TransformerModule
    assert spec.model_config["window_size"] == WINDOW
    assert spec.model_config["d_model"] == pol.d_model
    module = spec.build()
    assert isinstance(module, TransformerModule)
    assert module_spec(pol, "meta", OBS, ALLOC).module_class is CNNLSTMModule


def test_bad_head_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        TransformerModule(
            observation_space=OBS,
            action_space=BOX,
            model_config={**SMALL, "d_model": 10, "num_heads": 4},
        )
    with pytest.raises(ValueError, match="unsupported action space"):
        MLPModule(observation_space=OBS, action_space=gym.spaces.MultiBinary(3), model_config={})


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("act", [BOX, ALLOC], ids=["box1", "alloc4"])
def test_exploration_samples_like_rllib_get_actions(cls, act):
    """Gaussian modules sample in forward_exploration: the same actions (same torch RNG
    draws) and log-probabilities as RLlib's GetActions with TorchDiagGaussian, bit for bit;
    no autograd graph; the same distribution inputs in train and eval mode."""
    from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian

    torch.manual_seed(2)
    module = cls(observation_space=OBS, action_space=act, model_config=dict(SMALL))
    batch = _batch(n=16, seed=3)
    module.eval()
    torch.manual_seed(11)
    out = module.forward_exploration(batch)
    assert not out[Columns.ACTION_DIST_INPUTS].requires_grad
    torch.manual_seed(11)
    dist = TorchDiagGaussian.from_logits(out[Columns.ACTION_DIST_INPUTS])
    actions = dist.sample()
    assert torch.equal(out[Columns.ACTIONS], actions)
    assert torch.equal(out[Columns.ACTION_LOGP], dist.logp(actions))
    module.train()  # RLlib's own path (eval() walk, then back to train mode)
    torch.manual_seed(11)
    again = module.forward_exploration(batch)
    assert module.training
    assert torch.equal(again[Columns.ACTIONS], out[Columns.ACTIONS])
    # inference: the Gaussian mean, as RLlib's deterministic distribution gives it
    inf = module.forward_inference(batch)
    det = TorchDiagGaussian.from_logits(inf[Columns.ACTION_DIST_INPUTS]).to_deterministic()
    assert torch.equal(inf[Columns.ACTIONS], det.sample())
    # acting runs only the actor: the same inputs as the training forward (the transformer's
    # eval-mode fast path differs in the last float bits)
    torch.testing.assert_close(
        module.forward_train(batch)[Columns.ACTION_DIST_INPUTS], out[Columns.ACTION_DIST_INPUTS]
    )


def test_modules_are_built_without_the_deprecated_constructor(caplog):
    """Our specs build modules the current way (spaces + model_config, no `config=`); the
    deprecation line RLlib's own base class logs for every module does not reach the user."""
    import logging

    from ray.rllib.core.rl_module.rl_module import RLModule

    from policies import module_spec
    from rl_trading.config import AppConfig

    obs = gym.spaces.Box(-1, 1, (10,), np.float32)
    act = gym.spaces.Box(-1, 1, (1,), np.float32)
    spec = module_spec(AppConfig(), "default_policy", obs, act)
    assert spec.observation_space is obs and spec.model_config is not None
    with caplog.at_level(logging.WARNING):
        module = spec.build()
    assert isinstance(module, RLModule) and module.observation_space is obs
    assert not [r for r in caplog.records if "RLModule(config=" in r.getMessage()]
