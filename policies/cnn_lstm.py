"""Conv1d over the observation window feeding an LSTM (within one observation, not across steps)."""

from __future__ import annotations

import torch
from torch import nn

from policies.base import WindowedModule, obs_layout


class CNNLSTMModule(WindowedModule):
    """Two Conv1d layers over time, an LSTM over their output, extra state joined at the end.

    model_config: window_size, n_features, cnn_channels, lstm_hidden, hidden_sizes.
    """

    def build_encoder(self) -> tuple[int, int]:
        """Conv stack, LSTM and the actor / critic fusion MLPs."""
        cfg = self.model_config
        self._window, self._n_feat, self._n_extra = obs_layout(self._obs_dim, cfg)
        ch = int(cfg.get("cnn_channels", 32))
        lstm_hidden = int(cfg.get("lstm_hidden", 64))
        self._conv = nn.Sequential(
            nn.Conv1d(self._n_feat, ch, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv1d(ch, ch, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self._lstm = nn.LSTM(ch, lstm_hidden, batch_first=True)
        return self.build_fusion(lstm_hidden, default_width=lstm_hidden)

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv over time -> LSTM -> last hidden state, concatenated with the extra state."""
        seq, extra = self.split_window(obs)
        conv = self._conv(seq.transpose(1, 2)).transpose(1, 2)
        _, (h_n, _) = self._lstm(conv)
        return self.fuse(torch.cat([h_n[-1], extra], dim=-1))
