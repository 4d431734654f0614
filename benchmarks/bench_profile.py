"""Shared helpers of the benchmarks: where an RLlib iteration's time goes, and peak memory.

RLlib's own `result["timers"]` are exponential moving averages (coefficient 0.01) over the
algorithm's life, so after a warm-up iteration they mostly show the warm-up; `PhaseProfile`
times each call itself instead, by wrapping (for the length of a `with` block) the calls PPO's
`training_step` makes: sampling (`synchronous_parallel_sample`, which includes the env-to-module
connectors and the merge of runner metrics), the learner update (`LearnerGroup.update`, which
includes the learner connectors and GAE) and the weight sync to the env runners, plus the
pipeline's validation passes, checkpoint writes and restores (`rl_trading.training.runner`), and
the algorithm's build (env runner actors, learner) and stop.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

KEYS = (
    "build",
    "restore",
    "sampling",
    "learner",
    "weight_sync",
    "validation",
    "checkpoint",
    "stop",
)


class PhaseProfile:
    """Seconds and call counts per part of the training loop while the `with` block runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, owner: Any, attr: str, key: str) -> None:
        original = getattr(owner, attr)
        profile = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                profile.seconds[key] += time.perf_counter() - t0
                profile.calls[key] += 1

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, original))

    def __enter__(self) -> PhaseProfile:
        import importlib

        from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
        from ray.rllib.core.learner.learner_group import LearnerGroup
        from ray.rllib.env.env_runner_group import EnvRunnerGroup
        from ray.tune import Trainable

        from rl_trading.training import runner

        ppo = importlib.import_module("ray.rllib.algorithms.ppo.ppo")
        self._wrap(ppo, "synchronous_parallel_sample", "sampling")
        self._wrap(LearnerGroup, "update", "learner")
        self._wrap(EnvRunnerGroup, "sync_weights", "weight_sync")
        self._wrap(runner, "validate", "validation")
        self._wrap(runner, "save_algorithm", "checkpoint")
        self._wrap(AlgorithmConfig, "build_algo", "build")  # env runner actors, learner
        self._wrap(runner, "restore_policies", "restore")
        self._wrap(runner, "restore_algorithm_state", "restore")
        self._wrap(Trainable, "stop", "stop")  # Algorithm.stop: env runners shut down
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def snapshot(self) -> dict[str, float]:
        """Seconds per part so far (a copy, for differences between two moments)."""
        return {k: self.seconds.get(k, 0.0) for k in KEYS}


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Seconds per part between two snapshots."""
    return {k: after[k] - before.get(k, 0.0) for k in after}


def describe(parts: dict[str, float], wall: float, per: int = 1) -> str:
    """`part x.xx s (yy%)` for each part that took time, then the rest of `wall`; `per`
    divides every figure (e.g. per iteration)."""
    shown = [(k, v) for k, v in parts.items() if v > 0]
    rest = wall - sum(v for _, v in shown)
    items = [*shown, ("other", rest)]
    return ", ".join(
        f"{k} {v / per:.2f}s ({100 * v / wall:.0f}%)" if wall > 0 else f"{k} {v / per:.2f}s"
        for k, v in items
    )


def load() -> str:
    """The machine's 1/5/15-minute load averages."""
    return "load=" + "/".join(f"{x:.1f}" for x in os.getloadavg())


class PeakMemory:
    """Polls the resident memory of this process and of its process tree (a local Ray's raylet,
    GCS and workers are all descendants) in a background thread; keeps the peaks.

    "workers" are processes whose title starts with `ray::` (env runners, idle workers);
    "ray system" the rest of the tree (raylet, GCS, dashboard agents, log monitor). RSS counts
    shared pages in every process that maps them, so the sums are upper bounds.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.driver = 0
        self.workers_total = 0
        self.worker_max = 0
        self.worker_max_title = ""
        self.system_total = 0
        self.tree_total = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def poll(self) -> None:
        """One measurement of the tree; updates the peaks."""
        import psutil

        me = psutil.Process(os.getpid())
        driver = me.memory_info().rss
        workers = system = 0
        top, top_title = 0, ""
        for child in me.children(recursive=True):
            try:
                rss = child.memory_info().rss
                title = " ".join(child.cmdline()[:1]) or child.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if title.startswith("ray::"):
                workers += rss
                if rss > top:
                    top, top_title = rss, title
            else:
                system += rss
        self.driver = max(self.driver, driver)
        self.workers_total = max(self.workers_total, workers)
        if top > self.worker_max:
            self.worker_max, self.worker_max_title = top, top_title
        self.system_total = max(self.system_total, system)
        self.tree_total = max(self.tree_total, driver + workers + system)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def report(self) -> str:
        """The peaks in MiB, one line."""
        mib = 1024**2
        return (
            f"peak RSS: driver {self.driver / mib:.0f} MiB, Ray workers together "
            f"{self.workers_total / mib:.0f} MiB (largest one {self.worker_max / mib:.0f} MiB, "
            f"{self.worker_max_title or 'none'}), Ray system processes "
            f"{self.system_total / mib:.0f} MiB, whole tree {self.tree_total / mib:.0f} MiB "
            f"({self.samples} polls every {self.interval_s}s)"
        )
