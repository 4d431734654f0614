"""Library output off the console: Ray, RLlib, Tune, MLflow and C++ core logs go to a file.

The CLI shows its own progress, tables and one-line errors. Everything the libraries write to
stderr (Python logging and warnings, and C++ lines such as ``core_worker.cc``, which bypass
Python) goes to ``<run_dir>/logs/library.log`` once a command knows its run dir
(:func:`attach_run_dir`), before that to a temporary file that is then moved there; commands
without a run dir keep it (in the temp folder) only when they fail. ``rl-trading --verbose`` (or
``RL_TRADING_VERBOSE=1``, or ``RL_TRADING_DEBUG=1``) leaves the console as the libraries make it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rl_trading.cli.common import err_console

LOG_NAME = "library.log"


@dataclass
class _Routing:
    terminal: Any  # the stderr the user sees (our own error lines go there)
    original: Any  # sys.stderr as it was
    saved_fd: int  # a duplicate of the original fd 2, restored at the end
    log: IO[str]
    path: Path
    attached: bool = False


_active: _Routing | None = None


def verbose_requested() -> bool:
    """--verbose (sets RL_TRADING_VERBOSE=1) or RL_TRADING_DEBUG=1: libraries talk freely."""
    return "1" in (os.environ.get("RL_TRADING_VERBOSE"), os.environ.get("RL_TRADING_DEBUG"))


def routed() -> bool:
    """True while library output goes to the log file."""
    return _active is not None


def log_path() -> Path | None:
    """Where library output goes now (None when it goes to the console)."""
    return _active.path if _active is not None else None


def _point_stderr_at(stream: IO[str]) -> None:
    stream.flush()
    os.dup2(stream.fileno(), 2)  # C/C++ code and child processes write to fd 2
    sys.stderr = stream  # Python logging handlers and warnings made from now on


def start() -> None:
    """Send library output to a temporary log file (no-op when verbose or already routed)."""
    global _active
    if _active is not None or verbose_requested():
        return

    # Tune's new console output prints its experiment banner and TensorBoard hints with print()
    # whatever the verbosity; the classic reporter prints nothing at verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RL_TRADING_QUIET_WORKERS", "1")
    terminal: Any = sys.stderr
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): leave it alone
        return
    try:
        on_fd2 = sys.stderr.fileno() == 2
    except (OSError, ValueError, AttributeError):  # e.g. a capture buffer: keep writing to it
        on_fd2 = False
    if on_fd2:  # fd 2 is about to become the log: our own lines go to a copy of the terminal
        terminal = os.fdopen(saved, "w", buffering=1, closefd=False, encoding=sys.stderr.encoding)
    fd, name = tempfile.mkstemp(prefix="rl-trading-", suffix=".log")
    log = os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")
    _active = _Routing(terminal, sys.stderr, saved, log, Path(name))
    err_console.file = terminal
    _point_stderr_at(log)


def attach_run_dir(run_dir: str | Path) -> Path | None:
    """Continue the log in `<run_dir>/logs/library.log` (what was logged so far moves along)."""
    if _active is None:
        return None
    target = Path(run_dir) / "logs" / LOG_NAME
    if _active.path == target.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    new = open(target, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    _active.log.flush()
    new.write(Path(_active.path).read_text(encoding="utf-8", errors="replace"))
    old, old_path, was_attached = _active.log, _active.path, _active.attached
    _point_stderr_at(new)
    _active.log, _active.path, _active.attached = new, target.resolve(), True
    old.close()
    if not was_attached:
        Path(old_path).unlink(missing_ok=True)
    return target


def stop(failed: bool = False) -> Path | None:
    """Give stderr back to the console; returns where the log was kept (None: not kept).

    A log never attached to a run dir is kept (in the temp folder) only when the command
    failed and something was logged; `failed` also names it on the console.
    """
    global _active
    if _active is None:
        return None

    state, _active = _active, None
    try:
        sys.stdout.flush()
        state.log.flush()
        os.dup2(state.saved_fd, 2)
    finally:
        if state.terminal is not state.original:
            state.terminal.flush()
        os.close(state.saved_fd)
        sys.stderr = state.original
        err_console.file = None  # back to "whatever sys.stderr is"
        state.log.close()
    path = state.path
    if not state.attached and (not failed or path.stat().st_size == 0):
        path.unlink(missing_ok=True)  # nothing to keep: a command without a run dir succeeded
        return None
    if failed:
        sys.stderr.write(f"library log: {path}\n")
        sys.stderr.flush()
    return path
