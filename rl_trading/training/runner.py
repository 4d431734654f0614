"""Running phases 1-3: each phase in this process or as a one-trial Tune experiment.

`run_phase` is the one entry for a phase (what `session.train`, the walk-forward retrain and
the tests call); the loop itself is `phase_loop.PhaseLoop`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rl_trading.config import AppConfig
from rl_trading.training.env_bridge import EnvFactory
from rl_trading.training.mapping import phase_number
from rl_trading.training.phase_loop import (
    PhaseLoop,
    PhaseResult,
    PhaseSpec,
    ProgressFn,
    driver_alive,
    driver_modules,
    iteration_metrics,
    sync_driver_modules,
)
from rl_trading.training.signals import StopFlag, graceful_stop
from rl_trading.training.tune_phase import run_phase_trial

# names callers import from here (the runner is the phase entry; the loop lives in phase_loop)
__all__ = [
    "PhaseResult",
    "ProgressFn",
    "driver_alive",
    "driver_modules",
    "inside_ray_worker",
    "iteration_metrics",
    "run_phase",
    "run_phases",
    "sync_driver_modules",
]


def inside_ray_worker() -> bool:
    """True in a Ray worker or actor process (e.g. a Tune trial), where phases run in-process."""
    import ray  # heavy: ray

    if not ray.is_initialized():
        return False
    return ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def run_phase(
    cfg: AppConfig,
    phase: int | str,
    factory: EnvFactory,
    run_dir: str | Path,
    *,
    resume: bool = False,
    init_checkpoint: str | Path | None = None,
    progress: ProgressFn | None = None,
    stop: StopFlag | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    tags: Mapping[str, str] | None = None,
    callbacks: type | None = None,
    in_process: bool | None = None,
) -> PhaseResult:
    """Train one phase to its budget, validating, checkpointing and logging as configured.

    With `resume`, a finished phase returns at once and a started one continues from its last
    checkpoint. Phases 2 and 3 start from `init_checkpoint` (default: the previous phase's best
    checkpoint in `run_dir`): phase 2 loads the specialists (then frozen), phase 3 all policies.

    The phase runs as a one-trial Tune experiment in `run_dir/tune/phaseN` (the
    `PhaseTrainable` that PBT uses, see `training.tune_phase`), or in this process with
    `in_process=True` and by default inside a Ray worker (e.g. a walk-forward Tune trial).
    """
    num = phase_number(phase)
    spec = PhaseSpec(
        cfg=cfg,
        phase=num,
        factory=factory,
        run_dir=Path(run_dir).resolve(),
        resume=resume,
        init_checkpoint=None if init_checkpoint is None else str(init_checkpoint),
        tracking=tracking,
        tracking_uri=tracking_uri,
        tags=dict(tags or {}),
        callbacks=callbacks,
        driver=(socket.gethostname(), os.getpid()),
    )
    stop = stop if stop is not None else StopFlag()
    if in_process is None:
        in_process = inside_ray_worker()
    if not in_process:
        return run_phase_trial(spec, progress=progress, stop=stop)
    loop = PhaseLoop(spec, stop=stop, progress=progress)
    if loop.finished:
        return loop.result()
    with graceful_stop(stop):
        try:
            while True:
                out = loop.step()
                if out["done"]:
                    break
                if out["interrupted"]:
                    raise loop.interrupted()
        except BaseException as exc:
            loop.close(exc)
            raise
    loop.close()
    return loop.result()


def run_phases(
    cfg: AppConfig,
    factory: EnvFactory,
    run_dir: str | Path,
    *,
    phases: tuple[int, ...] = (1, 2, 3),
    resume: bool = False,
    **kwargs: Any,
) -> dict[str, PhaseResult]:
    """Phases in order, each starting from the previous one's best checkpoint."""
    out = {}
    for num in phases:
        out[f"phase{num}"] = run_phase(cfg, num, factory, run_dir, resume=resume, **kwargs)
    return out
