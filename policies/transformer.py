"""Transformer encoder over the observation window, with separate actor and critic heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from policies.base import WindowedModule, obs_layout


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """Fixed sinusoidal positional encoding `[length, d_model]`."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


class TransformerModule(WindowedModule):
    """Self-attention over `window_size` steps of `n_features`; extra state joins after pooling.

    model_config: window_size, n_features, d_model, num_layers, num_heads, hidden_sizes.
    """

    def build_encoder(self) -> tuple[int, int]:
        """Input projection, positional encoding, encoder stack and a fusion MLP."""
        cfg = self.model_config
        self._window, self._n_feat, self._n_extra = obs_layout(self._obs_dim, cfg)
        d_model = int(cfg.get("d_model", 64))
        heads = int(cfg.get("num_heads", 4))
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={heads}")
        self._proj = nn.Linear(self._n_feat, d_model)
        self.register_buffer("_pos", sinusoidal_positions(self._window, d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        self._encoder = nn.TransformerEncoder(
            layer, int(cfg.get("num_layers", 2)), enable_nested_tensor=False
        )
        return self.build_fusion(2 * d_model, default_width=d_model)

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the window; pool (mean + last step); concat the extra state."""
        seq, extra = self.split_window(obs)
        h = self._encoder(self._proj(seq) + self._pos)
        return self.fuse(torch.cat([h.mean(dim=1), h[:, -1], extra], dim=-1))
