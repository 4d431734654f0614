"""The files every saved policy carries, readable without Ray: the sha256 manifest and the
training config / preprocessing stored with a checkpoint or a registered model folder.

Base layer: the training checkpoints, the model registry and the supervised model store all
write and verify these files, so they live below all three.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from rl_trading.errors import CheckpointError

MANIFEST_FILE = "checkpoint_manifest.json"
CONFIG_FILE = "training_config.json"
PREPROCESSING_FILE = "preprocessing.json"
logger = logging.getLogger(__name__)


def _files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    )


def write_manifest(path: str | Path) -> Path:
    """Write the sha256 manifest of every file under a checkpoint folder; returns its path."""
    root = Path(path)
    files = {rel: sha256_file(root / rel) for rel in _files(root)}
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


def project_metadata_file(path: str | Path) -> Path | None:
    """The `training_config.json` / `preprocessing.json` of the project checkpoint holding
    `path` (itself or a parent, like the manifest), None for a folder without them."""
    path = Path(path).expanduser().resolve()
    for cand in (path, *list(path.parents)[:5]):
        for name in (CONFIG_FILE, PREPROCESSING_FILE):
            if (cand / name).is_file():
                return cand / name
    return None


def verify_checkpoint(
    path: str | Path, required: bool | None = None, action: str = "checkpoint"
) -> Path | None:
    """Check the files of the checkpoint holding `path` against its manifest; one-line
    CheckpointError (`"<action> <root>: file changed since it was saved: <file>"`, likewise
    missing or added). Returns the checkpoint root.

    Without a manifest: `required` None (the default) refuses a folder carrying the project's
    metadata (a project checkpoint always has a manifest, so it was deleted) and loads any
    other (an RLlib checkpoint saved by another tool) with a one-line warning; True always
    refuses; False loads it silently (files already verified otherwise, e.g. by the registry).
    """
    root = find_checkpoint_root(path)
    if root is None:
        meta = project_metadata_file(path)
        if required or (required is None and meta is not None):
            why = f" although it carries {meta.name}" if meta is not None else ""
            raise CheckpointError(f"{action} {path}: no {MANIFEST_FILE}{why}, cannot verify it")
        if required is None:
            logger.warning("%s: no %s (not saved by rl-trading), unverified", path, MANIFEST_FILE)
        return None
    try:
        expected = json.loads((root / MANIFEST_FILE).read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{action} {root}: unreadable {MANIFEST_FILE} ({exc})") from None
    present = set(_files(root))
    for rel, digest in sorted(expected.items()):
        if rel not in present:
            raise CheckpointError(f"{action} {root}: file missing since it was saved: {rel}")
        if sha256_file(root / rel) != digest:
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


# Keys of configs stored by earlier versions, and what replaced them: dropped on reading a
# stored config (the replacement is already in it), refused with a one-line error in a user's
# config (rl_trading.config).
# Keys that nothing ever read name the key that does the job (None: no such key).
MOVED_KEYS: dict[tuple[str, str], str | None] = {
    ("train", "initial_balance"): "env.initial_capital",
    ("train", "trading_fee"): "env.transaction_cost",
    ("train", "gamma"): "ppo.gamma",
    ("train", "hidden_size"): "policy.hidden_sizes",
    ("train", "num_parallel"): "resources.num_env_runners",
    ("train", "tune_trials"): "tuning.n_trials",
    ("tracking", "artifact_location"): None,
    ("evaluation", "accuracy_excellent"): "evaluation.accuracy_edge_excellent",
    ("evaluation", "accuracy_poor"): "evaluation.accuracy_edge_excellent",
}


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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
