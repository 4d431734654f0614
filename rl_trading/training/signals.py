"""Graceful stop on SIGINT / SIGTERM: finish the iteration, checkpoint, then exit cleanly."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class StopFlag:
    """Set by a signal (or by code/tests); the training loop checks it between iterations."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._event = threading.Event()

    def set(self, signum: int = signal.SIGINT) -> None:
        """Request a stop."""
        self.signum = signum
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()


class TrainingInterrupted(Exception):
    """Raised after a requested stop once the checkpoint and state file are written."""

    def __init__(self, phase: str, iteration: int, checkpoint: str | None):
        super().__init__(
            f"{phase} stopped at iteration {iteration}; checkpoint {checkpoint} "
            "(continue with --resume)"
        )
        self.phase, self.iteration, self.checkpoint = phase, iteration, checkpoint


@contextlib.contextmanager
def graceful_stop(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGINT/SIGTERM to `flag` while inside (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, _frame):
        if flag:  # second signal: give up waiting
            raise KeyboardInterrupt
        flag.set(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
