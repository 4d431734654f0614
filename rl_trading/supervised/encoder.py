"""A registered supervised CNN-LSTM as the specialists' encoder (`policy.cnn_lstm_model`).

`resolve_encoder(cfg)` loads the model through the registry (sha256 manifest of the registered
files, `ModelRegistry.load_path`) and the storage layer (`storage._check_files`, the files'
own sha256 in `metadata.json`), then checks its preprocessing against what the specialists
observe: the feature module's columns in order, `train.window_size`, `data.timeframe` and a
scaler over those features. Anything else is a one-line `RLTradingError` before Ray starts.
`encoder_model_config` turns it into the plain-data `model_config["encoder"]` of
`policies.pretrained.PretrainedCNNLSTMModule`, with the env's per-instrument scaler and the
supervised scaler composed into one fixed affine map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rl_trading.data.features import FEATURE_COLUMNS, FeatureScaler
from rl_trading.errors import CheckpointError, ConfigError, RegistryError
from rl_trading.registry import ModelRegistry
from rl_trading.supervised.models import build_cnn_lstm_net
from rl_trading.supervised.storage import METADATA_FILE, _check_files

if TYPE_CHECKING:
    from rl_trading.config import AppConfig

ENCODER_PREFIXES = ("conv.", "lstm.")  # the supervised net's body (its `head` is dropped)


@dataclass
class EncoderSource:
    """A verified supervised CNN-LSTM: its preprocessing, architecture and body weights."""

    name: str  # registered name (resolved from a family or alias)
    version: str  # registry semantic version
    sha256: str  # of its weights file (model.pt)
    features: list[str]
    window: int
    timeframe: str
    channels: int
    hidden: int
    scaler: FeatureScaler
    state: dict[str, Any] = field(repr=False)  # conv.* / lstm.* tensors

    @property
    def n_features(self) -> int:
        """Input features of the network."""
        return len(self.features)


def encoder_lineage(source: EncoderSource, encoder_lr: float | None) -> dict[str, Any]:
    """What a checkpoint and the registry record of the encoder: which version, frozen or not."""
    return {
        "name": source.name,
        "version": source.version,
        "sha256": source.sha256,
        "mode": "frozen" if encoder_lr is None else "fine_tuned",
        "encoder_lr": encoder_lr,
    }


def _load_files(folder: Path, name: str) -> tuple[dict, dict, FeatureScaler, dict]:
    """(metadata, net config, scaler, state dict) of a saved CNN-LSTM folder, sha256-checked."""
    import torch  # heavy: torch

    try:
        meta = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"'{name}': unreadable {METADATA_FILE} ({exc})") from None
    if meta.get("model_type") != "cnn_lstm":
        raise RegistryError(
            f"'{name}' is a {meta.get('model_type', 'unknown')} model, not a supervised CNN-LSTM"
        )
    _check_files(folder, meta)  # CheckpointError: a file missing or changed
    try:
        net_cfg = json.loads((folder / "net_config.json").read_text())
        scaler = FeatureScaler.from_dict(json.loads((folder / "scaler.json").read_text()))
        state = torch.load(folder / "model.pt", weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a corrupt model
        raise CheckpointError(f"'{name}': corrupt model files ({type(exc).__name__})") from None
    return meta, net_cfg, scaler, state


def load_encoder(name: str, cfg: AppConfig, tracking_uri: str | None = None) -> EncoderSource:
    """The registered CNN-LSTM `name` (name, family or `@alias`), every file sha256-verified."""
    registry = ModelRegistry(tracking_uri, cfg=cfg)
    rec = registry.resolve(name)  # RegistryError: unknown name
    if rec.kind != "supervised":
        raise RegistryError(f"'{name}' is a {rec.kind} model ({rec.model_type}), not a CNN-LSTM")
    folder = registry.load_path(rec.name)  # RegistryError: manifest mismatch
    meta, net_cfg, scaler, state = _load_files(folder, rec.name)
    params = dict(net_cfg.get("params") or {})
    try:
        n_feat, channels, hidden = (
            int(net_cfg["n_features"]),
            int(params["channels"]),
            int(params["hidden"]),
        )
        net = build_cnn_lstm_net(n_feat, channels, hidden)
        net.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"'{rec.name}': weights do not fit its net config ({first})"
        ) from None
    features = list(meta.get("features") or [])
    if len(features) != n_feat:
        raise CheckpointError(
            f"'{rec.name}': {len(features)} feature names for a {n_feat}-feature network"
        )
    if scaler.mean_ is None or len(scaler.mean_) != n_feat or len(scaler.std_) != n_feat:
        raise CheckpointError(f"'{rec.name}': its scaler does not cover its {n_feat} features")
    return EncoderSource(
        name=rec.name,
        version=rec.version,
        sha256=str(meta.get("files", {}).get("model.pt", "")),
        features=features,
        window=int(params.get("window", 0)),
        timeframe=str(meta.get("timeframe", "")),
        channels=channels,
        hidden=hidden,
        scaler=scaler,
        state={k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)},
    )


def check_encoder(source: EncoderSource, cfg: AppConfig) -> None:
    """ConfigError unless the specialists observe what the CNN-LSTM was trained on."""
    what = f"--cnn-lstm-model {source.name}"
    env_features = list(FEATURE_COLUMNS)
    if source.features != env_features:
        diff = next(
            (
                i
                for i, (a, b) in enumerate(zip(source.features, env_features, strict=False))
                if a != b
            ),
            min(len(source.features), len(env_features)),
        )
        raise ConfigError(
            f"{what}: its features differ from the observation's at position {diff} "
            f"({len(source.features)} model features, {len(env_features)} observed)"
        )
    if source.window != cfg.train.window_size:
        raise ConfigError(
            f"{what}: trained on {source.window}-bar windows, the observation has "
            f"train.window_size={cfg.train.window_size}"
        )
    if source.timeframe != cfg.data.timeframe:
        raise ConfigError(
            f"{what}: trained on {source.timeframe} bars, the data are {cfg.data.timeframe}"
        )
    if cfg.phases.algorithm != "ppo":
        raise ConfigError(f"{what}: the pretrained encoder needs phases.algorithm=ppo")
    if cfg.phases.shared_specialist_policy:
        raise ConfigError(
            f"{what}: not with phases.shared_specialist_policy (one scaler map per instrument)"
        )


def resolve_encoder(cfg: AppConfig, tracking_uri: str | None = None) -> EncoderSource | None:
    """The configured encoder, loaded and checked (None without `policy.cnn_lstm_model`)."""
    name = cfg.policy.cnn_lstm_model
    if not name:
        return None
    source = load_encoder(name, cfg, tracking_uri)
    check_encoder(source, cfg)
    return source


def encoder_model_config(
    source: EncoderSource, env_scaler: FeatureScaler, encoder_lr: float | None
) -> dict[str, Any]:
    """`model_config["encoder"]` for one specialist: plain data, rebuilds the module alone.

    The env feeds `z_env = (x - m_env) / s_env`; the network wants `(x - m_sup) / s_sup`
    clipped at its scaler's clip, i.e. `z_env * s_env / s_sup + (m_env - m_sup) / s_sup`
    (exact wherever the env's own clip did not bind).
    """
    n = source.n_features
    m_env = np.asarray(env_scaler.mean_, dtype=np.float64)[:n]
    s_env = np.asarray(env_scaler.std_, dtype=np.float64)[:n]
    m_sup = np.asarray(source.scaler.mean_, dtype=np.float64)
    s_sup = np.asarray(source.scaler.std_, dtype=np.float64)
    if len(m_env) != n or (env_scaler.columns and list(env_scaler.columns)[:n] != source.features):
        raise ConfigError(f"--cnn-lstm-model {source.name}: the env's scaler has other features")
    return {
        "source": source.name,
        "version": source.version,
        "sha256": source.sha256,
        "n_features": n,
        "window": source.window,
        "channels": source.channels,
        "hidden": source.hidden,
        "clip": float(source.scaler.clip),
        "scale": (s_env / s_sup).tolist(),
        "shift": ((m_env - m_sup) / s_sup).tolist(),
        "encoder_lr": encoder_lr,
        "init": {k: v.tolist() for k, v in source.state.items()},
    }
