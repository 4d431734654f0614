"""The one place a paper session turns `--model NAME` into a policy and its config.

It calls the same registry / backtest loading API as `rl-trading backtest --model`
(`ModelRegistry.load_training_config` for the stored training config, then
`evaluation.backtest.load_policy` for the verified modules and their preprocessing), so a
change of registry naming is followed here by re-pointing this one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies import compute_actions, to_env_action
from policies.base import ActorCriticModule
from rl_trading.artifacts import stored_config
from rl_trading.config import AppConfig, load_config
from rl_trading.errors import CheckpointError
from rl_trading.evaluation.backtest import PolicyBundle, load_policy, pin_calendar
from rl_trading.evaluation.export import check_onnx_file, model_identity
from rl_trading.registry import ModelRegistry


@dataclass
class ResolvedModel:
    """A policy ready to trade: its modules, stored preprocessing and the config to run with."""

    name: str
    bundle: PolicyBundle
    cfg: AppConfig

    @property
    def symbols(self) -> list[str]:
        """The instruments the policy was trained on (its stored preprocessing, else config)."""
        stored = self.bundle.preprocessing.get("symbols")
        return [str(s) for s in (stored or self.cfg.data.symbols)]

    @property
    def timeframe(self) -> str:
        return str(self.bundle.preprocessing.get("timeframe") or self.cfg.data.timeframe)


class OnnxPolicy:
    """One exported policy (`rl-trading export onnx`) run with onnxruntime: the same
    deterministic actions as its RLModule (the export checks parity to 1e-5)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort  # optional dependency, only for --onnx

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def act(self, obs: Any) -> Any:
        return self.session.run(["action"], {"obs": np.asarray(obs, dtype=np.float32)})[0]


class TorchPolicy:
    """One RLModule acting under `torch.inference_mode`, switched to eval mode once (RLlib's
    `forward_inference` otherwise walks every submodule to eval and back on each call), with
    no Algorithm and no connector pipeline. The project's actor-critic modules act through
    their `deterministic_actions` (the actor head on the actor embedding: the same values as
    their `forward_inference`, without its dict plumbing); any other module through
    `compute_actions`, as the backtest acts."""

    def __init__(self, module: Any) -> None:
        module.eval()
        self.module = module
        self.space = module.action_space
        self.direct = (
            isinstance(module, ActorCriticModule)
            and type(module)._forward is ActorCriticModule._forward
            and module.fast_acting
        )

    def act(self, obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            if not self.direct:
                return compute_actions(self.module, obs)
            actions = self.module.deterministic_actions(torch.from_numpy(obs))
        return to_env_action(actions.numpy(), self.space)


def acting_bundle(bundle: PolicyBundle) -> PolicyBundle:
    """`bundle` with every torch module wrapped in `TorchPolicy` (ONNX policies and other
    objects that `act` themselves are kept): what a paper session acts with."""
    modules = {pid: m if hasattr(m, "act") else TorchPolicy(m) for pid, m in bundle.modules.items()}
    return PolicyBundle(modules, bundle.preprocessing, bundle.source)


def use_onnx(bundle: PolicyBundle, folder: Path, identity: dict[str, str]) -> None:
    """Swap every module of `bundle` for `<folder>/<policy id>.onnx`, each checked against
    the model it stands for (`identity`, :func:`model_identity`: source and manifest digest
    in its sidecar, its own sha256): one-line CheckpointError for a missing file, one
    exported from another model or edited since."""
    folder = Path(folder)
    missing = [p for p in bundle.modules if not (folder / f"{p}.onnx").is_file()]
    if missing:
        raise CheckpointError(
            f"--onnx {folder}: no {', '.join(f'{p}.onnx' for p in missing)} (export each policy "
            "with `rl-trading export onnx --policy ID --out DIR/ID.onnx`)"
        )
    for p in bundle.modules:
        check_onnx_file(folder / f"{p}.onnx", identity)
    bundle.modules = {p: OnnxPolicy(folder / f"{p}.onnx") for p in bundle.modules}


def resolve_model(
    name: str,
    config: Path | None = None,
    sets: list[str] | None = None,
    onnx: Path | None = None,
) -> ResolvedModel:
    """Load a registered model (or a checkpoint path) with its stored training config
    (`-c` replaces it, `--set` goes on top), as `backtest --model` does; `onnx`: act with its
    exported policies in that folder instead. RegistryError (one line) for an unknown name;
    CheckpointError for a policy the paper loop cannot run."""
    base = load_config(config, sets or [])
    cfg = base
    if config is None:
        stored: dict[str, Any] | None
        if Path(name).expanduser().exists():
            stored = stored_config(name)
        else:
            stored = ModelRegistry(cfg=base).load_training_config(name)
        if stored:
            stored = dict(stored)
            stored["tracking"] = base.model_dump(mode="json")["tracking"]
            stored["paper"] = base.model_dump(mode="json")["paper"]
            cfg = load_config(None, sets or [], extra=stored)
    bundle = load_policy(name, cfg)
    if not bundle.hierarchical:
        raise CheckpointError(
            f"model '{name}' is a single-instrument policy; paper trading runs hierarchical "
            "policies (specialists + meta)"
        )
    if onnx is not None:
        use_onnx(bundle, onnx, model_identity(name, cfg))
    cfg, _ = pin_calendar(cfg, bundle.preprocessing)  # bars per year as its backtest has them
    return ResolvedModel(name=bundle.source or name, bundle=bundle, cfg=cfg)
