"""A specialist module whose window encoder is a registered supervised CNN-LSTM's body.

Stage 2 (frozen) and stage 3 (fine-tuned, "hybrid") of the four-stage design: the supervised
network of `rl_trading.supervised.models.build_cnn_lstm_net` (one Conv1d + ReLU, one LSTM, its
own pooled feature scaler) encodes the observation window; the extra state (and any `sig_*`
columns of the last step) joins after it, then the actor / critic fusion MLPs and heads.

Everything the module needs travels in `model_config["encoder"]` (plain data, see
`rl_trading.supervised.encoder.encoder_model_config`), so `RLModule.from_checkpoint` rebuilds it
from a checkpoint alone: architecture, the affine map from the env's scaled features to the
supervised scaler's (fixed buffers), the initial (supervised) weights, `encoder_lr` (None:
frozen) and the lineage (source model name + sha256). The checkpoint's own state then replaces
the initial weights (fine-tuned runs restore their fine-tuned encoder).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from policies.base import WindowedModule, obs_layout

ENCODER_KEY = "encoder"  # model_config key of the encoder description
ENCODER_OPTIMIZER = "encoder"  # name of the fine-tuned encoder's own optimizer in the learner


class SupervisedEncoder(nn.Module):
    """The supervised CNN-LSTM body: `[B, window, F_env]` env-scaled features -> `[B, hidden]`.

    Parameter names match the supervised net's (`conv.0.*`, `lstm.*`), so its state dict loads
    as is (without its `head`). The first `n_features` env columns are mapped to the supervised
    scaler's units by `x * scale + shift`, clipped at +-clip, exactly as its `FeatureScaler`.
    """

    def __init__(self, n_features: int, channels: int, hidden: int, clip: float) -> None:
        super().__init__()
        self.n_features = n_features
        self.clip = float(clip)
        conv = nn.Conv1d(n_features, channels, kernel_size=3, padding=1)
        self.conv = nn.Sequential(conv, nn.ReLU())
        self.lstm = nn.LSTM(channels, hidden, batch_first=True)
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("shift", torch.zeros(n_features))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Last LSTM output (what the supervised head reads) of the mapped window."""
        x = seq[..., : self.n_features] * self.scale + self.shift
        x = x.clamp(-self.clip, self.clip)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        out, _ = self.lstm(h)
        return out[:, -1]


class PretrainedCNNLSTMModule(WindowedModule):
    """Specialist policy over a supervised CNN-LSTM encoder (frozen or fine-tuned).

    model_config: window_size, n_features (the env's), hidden_sizes, and `encoder` (see the
    module docstring). Frozen: the encoder's parameters have `requires_grad=False` and the
    learners leave them out of every optimizer; fine-tuned: they get their own optimizer at
    `encoder_lr` (`encoder_param_groups`).
    """

    def build_encoder(self) -> tuple[int, int]:
        """The supervised encoder (weights + input map loaded), then the fusion MLPs."""
        cfg = self.model_config
        enc = dict(cfg.get(ENCODER_KEY) or {})
        if not enc:
            raise ValueError("PretrainedCNNLSTMModule needs model_config['encoder']")
        self._window, self._n_feat, n_extra = obs_layout(self._obs_dim, cfg)
        n_sup = int(enc["n_features"])
        if self._window != int(enc["window"]) or self._n_feat < n_sup:
            raise ValueError(
                f"encoder expects a {enc['window']} x {n_sup} window, the observation has "
                f"{self._window} x {self._n_feat}"
            )
        self._encoder = SupervisedEncoder(
            n_sup, int(enc["channels"]), int(enc["hidden"]), float(enc["clip"])
        )
        init = enc.get("init")
        with torch.no_grad():
            self._encoder.scale.copy_(torch.tensor(enc["scale"], dtype=torch.float32))
            self._encoder.shift.copy_(torch.tensor(enc["shift"], dtype=torch.float32))
            if init:
                state = {k: torch.tensor(v, dtype=torch.float32) for k, v in init.items()}
                self._encoder.load_state_dict(state, strict=False)
        self.encoder_lr = enc.get("encoder_lr")
        if self.encoder_lr is None:
            self._encoder.requires_grad_(False)
        # columns past the supervised features (`sig_*`) of the last step join the extra state
        self._n_tail = self._n_feat - n_sup
        self._n_extra = n_extra + self._n_tail
        return self.build_fusion(int(enc["hidden"]), default_width=int(enc["hidden"]))

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Supervised encoder over the window, joined with the tail columns and extra state."""
        seq, extra = self.split_window(obs)
        feats = self._encoder(seq)
        if self._n_tail:
            extra = torch.cat([seq[:, -1, self._encoder.n_features :], extra], dim=-1)
        return self.fuse(torch.cat([feats, extra], dim=-1))

    @property
    def frozen_encoder(self) -> bool:
        """True when the encoder is kept as loaded (no optimizer sees it)."""
        return self.encoder_lr is None

    def encoder_param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(the encoder's parameters, every other parameter), in `parameters()` order."""
        enc = {id(p) for p in self._encoder.parameters()}
        params = list(self.parameters())
        return [p for p in params if id(p) in enc], [p for p in params if id(p) not in enc]


def register_optimizers(learner: Any, module_id: str, config: Any, **adam_kwargs: Any) -> bool:
    """Optimizers of a `PretrainedCNNLSTMModule` in a torch learner; False for other modules.

    The non-encoder parameters get RLlib's default optimizer at `config.lr` (as RLlib's own
    `configure_optimizers_for_module`); a fine-tuned encoder its own Adam (`ENCODER_OPTIMIZER`)
    at its `encoder_lr`; a frozen encoder no optimizer at all.
    """
    module = learner.module[module_id]
    module = module.unwrapped() if hasattr(module, "unwrapped") else module
    if not isinstance(module, PretrainedCNNLSTMModule):
        return False
    encoder, rest = module.encoder_param_groups()
    learner.register_optimizer(
        module_id=module_id,
        optimizer=torch.optim.Adam(rest, **adam_kwargs),
        params=rest,
        lr_or_lr_schedule=config.lr,
    )
    if not module.frozen_encoder:
        learner.register_optimizer(
            module_id=module_id,
            optimizer_name=ENCODER_OPTIMIZER,
            optimizer=torch.optim.Adam(encoder, **adam_kwargs),
            params=encoder,
            lr_or_lr_schedule=float(module.encoder_lr),
        )
    return True
