"""The run-state file and run-dir lock: phases done, iterations, last and best checkpoints.

`state.json` stores checkpoint paths relative to the run dir (a copied run dir resumes); in
memory they are absolute. Its counters always describe the weights of `last_checkpoint`
(or a fresh start when there is none), see `PhaseState.rewind`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rl_trading.errors import RunDirError

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
_PATH_KEYS = ("last_checkpoint", "best_checkpoint", "checkpoint_best_checkpoint")
_STATUSES = ("pending", "running", "done")


@dataclass
class PhaseState:
    """Progress of one phase."""

    status: str = "pending"  # pending | running | done
    iteration: int = 0
    total_iterations: int = 0
    env_steps: int = 0
    last_checkpoint: str | None = None
    checkpoint_iteration: int = 0  # iteration the last checkpoint holds (resume point)
    checkpoint_env_steps: int = 0  # env steps the last checkpoint holds
    best_checkpoint: str | None = None
    best_val_sharpe: float | None = None
    # every validation Sharpe the best checkpoint was chosen among (trials, for the DSR)
    val_sharpes: list[float] = field(default_factory=list)
    last_val: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    # the selection state as of the last checkpoint (None: a state file from before it was
    # kept), restored by `rewind` so redone iterations are not validated and counted twice
    checkpoint_val_count: int | None = None
    checkpoint_best_checkpoint: str | None = None
    checkpoint_best_val_sharpe: float | None = None
    checkpoint_last_val: dict[str, float] = field(default_factory=dict)

    def commit_selection(self) -> None:
        """Remember the selection state (validation Sharpes, best) as of this checkpoint."""
        self.checkpoint_val_count = len(self.val_sharpes)
        self.checkpoint_best_checkpoint = self.best_checkpoint
        self.checkpoint_best_val_sharpe = self.best_val_sharpe
        self.checkpoint_last_val = dict(self.last_val)

    def rewind(self) -> bool:
        """Set the counters and the selection state back to what the last checkpoint holds
        (a fresh start without one), so a resume redoes every unsaved iteration and counts
        its validations once; True when there is a checkpoint to restore."""
        if self.last_checkpoint:
            self.iteration = self.checkpoint_iteration
            self.env_steps = self.checkpoint_env_steps
            if self.checkpoint_val_count is not None:
                del self.val_sharpes[self.checkpoint_val_count :]
                self.best_checkpoint = self.checkpoint_best_checkpoint
                self.best_val_sharpe = self.checkpoint_best_val_sharpe
                self.last_val = dict(self.checkpoint_last_val)
            return True
        self.iteration = self.env_steps = self.checkpoint_iteration = 0
        self.checkpoint_env_steps = 0
        self.val_sharpes = []
        self.best_checkpoint = self.best_val_sharpe = None
        self.last_val = {}
        self.commit_selection()
        return False


_FIELDS = {f.name for f in dataclasses.fields(PhaseState)}


@dataclass
class RunState:
    """All phases of one run directory, persisted as JSON after every change."""

    run_dir: Path
    phases: dict[str, PhaseState] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunState:
        """Read `run_dir/state.json`, or a fresh state when absent; RunDirError (one line)
        for a file that is unreadable, not JSON, or has unknown keys or wrong types."""
        run_dir = Path(run_dir).resolve()
        path = run_dir / STATE_FILE
        if not path.is_file():
            return cls(run_dir=run_dir)
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            why = f"{exc.__class__.__name__}: {exc}"[:200]
            raise RunDirError(f"{path} is corrupt ({why})") from None
        return cls(run_dir=run_dir, phases=_parse_phases(raw, path, run_dir))

    def selection_trials(self) -> list[float]:
        """Validation Sharpes of every checkpoint evaluated for selection, all phases."""
        return [s for name in sorted(self.phases) for s in self.phases[name].val_sharpes]

    def phase(self, name: str) -> PhaseState:
        """State of `name`, created on first use."""
        return self.phases.setdefault(name, PhaseState())

    def save(self) -> Path:
        """Write atomically (temp file + rename), checkpoint paths relative to the run dir."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / STATE_FILE
        tmp = path.with_suffix(".json.tmp")
        phases = {}
        for name, ps in self.phases.items():
            entry = asdict(ps)
            for key in _PATH_KEYS:
                if entry[key]:
                    entry[key] = _relative(entry[key], self.run_dir)
            phases[name] = entry
        tmp.write_text(json.dumps({"phases": phases}, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path


def _relative(path: str, run_dir: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return str(p.relative_to(run_dir))
    except ValueError:  # outside the run dir (e.g. a phase seeded from elsewhere): keep as is
        return path


def _parse_phases(raw: Any, path: Path, run_dir: Path) -> dict[str, PhaseState]:
    def bad(why: str) -> RunDirError:
        return RunDirError(f"{path} is not a valid run state: {why}")

    if not isinstance(raw, dict) or set(raw) - {"phases"}:
        keys = sorted(set(raw) - {"phases"}) if isinstance(raw, dict) else type(raw).__name__
        raise bad(f"unexpected top level {keys}")
    phases = raw.get("phases", {})
    if not isinstance(phases, dict):
        raise bad("'phases' is not a mapping")
    out = {}
    for name, entry in phases.items():
        if name not in ("phase1", "phase2", "phase3") or not isinstance(entry, dict):
            raise bad(f"unknown phase entry '{name}'")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise bad(f"unknown key(s) {', '.join(unknown)} in {name}")
        try:
            ps = PhaseState(**entry)
        except TypeError as exc:
            raise bad(f"{name}: {exc}") from None
        ints = ("iteration", "total_iterations", "env_steps", "checkpoint_iteration")
        for key in (*ints, "checkpoint_env_steps"):
            value = getattr(ps, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(f"{name}.{key} must be a non-negative integer, not {value!r}")
        count = ps.checkpoint_val_count
        if count is not None and (
            not isinstance(count, int) or not 0 <= count <= len(ps.val_sharpes)
        ):
            raise bad(
                f"{name}.checkpoint_val_count must be 0..{len(ps.val_sharpes)}, not {count!r}"
            )
        if ps.status not in _STATUSES:
            raise bad(f"{name}.status must be one of {', '.join(_STATUSES)}, not {ps.status!r}")
        for key in _PATH_KEYS:
            value = getattr(ps, key)
            if value is not None and not isinstance(value, str):
                raise bad(f"{name}.{key} must be a path, not {value!r}")
            if value:
                setattr(ps, key, str(run_dir / value))  # absolute paths stay absolute
        out[name] = ps
    return out


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive OS lock on `run_dir/.lock` (pid, host, start time written in it);
    the kernel releases it when the process dies. RunDirError when another run holds it or
    the run dir is not writable."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise RunDirError(
            f"run dir {run_dir} is not writable ({exc.strerror or exc.__class__.__name__})"
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirError(
                f"run dir {run_dir} is in use by {holder}; wait for it or use another --run-dir"
            ) from None
        try:
            _probe_writable(run_dir)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
            handle.flush()
            yield path
        finally:
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()  # emptied, never deleted (deleting races with a waiter)
                handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def _probe_writable(run_dir: Path) -> None:
    probe = run_dir / ".write_probe"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(
            f"run dir {run_dir} is not writable ({exc.strerror or exc.__class__.__name__})"
        ) from None
