"""A training phase as a one-trial Tune experiment: what `run_phase` does outside a Ray worker.

The trial is `tuning.trainable.PhaseTrainable` (the class PBT uses) with a
:class:`PhaseLoopFactory` runner: each Tune iteration is one `PhaseLoop.step` (train, validate,
checkpoint, state.json, MLflow), so training and tuning share one code path. Results land in the
experiment directory `<run_dir>/tune/phaseN` (`ExperimentAnalysis`, TensorBoard event files).

The driver keeps the run-dir lock and the signal handlers. It reads every result in a Tune
`Stopper` (progress display; a stop asked for by a signal or a failing progress callback), and
asks the trial to stop through a stop file in the phase folder; Tune then saves the trial
(`PhaseLoop.save` checkpoints the iteration it stopped at) and ends it. The trial process alone
writes `state.json` while the phase runs; the driver reads it afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Stopper

from rl_trading import ray_utils
from rl_trading.artifacts import verify_checkpoint
from rl_trading.errors import RLTradingError
from rl_trading.ray_utils import driver_node_resource
from rl_trading.training.checkpoints import check_checkpoint
from rl_trading.training.mapping import phase_iterations
from rl_trading.training.phase_spec import (
    PhaseResult,
    PhaseSpec,
    ProgressFn,
    note_restarts,
    phase_result,
    previous_checkpoint,
)
from rl_trading.training.signals import StopFlag, TrainingInterrupted, graceful_stop
from rl_trading.training.state import RunState
from tuning.trainable import PhaseTrainable

EXPERIMENT_DIR = "tune"  # <run_dir>/tune/phaseN: one Tune experiment per phase
OBJECTIVE = "val_sharpe"
_ENV_PREFIXES = ("RL_TRADING_", "MLFLOW_")
# keys of a trial result that are not the phase's metrics (Tune's own, and the loop's info)
_NOT_METRICS = {
    "phase",
    "total",
    "elapsed_s",
    "eta_s",
    "done",
    "interrupted",
    "trial_id",
    "trial_seed",
    "experiment_tag",
    "should_checkpoint",
    "checkpoint_dir_name",
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_since_restore",
    "timesteps_total",
    "episodes_total",
    "timestamp",
    "date",
    "pid",
    "hostname",
    "node_ip",
    "config",
}


def project_environ() -> dict[str, str]:
    """This process's `RL_TRADING_*` / `MLFLOW_*` variables (workspace, tracking, data URLs)."""
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


class PhaseLoopFactory:
    """Picklable `(hparams, seed) -> PhaseLoop`: the runner of a phase trial.

    In the trial process it first takes the driver's working directory and project variables
    (Tune moves a trial into its own folder; Ray workers keep the environment Ray started with),
    so relative paths, the workspace and the tracking store resolve as in the driver.
    """

    def __init__(
        self,
        spec: PhaseSpec,
        loop: Callable[[PhaseSpec], Any],
        cwd: str,
        environ: Mapping[str, str],
    ) -> None:
        self.spec, self.loop = spec, loop
        self.cwd = cwd
        self.environ = dict(environ)

    def __call__(self, hparams: Mapping[str, float], seed: int) -> Any:
        """Build the phase loop (the trial's config carries no hyperparameters to apply)."""
        if hparams:
            raise ValueError(f"a phase trial takes no hyperparameters, got {sorted(hparams)}")
        os.chdir(self.cwd)
        for key in [k for k in os.environ if k.startswith(_ENV_PREFIXES)]:
            if key not in self.environ:
                del os.environ[key]
        os.environ.update(self.environ)
        try:
            return self.loop(self.spec)
        except RLTradingError as exc:  # reported by the first step: Ray keeps a step's error
            return _FailedLoop(exc)  # (the driver shows it as one line), not a setup's


class _FailedLoop:
    """The runner of a phase trial whose setup failed with a user-facing error."""

    def __init__(self, error: RLTradingError) -> None:
        self.error = error

    def step(self) -> dict[str, Any]:
        """Raise the setup's error."""
        raise self.error

    def save(self, path: str) -> None:
        """Nothing to save."""

    def stop(self) -> None:
        """Nothing to release."""


class PhaseStopper(Stopper):
    """Tune stopper of a phase trial, run in the driver on every result before Tune decides.

    It drives the progress callback, and stops the trial when the driver's `StopFlag` is set
    (the stop file tells the trial to checkpoint the iteration it stopped at), when the trial
    reports it stopped itself, or when the progress callback raised (kept in `error`).
    """

    def __init__(self, stop_file: Path, progress: ProgressFn | None, stop: StopFlag) -> None:
        self.stop_file, self.progress, self.stop = stop_file, progress, stop
        self.error: BaseException | None = None
        self.last: dict[str, Any] = {}
        self.restarts_seen = 0

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its run config (tuner.pkl): the driver-only parts stay behind."""
        return {"stop_file": self.stop_file}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["stop_file"], None, StopFlag())

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """True ends the trial after this result (Tune then saves it once)."""
        self.last = dict(result)
        # the trial logs in its own process: the driver's log says it too
        name, it = str(result.get("phase", "phase")), int(result.get("iteration", 0) or 0)
        self.restarts_seen = note_restarts(name, it, result, self.restarts_seen)
        if self.progress is not None and self.error is None:
            try:
                self.progress(progress_info(result))
            except Exception as exc:  # noqa: BLE001 - re-raised in the driver after the trial
                self.error = exc
        if self.error is not None:
            return True
        if self.stop and not result.get("done"):
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.write_text(f"signal {self.stop.signum}\n")
            return True
        return bool(result.get("interrupted"))

    def stop_all(self) -> bool:
        """Never ends the whole experiment by itself (one trial)."""
        return False


def progress_info(result: Mapping[str, Any]) -> dict[str, Any]:
    """The progress callback's dict (as the in-process loop gives it) from a trial result."""
    keep = {"phase", "total", "iteration", "elapsed_s", "eta_s"}
    return {k: v for k, v in result.items() if k in keep or _is_metric(k)}


def _is_metric(key: str) -> bool:
    return key not in _NOT_METRICS and not key.startswith(("hp/", "config/"))


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """`PhaseResult.metrics` from the trial's last result: the loop's numbers only."""
    out = {}
    for key, value in result.items():
        if _is_metric(key) and isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


@contextlib.contextmanager
def driver_signals(stop: StopFlag) -> Iterator[None]:
    """SIGINT / SIGTERM set `stop` (not Tune's own Ctrl+C handler) while the trial runs."""
    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        with graceful_stop(stop):
            yield
    finally:
        if before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before


def _original_error(error: BaseException) -> BaseException:
    """The exception raised in the trial, out of Ray's and Tune's wrappers."""
    seen = 0
    while seen < 5 and getattr(error, "cause", None) is not None:
        error = error.cause  # type: ignore[attr-defined]
        seen += 1
    return error


def run_phase_trial(
    spec: PhaseSpec,
    loop: Callable[[PhaseSpec], Any],
    *,
    progress: ProgressFn | None = None,
    stop: StopFlag | None = None,
) -> PhaseResult:
    """Run one phase as a one-trial `tune.Tuner` in `<run_dir>/tune/phaseN`; see `run_phase`.

    `loop(spec)` builds the phase's loop in the trial process (`runner.PhaseLoop`, a class
    importable there): one Tune iteration per `loop.step()`.

    Raises what the trial raised (e.g. CheckpointError), what the progress callback raised, or
    TrainingInterrupted after a requested stop (its checkpoint and state.json written).
    """
    from ray import tune  # heavy: ray

    # heavy: ray, torch
    from rl_trading.training.algo_config import build_phase_config, trial_resources

    stop = stop if stop is not None else StopFlag()
    cfg, name = spec.cfg, spec.name
    ps = RunState.load(spec.run_dir).phases.get(name)
    finished = ps is not None and ps.iteration >= phase_iterations(cfg, spec.phase)
    if spec.resume and ps is not None and ps.status == "done" and finished:
        return phase_result(name, ps)
    from_last = spec.resume and ps is not None and ps.status != "pending" and ps.last_checkpoint
    # the checkpoint the phase starts from: a one-line CheckpointError before the trial starts
    if from_last:
        check_checkpoint(ps.last_checkpoint)
        verify_checkpoint(ps.last_checkpoint, action="cannot resume from")
    elif spec.phase > 1 and spec.init_checkpoint is None:
        previous_checkpoint(spec.run_dir, spec.phase)
    ray_utils.init_ray(cfg.resources.address, cfg.resources.num_cpus)  # reuses a running Ray
    # on the driver's machine: the trial writes the run dir (state.json, checkpoints) there
    resources = trial_resources(
        build_phase_config(cfg, spec.phase, spec.factory, spec.callbacks), driver_node_resource()
    )
    factory = PhaseLoopFactory(spec, loop, os.getcwd(), project_environ())
    trainable = tune.with_resources(
        tune.with_parameters(PhaseTrainable, runner_factory=factory), resources
    )
    stopper = PhaseStopper(spec.stop_file, progress, stop)
    tuner = tune.Tuner(
        trainable,
        param_space={"seed": cfg.seed, "metric": OBJECTIVE, "phase": spec.phase},
        tune_config=tune.TuneConfig(
            num_samples=1,
            reuse_actors=False,
            trial_name_creator=lambda trial: f"{name}_{trial.trial_id}",
            trial_dirname_creator=lambda trial: f"{name}_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(spec.run_dir / EXPERIMENT_DIR),
            stop=stopper,
            # the run dir holds the weights (phaseN/checkpoints, best); a Tune checkpoint of the
            # trial is a pointer to them, taken when the trial ends (also when it is stopped)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    try:
        with driver_signals(stop):
            results = tuner.fit()
    finally:
        spec.stop_file.unlink(missing_ok=True)
    if stopper.error is not None:
        raise stopper.error
    if results.errors:
        raise _original_error(results.errors[0])
    ps = RunState.load(spec.run_dir).phases.get(name)
    if ps is None:
        raise RuntimeError(f"{name}: the Tune trial ended without writing state.json")
    metrics = result_metrics(stopper.last) if stopper.last else None
    if ps.status != "done":
        raise TrainingInterrupted(name, ps.iteration, ps.last_checkpoint)
    return phase_result(name, ps, metrics)
