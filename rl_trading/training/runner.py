"""Running phases 1-3: iterations, validation, checkpoints, best model, resume, MLflow."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_trading.config import AppConfig
from rl_trading.errors import CheckpointError
from rl_trading.training.algo_config import (
    _module_specs,
    build_phase_config,
    phase_iterations,
    phase_policies,
)
from rl_trading.training.checkpoints import (
    restore_algorithm_state,
    restore_policies,
    save_algorithm,
)
from rl_trading.training.env_bridge import EnvFactory
from rl_trading.training.mapping import PHASE_MODES, is_specialist, phase_number
from rl_trading.training.mlflow_log import phase_tracking
from rl_trading.training.signals import StopFlag, TrainingInterrupted, graceful_stop
from rl_trading.training.state import PhaseState, RunState
from rl_trading.training.validation import validate

logger = logging.getLogger(__name__)
ProgressFn = Callable[[dict[str, Any]], None]
_LEARNER_KEYS = (
    "policy_loss",
    "vf_loss",
    "entropy",
    "mean_kl_loss",
    "total_loss",
    "vf_explained_var",
)


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


def iteration_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat metrics of one `algo.train()` result: steps, returns, learner stats per module."""
    runners = result.get("env_runners", {}) or {}
    out: dict[str, float] = {
        "env_steps": float(
            runners.get("num_env_steps_sampled_lifetime")
            or result.get("num_env_steps_sampled_lifetime", 0)
            or 0
        ),
        "episode_return_mean": float(runners.get("episode_return_mean", math.nan)),
        "episode_len_mean": float(runners.get("episode_len_mean", math.nan)),
    }
    # Env-runner fault tolerance: healthy runners and restarts so far (lost samples show up as
    # an iteration with fewer env steps / episodes while a runner was being recreated).
    faults = result.get("fault_tolerance", {}) or {}
    if faults:
        out["num_healthy_env_runners"] = float(faults.get("num_healthy_workers", 0))
        out["num_env_runner_restarts"] = float(faults.get("num_remote_worker_restarts", 0))
    out["env_steps_this_iter"] = float(runners.get("num_env_steps_sampled", math.nan))
    out["episodes_this_iter"] = float(runners.get("num_episodes", math.nan))
    for key in ("portfolio_equity", "portfolio_costs", "var_compliance"):
        if key in runners:
            out[key] = float(runners[key])
    if "curriculum_level" in result:  # fraction of (easiest-first) episode starts in use
        out["curriculum_level"] = float(result["curriculum_level"])
    for pid, value in (runners.get("module_episode_returns_mean") or {}).items():
        out[f"{pid}/episode_return_mean"] = float(value)
    for pid, stats in (result.get("learners", {}) or {}).items():
        if pid == "__all_modules__" or not isinstance(stats, Mapping):
            continue
        for key in _LEARNER_KEYS:
            if key in stats:
                out[f"{pid}/{key}"] = float(stats[key])
    return out


def driver_modules(cfg: AppConfig, factory: EnvFactory, phase: int) -> Any:
    """A MultiRLModule in the driver with the phase's policies (for validation)."""
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec

    pids, _ = phase_policies(factory, phase)
    spec = MultiRLModuleSpec(
        rl_module_specs=_module_specs(cfg, factory, pids, cfg.phases.algorithm == "sac")
    )
    return spec.build()


def sync_driver_modules(algo: Any, modules: Any) -> None:
    """Copy the learners' current weights into the driver modules."""
    weights = algo.learner_group.get_weights(list(modules.keys()))
    for pid, state in weights.items():
        modules[pid].set_state(state)


def _prune(ckpt_dir: Path, keep: Path) -> None:
    for old in ckpt_dir.glob("iter_*"):
        if old.resolve() != keep.resolve():
            shutil.rmtree(old, ignore_errors=True)


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
) -> PhaseResult:
    """Train one phase to its budget, validating, checkpointing and logging as configured.

    With `resume`, a finished phase returns at once and a started one continues from its last
    checkpoint. Phases 2 and 3 start from `init_checkpoint` (default: the previous phase's best
    checkpoint in `run_dir`): phase 2 loads the specialists (then frozen), phase 3 all policies.
    """
    num = phase_number(phase)
    name = f"phase{num}"
    mode = PHASE_MODES[num]
    state = RunState.load(run_dir)
    run_dir = state.run_dir
    ps = state.phase(name)
    total = phase_iterations(cfg, num)
    if resume and ps.status == "done":
        return _result(name, ps)
    if not resume or ps.status == "pending":
        state.phases[name] = ps = PhaseState(total_iterations=total)
    # The counters go back to what the restored weights hold: the last checkpoint, or a fresh
    # start (iteration 0) when the phase died before its first checkpoint.
    from_last = resume and ps.rewind()
    resume_run_id = ps.mlflow_run_id if from_last else None
    if not from_last and ps.mlflow_run_id:  # a restart: the earlier run's iterations are void
        if tracking:
            from rl_trading.tracking import close_orphan_run

            close_orphan_run(ps.mlflow_run_id, tracking_uri or cfg.tracking.tracking_uri)
        ps.mlflow_run_id = None
    if num > 1 and init_checkpoint is None and not from_last:
        init_checkpoint = previous_checkpoint(run_dir, num)
    stop = stop if stop is not None else StopFlag()
    phase_dir = run_dir / name
    ckpt_dir = phase_dir / "checkpoints"

    config = build_phase_config(cfg, num, factory, callbacks=callbacks)
    algo = config.build_algo()
    try:
        pids, trained = phase_policies(factory, num)
        if from_last:
            restore_algorithm_state(algo, ps.last_checkpoint)
        elif init_checkpoint is not None:
            to_load = [p for p in pids if is_specialist(p)] if num == 2 else pids
            restore_policies(algo, init_checkpoint, to_load)
        modules = driver_modules(cfg, factory, num)
        ps.status = "running"
        ps.total_iterations = total
        state.save()
        with (
            graceful_stop(stop),
            phase_tracking(
                cfg, name, run_dir, tags, tracking_uri, tracking, resume_run_id
            ) as tracker,
        ):
            ps.mlflow_run_id = tracker.run_id
            state.save()  # the run id first: a killed process leaves a run to close or resume
            t0 = time.monotonic()
            start_iter = ps.iteration
            restarts_seen = 0
            metrics: dict[str, float] = {}
            while ps.iteration < total:
                result = algo.train()
                ps.iteration += 1
                it = ps.iteration
                metrics = iteration_metrics(result)
                ps.env_steps = int(metrics["env_steps"])
                restarts = int(metrics.get("num_env_runner_restarts", 0))
                if restarts > restarts_seen:
                    logger.warning(
                        "%s iteration %d: %d env runner(s) restarted, %d healthy; sampled %d "
                        "env steps this iteration",
                        name,
                        it,
                        restarts - restarts_seen,
                        int(metrics.get("num_healthy_env_runners", 0)),
                        int(metrics.get("env_steps_this_iter", 0) or 0),
                    )
                    restarts_seen = restarts
                if it % cfg.phases.eval_interval == 0 or it == total:
                    sync_driver_modules(algo, modules)
                    ps.last_val = validate(factory, mode, modules, seed=cfg.seed)
                    ps.val_sharpes.append(float(ps.last_val["val_sharpe"]))
                    if ps.best_val_sharpe is None or ps.last_val["val_sharpe"] > ps.best_val_sharpe:
                        ps.best_val_sharpe = ps.last_val["val_sharpe"]
                        best = save_algorithm(algo, phase_dir / "best", factory.metadata)
                        ps.best_checkpoint = str(best)
                metrics.update(ps.last_val)  # carried forward between validations
                if ps.best_val_sharpe is not None:
                    metrics["best_val_sharpe"] = ps.best_val_sharpe
                metrics["iteration"] = float(it)
                metrics["n_selection_trials"] = float(len(state.selection_trials()))
                if progress is not None:
                    done = it - start_iter
                    elapsed = time.monotonic() - t0
                    progress(
                        {
                            "phase": name,
                            "iteration": it,
                            "total": total,
                            **metrics,
                            "elapsed_s": elapsed,
                            "eta_s": elapsed / max(done, 1) * (total - it),
                        }
                    )
                # One look at the flag per iteration: a signal landing between the checkpoint
                # and the stop check must not stop without a checkpoint (it waits one iteration).
                stopping = bool(stop)
                if it % cfg.phases.checkpoint_interval == 0 or it == total or stopping:
                    last = save_algorithm(algo, ckpt_dir / f"iter_{it:06d}", factory.metadata)
                    ps.last_checkpoint = str(last)
                    ps.checkpoint_iteration = it
                    ps.checkpoint_env_steps = ps.env_steps
                    state.save()  # before pruning: state.json never names a deleted checkpoint
                    _prune(ckpt_dir, last)
                state.save()
                tracker.log(metrics, step=it)
                if stopping and it < total:
                    raise TrainingInterrupted(name, it, ps.last_checkpoint)
            ps.status = "done"
            state.save()
            if ps.best_checkpoint:
                tracker.log_dir(ps.best_checkpoint, "checkpoints/best")
            tracker.set_tags(
                {
                    "last_checkpoint": str(ps.last_checkpoint),
                    "best_checkpoint": str(ps.best_checkpoint),
                    "policies_trained": ",".join(trained),
                }
            )
    finally:
        algo.stop()
    return _result(name, ps, metrics)


def _result(name: str, ps: PhaseState, metrics: dict[str, float] | None = None) -> PhaseResult:
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


def run_pipeline(
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
