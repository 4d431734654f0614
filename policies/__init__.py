"""Torch RLModules with ValueFunctionAPI for the trading policies, and their specs."""

from policies.base import ActorCriticModule
from policies.cnn_lstm import CNNLSTMModule
from policies.inference import act_one, compute_actions, to_env_action
from policies.mlp import MLPModule
from policies.pretrained import PretrainedCNNLSTMModule
from policies.spec import MODEL_CLASSES, model_config_for, model_name_for, module_spec
from policies.transformer import TransformerModule

__all__ = [
    "MODEL_CLASSES",
    "ActorCriticModule",
    "CNNLSTMModule",
    "MLPModule",
    "PretrainedCNNLSTMModule",
    "TransformerModule",
    "act_one",
    "compute_actions",
    "model_config_for",
    "model_name_for",
    "module_spec",
    "to_env_action",
]
