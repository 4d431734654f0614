"""Running phases 1-3: iterations, validation, checkpoints, best model, resume, MLflow.

`run_phase` is the one entry for a phase: the phase's loop (`PhaseLoop`) runs in this process,
or in a one-trial Tune experiment (`tune_phase.run_phase_trial`, handed this loop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rl_trading.config import AppConfig
from rl_trading.tracking import close_orphan_run
from rl_trading.training.algo_config import (
    _module_specs,
    build_algorithm,
    build_phase_config,
    learner_thread_count,
    phase_policies,
    release_algorithm,
)
from rl_trading.training.checkpoints import (
    restore_algorithm_state,
    restore_policies,
    save_algorithm,
)
from rl_trading.training.env_bridge import EnvFactory
from rl_trading.training.mapping import PHASE_MODES, is_specialist, phase_iterations, phase_number
from rl_trading.training.mlflow_log import phase_tracking
from rl_trading.training.phase_spec import (
    PhaseResult,
    PhaseSpec,
    ProgressFn,
    note_restarts,
    phase_result,
    previous_checkpoint,
)
from rl_trading.training.signals import StopFlag, TrainingInterrupted, graceful_stop
from rl_trading.training.state import PhaseState, RunState
from rl_trading.training.tune_phase import run_phase_trial
from rl_trading.training.validation import validate

logger = logging.getLogger(__name__)
_LEARNER_KEYS = (
    "policy_loss",
    "vf_loss",
    "entropy",
    "mean_kl_loss",
    "total_loss",
    "vf_explained_var",
)


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
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec  # heavy: ray

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


POINTER_FILE = "phase_checkpoint.json"  # in a Tune checkpoint of a phase trial
PENDING_BEST = "best.pending"  # a best not yet covered by a checkpoint (see PhaseLoop.step)


def driver_alive(driver: tuple[str, int] | None) -> bool:
    """Whether the driver process `(host, pid)` still runs (True when unknown, elsewhere, or
    this very process)."""
    if driver is None:
        return True
    host, pid = driver
    if host != socket.gethostname() or pid == os.getpid():
        return True
    import psutil  # optional: psutil (ships with ray[default])

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exit_if_driver_gone(driver: tuple[str, int] | None) -> None:
    """End this process at once when the driver died: the run must stop where it was killed
    (no more iterations, checkpoints or state writes), as if the trial had been killed too."""
    if not driver_alive(driver):
        logger.error("the driver process %s is gone: the phase trial stops here", driver)
        os._exit(1)


class PhaseLoop:
    """One phase, one iteration per `step()`: train, validate every `eval_interval`, best and
    last checkpoints, `state.json`, MLflow. The one loop body, run in-process by `run_phase` or
    inside the phase's Tune trial (`tuning.trainable.PhaseTrainable`, as its runner).

    Construction prepares the run state (resume rewinds to the last checkpoint, a restart
    closes the earlier MLflow run), builds the algorithm (its Trainable log folder under
    `logdir`), restores the starting weights and opens the MLflow run. `finished` is True (and
    nothing is built) when a resumed phase is already done.
    """

    def __init__(
        self,
        spec: PhaseSpec,
        *,
        stop: StopFlag | None = None,
        progress: ProgressFn | None = None,
        logdir: str | Path | None = None,
    ) -> None:
        self.spec = spec
        self.stop_flag = stop if stop is not None else StopFlag()
        self.progress = progress
        self.algo: Any = None
        self.metrics: dict[str, float] = {}
        self._stack = contextlib.ExitStack()
        cfg, num, name = spec.cfg, spec.phase, spec.name
        self.state = state = RunState.load(spec.run_dir)
        self.run_dir = state.run_dir
        ps = state.phase(name)
        self.total = phase_iterations(cfg, num)
        # done at this budget; a raised budget (on resume) continues from the last checkpoint
        self.finished = spec.resume and ps.status == "done" and ps.iteration >= self.total
        self.ps = ps
        if self.finished:
            return
        if not spec.resume or ps.status == "pending":
            state.phases[name] = self.ps = ps = PhaseState(total_iterations=self.total)
        # The counters go back to what the restored weights hold: the last checkpoint, or a
        # fresh start (iteration 0) when the phase died before its first checkpoint.
        from_last = spec.resume and ps.rewind()
        resume_run_id = ps.mlflow_run_id if from_last else None
        if not from_last and ps.mlflow_run_id:  # a restart: the earlier run's iterations are void
            if spec.tracking:
                close_orphan_run(ps.mlflow_run_id, spec.tracking_uri or cfg.tracking.tracking_uri)
            ps.mlflow_run_id = None
        init_checkpoint = spec.init_checkpoint
        if num > 1 and init_checkpoint is None and not from_last:
            init_checkpoint = previous_checkpoint(self.run_dir, num)
        self.phase_dir = self.run_dir / name
        self.ckpt_dir = self.phase_dir / "checkpoints"
        # a best saved after the last checkpoint belongs to a timeline the rewind discarded
        shutil.rmtree(self.phase_dir / PENDING_BEST, ignore_errors=True)
        spec.stop_file.unlink(missing_ok=True)  # a request of an earlier run is void

        config = build_phase_config(cfg, num, spec.factory, callbacks=spec.callbacks)
        # the learner's torch threads for the phase (resources.learner_threads), undone at close
        self._stack.enter_context(learner_thread_count(cfg.resources))
        self.algo = build_algorithm(config, logdir or self.run_dir / "logs")
        try:
            pids, self.trained = phase_policies(spec.factory, num)
            if from_last:
                restore_algorithm_state(self.algo, ps.last_checkpoint)
            elif init_checkpoint is not None:
                to_load = [p for p in pids if is_specialist(p)] if num == 2 else pids
                restore_policies(self.algo, init_checkpoint, to_load)
            self.modules = driver_modules(cfg, spec.factory, num)
            ps.status = "running"
            ps.total_iterations = self.total
            state.save()
            self.tracker = self._stack.enter_context(
                phase_tracking(
                    cfg,
                    name,
                    self.run_dir,
                    spec.tags,
                    spec.tracking_uri,
                    spec.tracking,
                    resume_run_id,
                )
            )
            ps.mlflow_run_id = self.tracker.run_id
            state.save()  # the run id first: a killed process leaves a run to close or resume
        except BaseException as exc:
            self.close(exc)
            raise
        self.t0 = time.monotonic()
        self.start_iter = ps.iteration
        self.restarts_seen = 0

    def stop_requested(self) -> bool:
        """A stop was asked for: the flag (signals, in-process) or the stop file (the driver)."""
        return bool(self.stop_flag) or self.spec.stop_file.exists()

    def step(self) -> dict[str, Any]:
        """One iteration; returns its metrics plus `phase, iteration, total, elapsed_s, eta_s`,
        `done` (budget reached) and `interrupted` (stopped early, last checkpoint written)."""
        cfg, ps, name = self.spec.cfg, self.ps, self.spec.name
        total = self.total
        exit_if_driver_gone(self.spec.driver)
        result = self.algo.train()
        exit_if_driver_gone(self.spec.driver)  # before anything of this iteration is written
        ps.iteration += 1
        it = ps.iteration
        metrics = iteration_metrics(result)
        ps.env_steps = int(metrics["env_steps"])
        self.restarts_seen = note_restarts(name, it, metrics, self.restarts_seen)
        if it % cfg.phases.eval_interval == 0 or it == total:
            sync_driver_modules(self.algo, self.modules)
            ps.last_val = validate(
                self.spec.factory, PHASE_MODES[self.spec.phase], self.modules, seed=cfg.seed
            )
            ps.val_sharpes.append(float(ps.last_val["val_sharpe"]))
            if ps.best_val_sharpe is None or ps.last_val["val_sharpe"] > ps.best_val_sharpe:
                ps.best_val_sharpe = ps.last_val["val_sharpe"]
                # pending until the next checkpoint commits it: a resume from an earlier
                # checkpoint discards this timeline, and its best with it
                best = save_algorithm(
                    self.algo, self.phase_dir / PENDING_BEST, self.spec.factory.metadata
                )
                ps.best_checkpoint = str(best)
        metrics.update(ps.last_val)  # carried forward between validations
        if ps.best_val_sharpe is not None:
            metrics["best_val_sharpe"] = ps.best_val_sharpe
        metrics["iteration"] = float(it)
        metrics["n_selection_trials"] = float(len(self.state.selection_trials()))
        elapsed = time.monotonic() - self.t0
        info = {
            "phase": name,
            "iteration": it,
            "total": total,
            **metrics,
            "elapsed_s": elapsed,
            "eta_s": elapsed / max(it - self.start_iter, 1) * (total - it),
        }
        if self.progress is not None:
            self.progress(info)
        # One look at the stop request per iteration: a signal landing between the checkpoint
        # and the stop check must not stop without a checkpoint (it waits one iteration).
        stopping = self.stop_requested()
        if it % cfg.phases.checkpoint_interval == 0 or it == total or stopping:
            self.checkpoint()
        self.state.save()
        self.tracker.log(metrics, step=it)
        self.metrics = metrics
        done = it >= total
        if done:
            self._finish()
        return {**info, "done": done, "interrupted": bool(stopping and not done)}

    def checkpoint(self) -> str:
        """Save the current weights as `checkpoints/iter_N` (the resume point), prune older."""
        ps = self.ps
        it = ps.iteration
        last = save_algorithm(
            self.algo, self.ckpt_dir / f"iter_{it:06d}", self.spec.factory.metadata
        )
        self._commit_best()
        ps.last_checkpoint = str(last)
        ps.checkpoint_iteration = it
        ps.checkpoint_env_steps = ps.env_steps
        ps.commit_selection()
        self.state.save()  # before pruning: state.json never names a deleted checkpoint
        _prune(self.ckpt_dir, last)
        return str(last)

    def _commit_best(self) -> None:
        """A best saved since the last checkpoint becomes `best` (this checkpoint keeps it)."""
        ps, pending = self.ps, self.phase_dir / PENDING_BEST
        if ps.best_checkpoint != str(pending) or not pending.is_dir():
            return
        best = self.phase_dir / "best"
        shutil.rmtree(best, ignore_errors=True)
        pending.rename(best)
        ps.best_checkpoint = str(best)

    def _finish(self) -> None:
        ps = self.ps
        ps.status = "done"
        self.state.save()
        if ps.best_checkpoint:
            self.tracker.log_dir(ps.best_checkpoint, "checkpoints/best")
        self.tracker.set_tags(
            {
                "last_checkpoint": str(ps.last_checkpoint),
                "best_checkpoint": str(ps.best_checkpoint),
                "policies_trained": ",".join(self.trained),
            }
        )

    def interrupted(self) -> TrainingInterrupted:
        """The exception that reports a stop at the current iteration."""
        return TrainingInterrupted(self.spec.name, self.ps.iteration, self.ps.last_checkpoint)

    def result(self) -> PhaseResult:
        """The phase's outcome as it stands."""
        return phase_result(self.spec.name, self.ps, self.metrics or None)

    def close(self, error: BaseException | None = None) -> None:
        """End the MLflow run (failed when `error`) and stop the algorithm; idempotent."""
        try:
            if error is None:
                self._stack.close()
            else:
                self._stack.__exit__(type(error), error, error.__traceback__)
        finally:
            algo, self.algo = self.algo, None
            if algo is not None:
                release_algorithm(algo)

    # -- the PhaseRunner protocol of tuning.trainable (the phase as a Tune trial) -------------

    def train(self) -> dict[str, Any]:
        """One whole iteration (see `step`)."""
        return self.step()

    def validate(self) -> dict[str, float]:
        """The last validation metrics (validation itself runs inside `step`)."""
        return dict(self.ps.last_val)

    def save(self, path: str) -> None:
        """Tune checkpoint of the trial: the run dir holds the weights, `path` a pointer to them.

        A stop requested by the driver is saved here first (Tune saves a stopped trial before
        it ends it), so the run dir has a checkpoint of the iteration the phase stopped at.
        """
        ps = self.ps
        if self.stop_requested() and ps.iteration > ps.checkpoint_iteration and self.algo:
            self.checkpoint()
        ckpt = ps.last_checkpoint
        if ckpt and Path(ckpt).is_relative_to(self.run_dir):
            ckpt = str(Path(ckpt).relative_to(self.run_dir))  # like state.json: relative
        pointer = {
            "phase": self.spec.name,
            "iteration": ps.checkpoint_iteration,
            "checkpoint": ckpt,
        }
        Path(path, POINTER_FILE).write_text(json.dumps(pointer, indent=2))

    def restore(self, path: str) -> None:
        """Load the run-dir checkpoint a `save` pointer names (relative to the run dir)."""
        pointer = json.loads(Path(path, POINTER_FILE).read_text())
        if pointer.get("checkpoint"):
            restore_algorithm_state(self.algo, self.run_dir / pointer["checkpoint"])

    def stop(self) -> None:
        """Release the algorithm and end the MLflow run (an unfinished phase: as failed)."""
        if self.algo is None:
            return
        unfinished = self.ps.status != "done"
        self.close(self.interrupted() if unfinished else None)


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
        return run_phase_trial(spec, PhaseLoop, progress=progress, stop=stop)
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
