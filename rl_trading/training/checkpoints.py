"""Saving, checking and restoring checkpoints: algorithms, single policies, weight transfer.

Every checkpoint the project saves carries what it was trained with (`training_config.json`:
config with credentials redacted + data reference; `preprocessing.json`: features, window,
fitted scalers, training range) and a sha256 manifest of all its files
(`checkpoint_manifest.json`), verified before anything in it is unpickled (resume, restore,
backtest). A checkpoint folder is pickled code: only load ones from trusted sources; the
manifest catches corruption and edits after saving, not a forged folder with its own manifest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rl_trading.errors import CheckpointError
from rl_trading.registry import sha256_file as _sha256  # the one file hash

MODULE_COMPONENT = "learner_group/learner/rl_module"
MANIFEST_FILE = "checkpoint_manifest.json"
CONFIG_FILE = "training_config.json"
PREPROCESSING_FILE = "preprocessing.json"


def _files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    )


def write_manifest(path: str | Path) -> Path:
    """Write the sha256 manifest of every file under a checkpoint folder; returns its path."""
    root = Path(path)
    files = {rel: _sha256(root / rel) for rel in _files(root)}
    out = root / MANIFEST_FILE
    out.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True))
    return out


def find_checkpoint_root(path: str | Path) -> Path | None:
    """The folder holding the manifest for `path` (itself or a parent, e.g. of a module dir)."""
    path = Path(path).expanduser().resolve()
    for cand in (path, *list(path.parents)[:5]):
        if (cand / MANIFEST_FILE).is_file():
            return cand
    return None


def verify_checkpoint(
    path: str | Path, required: bool = False, action: str = "checkpoint"
) -> Path | None:
    """Check the files of the checkpoint holding `path` against its manifest; one-line
    CheckpointError (`"<action> <root>: file changed since it was saved: <file>"`, likewise
    missing or added). Without a manifest: CheckpointError when `required`, else None
    (checkpoints saved by other tools). Returns the checkpoint root."""
    root = find_checkpoint_root(path)
    if root is None:
        if required:
            raise CheckpointError(f"{action} {path}: no {MANIFEST_FILE}, cannot verify it")
        return None
    try:
        expected = json.loads((root / MANIFEST_FILE).read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{action} {root}: unreadable {MANIFEST_FILE} ({exc})") from None
    present = set(_files(root))
    for rel, digest in sorted(expected.items()):
        if rel not in present:
            raise CheckpointError(f"{action} {root}: file missing since it was saved: {rel}")
        if _sha256(root / rel) != digest:
            raise CheckpointError(f"{action} {root}: file changed since it was saved: {rel}")
    extra = sorted(present - set(expected))
    if extra:
        raise CheckpointError(f"{action} {root}: file added since it was saved: {extra[0]}")
    return root


def read_metadata(path: str | Path) -> dict[str, Any]:
    """What a project checkpoint was trained with: {"config", "data_ref", "preprocessing"}
    (empty dict for checkpoints without it). `path` may be a module dir inside it."""
    path = Path(path).expanduser().resolve()
    out: dict[str, Any] = {}
    for cand in (path, *list(path.parents)[:5]):
        if (cand / CONFIG_FILE).is_file():
            out.update(json.loads((cand / CONFIG_FILE).read_text()))
            if (cand / PREPROCESSING_FILE).is_file():
                out["preprocessing"] = json.loads((cand / PREPROCESSING_FILE).read_text())
            break
    return out


def check_checkpoint(path: str | Path, policy_id: str | None = None) -> Path:
    """Path of a readable algorithm checkpoint (or one policy in it); CheckpointError if not."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint is not a directory: {path}")
    if policy_id is not None:
        mod = path / MODULE_COMPONENT / policy_id
        if not mod.is_dir():
            raise CheckpointError(f"checkpoint {path} has no policy '{policy_id}'")
        return mod
    if (
        not (path / "rllib_checkpoint.json").is_file()
        and not (path / "class_and_ctor_args.pkl").is_file()
    ):
        raise CheckpointError(f"not an RLlib checkpoint (no rllib_checkpoint.json): {path}")
    return path


def checkpoint_policies(path: str | Path) -> list[str]:
    """Policy ids stored in an algorithm checkpoint."""
    mod_dir = check_checkpoint(path) / MODULE_COMPONENT
    if not mod_dir.is_dir():
        raise CheckpointError(f"checkpoint {path} holds no RL modules")
    return sorted(p.name for p in mod_dir.iterdir() if p.is_dir())


# Keys of configs stored by earlier versions, and what replaced them: dropped on reading a
# stored config (the replacement is already in it), refused with a one-line error in a user's
# config (rl_trading.config).
MOVED_KEYS = {("train", "initial_balance"): "env.initial_capital",
              ("train", "trading_fee"): "env.transaction_cost"}  # fmt: skip


def migrate_stored_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored training config in today's keys: keys moved since it was saved are dropped
    (their concept has one key now, already present in the stored config)."""
    for (section, key), _new in MOVED_KEYS.items():
        if isinstance(raw.get(section), dict):
            raw[section].pop(key, None)
    return raw


def stored_config(path: str | Path) -> dict[str, Any] | None:
    """The training config saved with a checkpoint (or model folder), ready for
    `load_config(extra=...)`: a redacted database URL is dropped (RL_TRADING_DB_URL then
    supplies it). None when the checkpoint carries none."""
    path = Path(path).expanduser()
    if not path.exists():
        return None
    raw = read_metadata(path).get("config")
    if not raw:
        return None
    raw = migrate_stored_config(json.loads(json.dumps(raw)))
    data = raw.get("data") or {}
    if data.get("db_url") and "***" in str(data["db_url"]):
        data["db_url"] = None
    return raw


def save_algorithm(algo: Any, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save an algorithm to `path` (replacing what was there) atomically via a temp folder,
    with `metadata` (`EnvFactory.metadata`: config, preprocessing, data reference) and the
    sha256 manifest of every file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    algo.save_to_path(str(tmp.resolve()))
    if metadata:
        meta = {k: v for k, v in metadata.items() if k != "preprocessing"}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        if metadata.get("preprocessing"):
            (tmp / PREPROCESSING_FILE).write_text(
                json.dumps(metadata["preprocessing"], indent=1, sort_keys=True, default=str)
            )
    write_manifest(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_algorithm(path: str | Path) -> Any:
    """`Algorithm.from_checkpoint` with a one-line CheckpointError for bad checkpoints."""
    from ray.rllib.algorithms.algorithm import Algorithm

    path = check_checkpoint(path)
    verify_checkpoint(path, action="cannot restore algorithm from")
    from rl_trading.training.algo_config import algo_logdir

    try:  # the Algorithm's (empty) Trainable log folder goes to the temp dir, not ~/ray_results
        with algo_logdir(Path(tempfile.gettempdir()) / "rl_trading_rllib"):
            return Algorithm.from_checkpoint(str(path.resolve()))
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise CheckpointError(f"cannot restore algorithm from {path}: {_short(exc)}") from None


def load_module(path: str | Path, policy_id: str) -> Any:
    """One policy's RLModule from an algorithm checkpoint (`RLModule.from_checkpoint`)."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    mod_path = check_checkpoint(path, policy_id)
    verify_checkpoint(path)
    try:
        return RLModule.from_checkpoint(str(mod_path.resolve()))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"cannot restore policy '{policy_id}' from {path}: {_short(exc)}"
        ) from None


def restore_policies(algo: Any, path: str | Path, policy_ids: list[str]) -> None:
    """Load these policies' weights from a checkpoint into `algo` (learners and env runners)."""
    verify_checkpoint(check_checkpoint(path))
    for pid in policy_ids:
        mod_path = check_checkpoint(path, pid)
        component = f"{MODULE_COMPONENT}/{pid}"
        try:
            algo.restore_from_path(str(mod_path.resolve()), component=component)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"cannot load policy '{pid}' from {path}: {_short(exc)}"
            ) from None


def restore_algorithm_state(algo: Any, path: str | Path) -> None:
    """Restore a whole algorithm state (resume) into an already-built `algo`."""
    path = check_checkpoint(path)
    verify_checkpoint(path, action="cannot resume from")
    try:
        algo.restore_from_path(str(path.resolve()))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot resume from {path}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[-1] if text else ''}"[:300]
