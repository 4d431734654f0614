"""What a phase run is handed and what it leaves behind, shared by the in-process loop
(`runner.PhaseLoop`) and the one-trial Tune experiment (`tune_phase`): `PhaseSpec`,
`PhaseResult`, the stop file, the previous phase's checkpoint. Light: no Ray."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_trading.config import AppConfig
from rl_trading.errors import CheckpointError
from rl_trading.training.state import PhaseState, RunState

if TYPE_CHECKING:
    from rl_trading.training.env_bridge import EnvFactory

logger = logging.getLogger("rl_trading.training.runner")
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class PhaseResult:
    """What a finished phase leaves behind."""

    phase: str
    iterations: int
    env_steps: int
    last_checkpoint: str
    best_checkpoint: str
    best_val_sharpe: float | None
    metrics: dict[str, float]
    mlflow_run_id: str | None = None


def note_restarts(name: str, iteration: int, metrics: Mapping[str, Any], seen: int) -> int:
    """Log a warning when env runners were restarted since `seen`; return the new count."""
    restarts = int(metrics.get("num_env_runner_restarts", 0) or 0)
    if restarts > seen:
        logger.warning(
            "%s iteration %d: %d env runner(s) restarted, %d healthy; sampled %d "
            "env steps this iteration",
            name,
            iteration,
            restarts - seen,
            int(metrics.get("num_healthy_env_runners", 0) or 0),
            int(metrics.get("env_steps_this_iter", 0) or 0),
        )
    return max(restarts, seen)


def previous_checkpoint(run_dir: Path, phase: int) -> str:
    """Best (else last) checkpoint of the phase before `phase` in this run dir."""
    prev = RunState.load(run_dir).phases.get(f"phase{phase - 1}")
    if prev is None or prev.status != "done":
        raise CheckpointError(
            f"phase{phase} needs phase{phase - 1} first: none completed in {run_dir} "
            "(run it, or pass --from-checkpoint)"
        )
    ckpt = prev.best_checkpoint or prev.last_checkpoint
    if not ckpt:
        raise CheckpointError(f"phase{phase - 1} in {run_dir} left no checkpoint")
    return ckpt


STOP_FILE = ".stop_requested"  # in <run_dir>/phaseN/: the driver asks a phase trial to stop


@dataclass
class PhaseSpec:
    """Everything a phase run needs, picklable: what the driver hands to the phase trial."""

    cfg: AppConfig
    phase: int
    factory: EnvFactory
    run_dir: Path
    resume: bool = False
    init_checkpoint: str | None = None
    tracking: bool = True
    tracking_uri: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    callbacks: type | None = None
    # (host, pid) of the driver process: a phase trial running elsewhere on that host stops
    # dead, writing nothing more, once the driver is gone (killed with SIGKILL, say)
    driver: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        """`phaseN`."""
        return f"phase{self.phase}"

    @property
    def stop_file(self) -> Path:
        """The file whose presence asks the phase (in whatever process it runs) to stop."""
        return self.run_dir / self.name / STOP_FILE


def phase_result(name: str, ps: PhaseState, metrics: dict[str, float] | None = None) -> PhaseResult:
    return PhaseResult(
        phase=name,
        iterations=ps.iteration,
        env_steps=ps.env_steps,
        last_checkpoint=str(ps.last_checkpoint),
        best_checkpoint=str(ps.best_checkpoint or ps.last_checkpoint),
        best_val_sharpe=ps.best_val_sharpe,
        metrics=dict(metrics or ps.last_val),
        mlflow_run_id=ps.mlflow_run_id,
    )
