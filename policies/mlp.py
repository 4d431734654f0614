"""Default policy: separate actor and critic MLP towers over the flat observation."""

from __future__ import annotations

import torch

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
