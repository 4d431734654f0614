"""Choosing a module per policy (`cfg.policy.model` / `per_policy`) and building its spec."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from policies.cnn_lstm import CNNLSTMModule
from policies.mlp import MLPModule
from policies.transformer import TransformerModule
from rl_trading.config import AppConfig, PolicyConfig

MODEL_CLASSES = {"mlp": MLPModule, "transformer": TransformerModule, "cnn_lstm": CNNLSTMModule}


def model_name_for(policy_cfg: PolicyConfig, policy_id: str) -> str:
    """Model of `policy_id`: its `per_policy` entry, then its prefix's, else the default."""
    per = policy_cfg.per_policy
    if policy_id in per:
        return per[policy_id]
    prefix = policy_id.split("_", 1)[0]
    return per.get(prefix, policy_cfg.model)


def model_config_for(policy_cfg: PolicyConfig, extra: dict[str, Any] | None = None) -> dict:
    """The `model_config` dict every module reads (sizes + obs layout from `extra`)."""
    out: dict[str, Any] = {
        "hidden_sizes": list(policy_cfg.hidden_sizes),
        "d_model": policy_cfg.d_model,
        "num_layers": policy_cfg.num_layers,
        "num_heads": policy_cfg.num_heads,
        "cnn_channels": policy_cfg.cnn_channels,
        "lstm_hidden": policy_cfg.lstm_hidden,
    }
    out.update(extra or {})
    return out


def module_spec(
    cfg: AppConfig | PolicyConfig,
    policy_id: str,
    obs_space: gym.Space,
    act_space: gym.Space,
    model_config: dict[str, Any] | None = None,
) -> RLModuleSpec:
    """RLModuleSpec for one policy; `model_config` adds e.g. `window_size` / `n_features`."""
    policy_cfg = cfg.policy if isinstance(cfg, AppConfig) else cfg
    name = model_name_for(policy_cfg, policy_id)
    return RLModuleSpec(
        module_class=MODEL_CLASSES[name],
        observation_space=obs_space,
        action_space=act_space,
        model_config=model_config_for(policy_cfg, model_config),
    )
