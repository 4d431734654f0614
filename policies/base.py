"""Shared actor-critic plumbing for the torch RLModules: action heads, values, obs layout.

Every module builds from its spaces alone (+ ``model_config``) and implements RLlib's
``ValueFunctionAPI`` so PPO can use it. Box actions get a diagonal Gaussian
(``[mean, log_std]`` in ``Columns.ACTION_DIST_INPUTS``, log_std state-independent), Discrete
actions get categorical logits.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

#: RLlib 2.60's own `RLModule.__init__` builds a deprecated `RLModuleConfig` for every module
#: it constructs (RLlib's default PPO module included), which logs "`RLModule(config=...)` has
#: been deprecated ... will raise an error in the future". Our modules are built the current
#: way (`RLModuleSpec(observation_space=, action_space=, model_config=).build()`, no `config=`;
#: tests/test_policies.py checks it), so that line is noise about RLlib's internals: drop it.
RLMODULE_CONFIG_NOTICE = "RLModule(config=[RLModuleConfig object])"


class _RLlibInternalDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return RLMODULE_CONFIG_NOTICE not in record.getMessage()


_deprecation_log = logging.getLogger("ray._common.deprecation")
if not any(isinstance(f, _RLlibInternalDeprecation) for f in _deprecation_log.filters):
    _deprecation_log.addFilter(_RLlibInternalDeprecation())

LOG_STD_INIT = -0.5
LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0
# model_config key: sample greedily even when exploring (frozen policies acting beside trained
# ones, e.g. the specialists in phase 2, behave in training as they do in validation)
GREEDY_KEY = "greedy_exploration"
# model_config key (`resources.rllib_fast_paths: false`): act exactly as a stock RLlib module
# does (RLlib's eval()/train() walk per call, Gaussian sampled by RLlib's GetActions connector)
STOCK_ACTING_KEY = "rllib_stock_acting"
_GREEDY_LOG_STD = -20.0  # Gaussian std ~2e-9: the sample is the mean in float32
_GREEDY_LOGIT_SCALE = 1e4  # categorical: logits x 1e4 -> the arg-max
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # as torch.distributions.Normal.log_prob


def mlp(in_dim: int, hidden: list[int], out_dim: int | None = None, act=nn.Tanh) -> nn.Sequential:
    """A plain MLP; `out_dim=None` ends on the last hidden layer (an encoder)."""
    layers: list[nn.Module] = []
    last = in_dim
    for size in hidden:
        layers += [nn.Linear(last, size), act()]
        last = size
    if out_dim is not None:
        layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


def obs_layout(obs_dim: int, model_config: dict[str, Any]) -> tuple[int, int, int]:
    """(window, n_features, n_extra) of a flat obs `[window x n_features] + extra state`.

    Without `window_size`/`n_features` in the model config the whole obs is one time step.
    """
    window = int(model_config.get("window_size") or 0)
    n_feat = int(model_config.get("n_features") or 0)
    if window <= 0 or n_feat <= 0 or window * n_feat > obs_dim:
        return 1, obs_dim, 0
    return window, n_feat, obs_dim - window * n_feat


def sample_diag_gaussian(dist_inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Actions and their log-probabilities from `[mean, log_std]` inputs.

    The same tensor operations (and torch RNG draws) as RLlib's `GetActions` connector with
    `TorchDiagGaussian` (`Normal(mean, exp(log_std))`, `sample()`, `log_prob(a).sum(-1)`), so
    the actions and logp are bit-identical; done in the module, it skips the distribution
    objects built per policy and env step. `GetActions` keeps actions already present.
    """
    loc, log_std = dist_inputs.chunk(2, dim=-1)
    scale = log_std.exp()
    with torch.no_grad():
        actions = torch.normal(loc, scale)
    var = scale**2
    logp = -((actions - loc) ** 2) / (2 * var) - scale.log() - _LOG_SQRT_2PI
    return {Columns.ACTIONS: actions, Columns.ACTION_LOGP: logp.sum(-1)}


class ActorCriticModule(TorchRLModule, ValueFunctionAPI):
    """Base of the project's RLModules: subclasses build `_encode(obs) -> (pi_emb, vf_emb)`."""

    def setup(self) -> None:
        """Build the encoder (subclass), then the actor and critic heads."""
        self.model_config = dict(self.model_config or {})
        self._obs_dim = int(np.prod(self.observation_space.shape))
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            self._act_dim = int(np.prod(space.shape))
            self._continuous = True
            pi_out = self._act_dim
        elif isinstance(space, gym.spaces.Discrete):
            self._continuous = False
            pi_out = int(space.n)
        else:
            raise ValueError(f"unsupported action space {space} (Box or Discrete only)")
        pi_dim, vf_dim = self.build_encoder()
        head_hidden = list(self.model_config.get("head_hiddens", []))
        self._pi_head = mlp(pi_dim, head_hidden, pi_out)
        self._vf_head = mlp(vf_dim, head_hidden, 1)
        nn.init.orthogonal_(self._pi_head[-1].weight, gain=0.01)
        nn.init.zeros_(self._pi_head[-1].bias)
        if self._continuous:
            self.log_std = nn.Parameter(torch.full((self._act_dim,), LOG_STD_INIT))

    # -- subclasses -------------------------------------------------------------------------
    def build_encoder(self) -> tuple[int, int]:
        """Create the encoder layers; return the actor and critic embedding sizes."""
        raise NotImplementedError

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings for the actor and the critic from a `[B, obs_dim]` batch."""
        raise NotImplementedError

    def encode_actor(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's embedding alone (acting needs no critic); subclasses may skip work."""
        return self.encode(obs)[0]

    @property
    def continuous(self) -> bool:
        """Whether the action space is a Box (a Gaussian head) rather than Discrete."""
        return self._continuous

    @property
    def obs_dim(self) -> int:
        """Size of the flattened observation."""
        return self._obs_dim

    def flat_obs(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's observations as a float `[B, obs_dim]` tensor."""
        obs = batch[Columns.OBS]
        return obs.reshape(obs.shape[0], -1).float()

    def _dist_inputs(self, pi_emb: torch.Tensor) -> torch.Tensor:
        out = self._pi_head(pi_emb)
        if not self._continuous:
            return out
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(out)
        return torch.cat([out, log_std], dim=-1)

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        pi_emb = self.encode_actor(self.flat_obs(batch))
        return {Columns.ACTION_DIST_INPUTS: self._dist_inputs(pi_emb)}

    def deterministic_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions of a `[B, ...]` obs batch before the env's action mapping
        (the Gaussian mean, or the arg-max logit): the values `forward_inference` and RLlib's
        deterministic `GetActions` give, without the batch dict and the log-std columns, for
        a per-bar caller (paper trading). Call it without grad (e.g. `inference_mode`)."""
        out = self._pi_head(self.encode_actor(self.flat_obs({Columns.OBS: obs})))
        return out if self._continuous else out.argmax(dim=-1)

    @property
    def fast_acting(self) -> bool:
        """False with `STOCK_ACTING_KEY`: act through RLlib's stock code paths only."""
        return not self.model_config.get(STOCK_ACTING_KEY)

    def forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """RLlib's, minus its `eval()` walk over every submodule when already in eval mode.

        The env runners' modules stay in eval mode (`TradingCallbacks.on_algorithm_init`).
        """
        if self.training or not self.fast_acting:
            return super().forward_exploration(batch, **kwargs)
        return self._forward_exploration(batch, **kwargs)

    def forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """RLlib's, minus its `eval()` walk when already in eval mode."""
        if self.training or not self.fast_acting:
            return super().forward_inference(batch, **kwargs)
        return self._forward_inference(batch, **kwargs)

    @torch.no_grad()
    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = self._forward(batch, **kwargs)
        if self._continuous and self.fast_acting:  # the Gaussian mean, as RLlib's
            # deterministic GetActions takes it (stock acting leaves it to GetActions)
            out[Columns.ACTIONS] = out[Columns.ACTION_DIST_INPUTS][..., : self._act_dim]
        return out

    @torch.no_grad()
    def _forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # no autograd graph while acting (RLlib's default _forward_exploration is no-grad too)
        return self.explore_outputs(self._forward(batch, **kwargs))

    def explore_outputs(self, out: dict[str, Any]) -> dict[str, Any]:
        """Exploration outputs from `_forward`'s: near-greedy inputs for a frozen policy, and
        (fast acting, Gaussian) sampled actions with their log-probabilities.

        Shared with the fused env runner, which computes `_forward`'s outputs stacked.
        """
        if self.model_config.get(GREEDY_KEY):
            inputs = out[Columns.ACTION_DIST_INPUTS]
            if self._continuous:
                mean = inputs[..., : self._act_dim]
                inputs = torch.cat([mean, torch.full_like(mean, _GREEDY_LOG_STD)], dim=-1)
            else:
                inputs = inputs * _GREEDY_LOGIT_SCALE
            out[Columns.ACTION_DIST_INPUTS] = inputs
        if self._continuous and self.fast_acting:  # else RLlib's GetActions samples
            out.update(sample_diag_gaussian(out[Columns.ACTION_DIST_INPUTS]))
        return out

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        pi_emb, vf_emb = self.encode(self.flat_obs(batch))
        return {
            Columns.ACTION_DIST_INPUTS: self._dist_inputs(pi_emb),
            Columns.EMBEDDINGS: vf_emb,
        }

    def compute_values(
        self, batch: dict[str, Any], embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """State values `[B]` (ValueFunctionAPI); reuses the critic embedding when given."""
        if embeddings is None:
            _, embeddings = self.encode(self.flat_obs(batch))
        return self._vf_head(embeddings).squeeze(-1)


class WindowedModule(ActorCriticModule):
    """Base of the sequence encoders (transformer, CNN-LSTM) over `[window x n_features]`.

    Subclasses encode the window into one vector per sample; the extra state is joined to it
    and fed through separate actor and critic fusion MLPs (`_pi_fuse`, `_vf_fuse`).
    """

    def build_fusion(self, seq_dim: int, default_width: int) -> tuple[int, int]:
        """Build the actor / critic fusion MLPs over `seq_dim + n_extra`; return their sizes.

        Uses the last of `hidden_sizes` (default [64]); `default_width` when it is empty.
        """
        hidden = list(self.model_config.get("hidden_sizes", [64]))[-1:] or [default_width]
        fused = seq_dim + self._n_extra
        self._pi_fuse = mlp(fused, hidden)
        self._vf_fuse = mlp(fused, hidden)
        return hidden[-1], hidden[-1]

    def split_window(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, obs_dim]` -> (window `[B, window, n_features]`, extra state `[B, n_extra]`)."""
        n_win = self._window * self._n_feat
        return obs[:, :n_win].reshape(-1, self._window, self._n_feat), obs[:, n_win:]

    def fuse(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor and critic embeddings from the joined sequence features and extra state."""
        return self._pi_fuse(feats), self._vf_fuse(feats)
