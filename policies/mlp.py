"""Default policy: separate actor and critic MLP towers over the flat observation."""

from __future__ import annotations

import torch
from torch import nn

from policies.base import ActorCriticModule, mlp


class MLPModule(ActorCriticModule):
    """Two MLP towers (actor, critic); sizes from `model_config["hidden_sizes"]`."""

    def build_encoder(self) -> tuple[int, int]:
        """Actor and critic towers of `hidden_sizes` (tanh)."""
        hidden = list(self.model_config.get("hidden_sizes", [256, 256]))
        self._pi_enc = mlp(self._obs_dim, hidden)
        self._vf_enc = mlp(self._obs_dim, hidden)
        out = hidden[-1] if hidden else self._obs_dim
        return out, out

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor and critic embeddings."""
        return self._pi_enc(obs), self._vf_enc(obs)

    def encode_actor(self, obs: torch.Tensor) -> torch.Tensor:
        """Actor embedding only: acting (sampling, inference) skips the critic tower."""
        return self._pi_enc(obs)

    def towers(self) -> dict[str, nn.Sequential]:
        """The actor's and critic's encoder and head stacks by their parameter-name prefix
        (`policies/stacked.py` runs same-shape modules' towers as one batched network)."""
        return {
            "_pi_enc": self._pi_enc,
            "_pi_head": self._pi_head,
            "_vf_enc": self._vf_enc,
            "_vf_head": self._vf_head,
        }
