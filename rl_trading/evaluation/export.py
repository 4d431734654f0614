"""ONNX export of an RLModule's deterministic inference path (Gaussian mean / arg-max).

The exported graph maps a float32 observation batch ``[B, obs_dim]`` to env actions exactly
like :func:`policies.inference.compute_actions` with ``explore=False``: for Box actions the
mean is clipped to [-1, 1] and unsquashed to the space bounds; for Discrete actions the arg-max
index (int64). Exported with the TorchScript-based ``torch.onnx.export(dynamo=False)`` (the
dynamo exporter needs onnxscript, which is not a dependency); a TorchScript fallback is offered
for modules ONNX cannot express.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from rl_trading.artifacts import sha256_file
from rl_trading.errors import CheckpointError
from rl_trading.registry import TAG, ModelRegistry, checksum_manifest

if TYPE_CHECKING:
    from rl_trading.config import AppConfig

OPSET = 17


def _deterministic_wrapper(module: Any) -> Any:
    """A torch.nn.Module computing deterministic env actions from observations."""
    import torch  # heavy: torch
    from ray.rllib.core.columns import Columns  # heavy: ray

    space = module.action_space

    class DeterministicPolicy(torch.nn.Module):
        """obs [B, obs_dim] -> deterministic env action (what a backtest executes)."""

        def __init__(self) -> None:
            super().__init__()
            self.module = module
            self.discrete = isinstance(space, gym.spaces.Discrete)
            if not self.discrete:
                self.act_dim = int(np.prod(space.shape))
                bounded = bool(np.all(space.bounded_below & space.bounded_above))
                self.bounded = bounded
                low = np.asarray(space.low, dtype=np.float32).reshape(-1)
                high = np.asarray(space.high, dtype=np.float32).reshape(-1)
                self.register_buffer("low", torch.as_tensor(low if bounded else low * 0))
                self.register_buffer("high", torch.as_tensor(high if bounded else high * 0))

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            out = self.module.forward_inference({Columns.OBS: obs})
            logits = out[Columns.ACTION_DIST_INPUTS]
            if self.discrete:
                return torch.argmax(logits, dim=-1)
            mean = logits[:, : self.act_dim]
            if not self.bounded:
                return mean
            return self.low + (torch.clamp(mean, -1.0, 1.0) + 1.0) * (self.high - self.low) / 2.0

    return DeterministicPolicy().eval()


def export_onnx(module: Any, out: str | Path, opset: int = OPSET) -> Path:
    """Write `module`'s deterministic policy as ONNX (input `obs`, output `action`)."""
    import torch  # heavy: torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _deterministic_wrapper(module)
    obs_dim = int(np.prod(module.observation_space.shape))
    example = torch.zeros((2, obs_dim), dtype=torch.float32)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # The fused transformer fast path has no ONNX symbolic; the math is the same without it.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _export(torch, wrapper, example, out, opset)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    meta = {
        "obs_dim": obs_dim,
        "action_space": repr(module.action_space),
        "module_class": type(module).__name__,
        "opset": opset,
    }
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(meta, indent=2))
    return out


def _export(torch: Any, wrapper: Any, example: Any, out: Path, opset: int) -> None:
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(out),
            input_names=["obs"],
            output_names=["action"],
            dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )


def export_torchscript(module: Any, out: str | Path) -> Path:
    """TorchScript (traced) fallback of the same deterministic policy."""
    import torch  # heavy: torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _deterministic_wrapper(module)
    obs_dim = int(np.prod(module.observation_space.shape))
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, torch.zeros((2, obs_dim), dtype=torch.float32))
    traced.save(str(out))
    return out


def model_identity(source: str | Path, cfg: AppConfig | None = None) -> dict[str, str]:
    """What an export came from: `source` (FAMILY/VERSION of a registered model, else the
    checkpoint's absolute path) and `model_manifest_sha256` (the registry's manifest digest,
    else the sha256 of the checkpoint folder's file checksums). Stored in every ONNX sidecar
    so `paper run --onnx` can refuse files exported from another model."""
    path = Path(str(source)).expanduser()
    if path.exists():
        manifest = json.dumps(checksum_manifest(path), sort_keys=True)
        digest = hashlib.sha256(manifest.encode()).hexdigest()
        return {"source": str(path.resolve()), "model_manifest_sha256": digest}
    rec = ModelRegistry(cfg=cfg).resolve(str(source))
    return {"source": rec.name, "model_manifest_sha256": rec.tags.get(TAG + "manifest_sha256", "")}


def export_policies(
    policy: Any,
    out: str | Path,
    policy_ids: list[str] | None = None,
    check: bool = True,
    identity: dict[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export policies of a loaded model (:class:`rl_trading.inference.Policy`) as ONNX.

    One policy: `out` itself. Several (a hierarchy): `<stem>.<policy_id>.onnx` next to `out`
    and `<stem>.manifest.json` (policy id -> file, observation size, action space, sha256).
    `check`: onnxruntime must match `policy.act` (the backtest's actions) within 1e-5 on 1,000
    random observations, else CheckpointError. Each file's `.json` sidecar records its sha256
    and `identity` (:func:`model_identity`). Existing outputs are refused (one line) unless
    `overwrite`; files are written under temporary names and moved into place only after
    every policy passed its parity check, so a failed export leaves nothing behind.
    """
    out = Path(out)
    ids = list(policy_ids or policy.policy_ids)
    several = len(ids) > 1
    targets = {
        pid: out.with_name(f"{out.stem}.{pid}{out.suffix or '.onnx'}") if several else out
        for pid in ids
    }
    manifest = out.with_name(f"{out.stem}.manifest.json") if several else None
    outputs = [f for t in targets.values() for f in (t, _sidecar(t))] + [manifest] * several
    existing = [str(f) for f in outputs if f is not None and f.exists()]
    if existing and not overwrite:
        raise CheckpointError(
            f"export would overwrite {existing[0]}"
            + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            + "; pass --overwrite to replace"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=out.parent))
    result: dict[str, Any] = {"source": policy.source, "policies": {}}
    try:
        for pid in ids:
            module = policy.module(pid)
            tmp = staging / targets[pid].name
            export_onnx(module, tmp)
            space = module.action_space
            info: dict[str, Any] = {
                "file": str(targets[pid]),
                "bytes": tmp.stat().st_size,
                "sha256": sha256_file(tmp),
                "obs_dim": int(np.prod(module.observation_space.shape)),
                "action_space": repr(space),
            }
            if check:
                dim = info["obs_dim"]
                obs = np.random.default_rng(0).normal(size=(1000, dim)).astype(np.float32)
                want = np.asarray(policy.act(obs, pid))
                got = onnx_actions(tmp, obs).reshape(want.shape)
                err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                if err > 1e-5:
                    raise CheckpointError(f"{pid}: ONNX parity check failed: max |diff| {err:.2e}")
                info["parity_max_abs_diff"] = err
            stamp_export(tmp, identity or {}, pid)
            result["policies"][pid] = info
        for target in targets.values():  # every parity check passed: into place
            os.replace(staging / target.name, target)
            os.replace(_sidecar(staging / target.name), _sidecar(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if manifest is not None:
        doc = {
            **result,
            **(identity or {}),
            "input": "obs: float32 [batch, obs_dim]",
            "output": "action: Box actions clipped to [-1, 1] and scaled to the space's bounds "
            "(Gaussian mean); Discrete: arg-max index (int64)",
        }
        manifest.write_text(json.dumps(doc, indent=2))
        result["manifest"] = str(manifest)
    return result


def stamp_export(path: Path, identity: dict[str, str], policy_id: str | None = None) -> None:
    """Record in `path`'s sidecar its sha256 and the model it was exported from
    (`identity`, :func:`model_identity`)."""
    side = json.loads(_sidecar(path).read_text())
    side.update({"sha256": sha256_file(path), **identity})
    if policy_id is not None:
        side["policy_id"] = policy_id
    _sidecar(path).write_text(json.dumps(side, indent=2))


def check_onnx_file(path: Path, identity: dict[str, str]) -> None:
    """CheckpointError (one line) unless `path` and its sidecar were exported from the model
    `identity` describes (:func:`model_identity`) and the file is unchanged since."""
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        missing = path if not path.is_file() else side
        raise CheckpointError(f"{path}: {missing.name} is missing (re-export it)")
    try:
        meta = json.loads(side.read_text())
    except ValueError:
        raise CheckpointError(f"{path}: unreadable {side.name} (re-export it)") from None
    if not meta.get("model_manifest_sha256") or not meta.get("sha256"):
        raise CheckpointError(
            f"{path}: {side.name} names no source model; re-export it with `rl-trading export onnx`"
        )
    if (meta.get("source"), meta["model_manifest_sha256"]) != (
        identity["source"],
        identity["model_manifest_sha256"],
    ):
        raise CheckpointError(
            f"{path} was exported from {meta.get('source')}, not {identity['source']} "
            "(or from other files of it); re-export it from this model"
        )
    if sha256_file(path) != meta["sha256"]:
        raise CheckpointError(f"{path}: file changed since it was exported (sha256 differs)")


def _sidecar(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def onnx_actions(path: str | Path, obs: np.ndarray) -> np.ndarray:
    """Run an exported policy with onnxruntime on a `[B, obs_dim]` batch."""
    import onnxruntime as ort  # heavy: onnxruntime

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["action"], {"obs": np.asarray(obs, dtype=np.float32)})[0]


def is_module_dir(path: Path) -> bool:
    """An RLModule saved with `save_to_path` (not a whole algorithm checkpoint)."""
    return (
        (path / "class_and_ctor_args.pkl").is_file()
        and not (path / "learner_group").exists()
        and not (path / "rllib_checkpoint.json").exists()
    )


def load_module(path: str | Path, policy_id: str | None = None) -> Any:
    """An RLModule from an RLModule dir, or from an algorithm checkpoint plus `policy_id`."""
    from ray.rllib.core.rl_module.rl_module import RLModule  # heavy: ray

    path = Path(path)
    candidates = [path]
    if policy_id:
        candidates = [
            path / "learner_group" / "learner" / "rl_module" / policy_id,
            path / "rl_module" / policy_id,
            path / policy_id,
            path,
        ]
    for cand in candidates:
        if is_module_dir(cand):
            try:
                module = RLModule.from_checkpoint(str(cand.resolve()))  # relative paths too
            except Exception as exc:  # noqa: BLE001 - corrupt / wrong kind of checkpoint
                raise CheckpointError(f"cannot restore RLModule from {cand}: {exc}") from None
            if hasattr(module, "eval"):
                module.eval()
            return module
    hint = f" policy '{policy_id}'" if policy_id else ""
    raise CheckpointError(f"no RLModule{hint} found under {path}")
