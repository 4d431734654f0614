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

from rl_trading.artifacts import (
    CONFIG_FILE,
    PREPROCESSING_FILE,
    verify_checkpoint,
    write_manifest,
)
from rl_trading.errors import CheckpointError

MODULE_COMPONENT = "learner_group/learner/rl_module"
# Seconds to wait for the env runners to take the weights of a restore. RLlib's restore
# pushes them fire-and-forget, one request in flight per runner: a restore's push sent while
# the previous one is still in flight is dropped, and the runners would sample the next
# iteration with older weights (a timing-dependent phase start).
RESTORE_SYNC_TIMEOUT_S = 120.0


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
    from ray.rllib.algorithms.algorithm import Algorithm  # heavy: ray

    path = check_checkpoint(path)
    verify_checkpoint(path, action="cannot restore algorithm from")
    from rl_trading.training.algo_config import algo_logdir  # heavy: ray, torch

    try:  # the Algorithm's (empty) Trainable log folder goes to the temp dir, not ~/ray_results
        with algo_logdir(Path(tempfile.gettempdir()) / "rl_trading_rllib"):
            return Algorithm.from_checkpoint(str(path.resolve()))
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise CheckpointError(f"cannot restore algorithm from {path}: {_short(exc)}") from None


def load_module(path: str | Path, policy_id: str) -> Any:
    """One policy's RLModule from an algorithm checkpoint (`RLModule.from_checkpoint`)."""
    from ray.rllib.core.rl_module.rl_module import RLModule  # heavy: ray

    mod_path = check_checkpoint(path, policy_id)
    verify_checkpoint(path)
    try:
        return RLModule.from_checkpoint(str(mod_path.resolve()))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"cannot restore policy '{policy_id}' from {path}: {_short(exc)}"
        ) from None


def sync_env_runners(algo: Any) -> None:
    """Give every remote env runner the learners' current weights before the next sample.

    `EnvRunnerGroup.sync_weights` first waits (up to `RESTORE_SYNC_TIMEOUT_S`) for the pushes
    still in flight, then sends this one; twice, so the second waits for the first. Actor
    calls run in order, so the next sample runs on these weights.
    """
    group = getattr(algo, "env_runner_group", None)
    if group is None or not group.num_remote_env_runners():
        return  # a local env runner takes a restore's weights synchronously
    for _ in range(2):
        group.sync_weights(
            from_worker_or_learner_group=algo.learner_group,
            inference_only=True,
            timeout_seconds=RESTORE_SYNC_TIMEOUT_S,
        )


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
    sync_env_runners(algo)


def restore_algorithm_state(algo: Any, path: str | Path) -> None:
    """Restore a whole algorithm state (resume) into an already-built `algo`."""
    path = check_checkpoint(path)
    verify_checkpoint(path, action="cannot resume from")
    try:
        algo.restore_from_path(str(path.resolve()))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot resume from {path}: {_short(exc)}") from None
    sync_env_runners(algo)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[-1] if text else ''}"[:300]
