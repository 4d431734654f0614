"""Population-Based Training of one RL phase with Ray Tune, and what it leaves behind.

`run_pbt(cfg, phase, train_bars, val_bars)` runs a `tune.Tuner` over :class:`PhaseTrainable`
with `PopulationBasedTraining` mutating lr, gamma, clip_param, lambda and entropy_coeff inside
the ranges of `cfg.tuning`, logs every trial to MLflow, keeps the checkpoints PBT needs, can be
resumed after an interruption, and writes `best.json`, `trials.csv` and `lineage.png` into the
run directory.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rl_trading import ledger, ray_utils
from rl_trading.config import AppConfig
from rl_trading.errors import CheckpointError, ConfigError, RLTradingError
from rl_trading.metrics import probability_of_backtest_overfitting
from rl_trading.ray_utils import fit_trial_runners
from rl_trading.tracking import configure_mlflow, ensure_experiment, standard_tags
from tuning.lineage import plot_lineage, read_exploits
from tuning.phase_runner import PhaseRunnerFactory
from tuning.results import trials_table
from tuning.trainable import HPARAM_FIELDS, PhaseTrainable, RunnerFactory, ppo_overrides

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

EXPERIMENT_DIR = "tune"  # Tune experiment folder inside the run directory
BEST_FILE = "best.json"
TABLE_FILE = "trials.csv"
LINEAGE_FILE = "lineage.png"
LOG_SCALE = {"lr"}  # hyperparameters sampled / plotted on a log scale


@dataclass
class PBTResult:
    """Outcome of a PBT run: best hyperparameters and checkpoint, trial table, lineage plot."""

    best_config: dict[str, float]
    best_checkpoint: str | None
    table: pd.DataFrame
    lineage_png: Path | None
    run_dir: Path
    metric: str
    best_metric: float
    best_trial: str
    ppo_overrides: dict[str, float] = field(default_factory=dict)
    n_trials: int = 0  # members x perturbation rounds: configurations the best was chosen from
    pbo: float | None = None  # CSCV over the members' per-iteration objective (>= 4 members)


def hparam_ranges(cfg: AppConfig) -> dict[str, tuple[float, float]]:
    """`{trial key: (low, high)}` from `cfg.tuning`, checked (low <= high, lr > 0)."""
    tuning = cfg.tuning
    ranges = {
        "lr": tuning.lr,
        "gamma": tuning.gamma,
        "clip_param": tuning.clip_param,
        "lambda": tuning.gae_lambda,
        "entropy_coeff": tuning.entropy_coeff,
    }
    for key, (low, high) in ranges.items():
        if low > high:
            raise ConfigError(f"tuning range for '{key}' is empty: ({low}, {high})")
        if key == "lr" and low <= 0:
            raise ConfigError("tuning.lr range must be positive")
        if key in ("gamma", "lambda") and high > 1.0:
            raise ConfigError(f"tuning range for '{key}' must stay <= 1")
    return {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}


def search_space(ranges: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """Tune domains for the initial population and for PBT's resampling."""
    from ray import tune  # heavy: ray

    space: dict[str, Any] = {}
    for key, (low, high) in ranges.items():
        if low == high:
            space[key] = tune.choice([low])
        elif key in LOG_SCALE:
            space[key] = tune.loguniform(low, high)
        else:
            space[key] = tune.uniform(low, high)
    return space


class ClipToRanges:
    """PBT `custom_explore_fn`: keep every perturbed value inside its configured range.

    PBT multiplies values by 0.8 or 1.2, which could push gamma above 1 or lr out of range.
    """

    def __init__(self, ranges: Mapping[str, tuple[float, float]]) -> None:
        self.ranges = dict(ranges)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        """Clip the hyperparameters of `config` in place and return it."""
        for key, (low, high) in self.ranges.items():
            if key in config:
                config[key] = float(min(max(float(config[key]), low), high))
        return config


def make_scheduler(cfg: AppConfig) -> Any:
    """`PopulationBasedTraining` over the training iterations with the cfg.tuning knobs."""
    from ray.tune.schedulers import PopulationBasedTraining  # heavy: ray

    ranges = hparam_ranges(cfg)
    return PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=cfg.tuning.perturbation_interval,
        hyperparam_mutations=search_space(ranges),
        quantile_fraction=cfg.tuning.quantile_fraction,
        resample_probability=cfg.tuning.resample_probability,
        synch=cfg.tuning.synch,
        custom_explore_fn=ClipToRanges(ranges),
        log_config=True,
        require_attrs=True,
    )


def default_run_dir(cfg: AppConfig, phase: int) -> Path:
    """`<cfg.run_dir>/pbt_phase<N>` (timestamp filled in)."""
    return cfg.resolved_run_dir() / f"pbt_phase{phase}"


def _mlflow_callback(cfg: AppConfig, phase: int) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback  # heavy: ray

    uri = configure_mlflow(cfg.tracking.tracking_uri)  # absolute (workspace SQLite by default)
    name = f"{cfg.train.experiment_name}_pbt_phase{phase}"
    ensure_experiment(name)
    tags = standard_tags({"kind": "pbt", "phase": str(phase), "metric": cfg.tuning.metric})
    # Params are logged once, at trial end (the final config): PBT changes a trial's config on
    # every exploit and MLflow params are immutable. The schedule itself is in the `hp/*` metrics.
    return MLflowLoggerCallback(
        tracking_uri=uri,
        registry_uri=uri,
        experiment_name=name,
        tags=tags,
        save_artifact=False,
        log_params_on_trial_end=True,
    )


def run_pbt(
    cfg: AppConfig,
    phase: int,
    train_bars: Mapping[str, Any] | None = None,
    val_bars: Mapping[str, Any] | None = None,
    *,
    runner_factory: RunnerFactory | None = None,
    run_dir: str | Path | None = None,
    population: int | None = None,
    iterations: int | None = None,
    resume: bool = False,
    init_checkpoint: str | None = None,
    mlflow: bool = True,
    verbose: int = 0,
    notify: Callable[[str], None] | None = None,
    data_fingerprint: str | None = None,
) -> PBTResult:
    """Run (or resume) PBT for one phase and return the best config, checkpoint and reports.

    Each member samples in its own process (`tuning.phase_runner`) on `tuning.cpus_per_trial`
    CPUs; `notify` gets the line saying how many run at a time, and a member that could never
    be placed is a one-line ConfigError before any work. With `data_fingerprint` (the market's,
    `rl_trading.ledger.market_fingerprint`) its members x rounds go into the trial
    ledger, so every later DSR on that data counts them.

    `runner_factory(hparams, seed)` builds the phase runner; by default the RLlib phase from
    :mod:`rl_trading.training` on `train_bars`, validated on `val_bars`.
    """
    from ray import tune  # heavy: ray

    if phase not in (1, 2, 3):
        raise ConfigError(f"phase must be 1, 2 or 3 (got {phase})")
    population = cfg.tuning.population if population is None else population
    iterations = cfg.tuning.iterations if iterations is None else iterations
    if iterations < 1:
        raise ConfigError(f"PBT needs at least 1 iteration per trial (got {iterations})")
    if population < 2:
        raise ConfigError("PBT needs a population of at least 2 trials")
    hparam_ranges(cfg)  # config errors before any Ray work
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg, phase)
    run_dir = run_dir.resolve()
    exp_path = run_dir / EXPERIMENT_DIR

    if runner_factory is None:
        if train_bars is None or val_bars is None:
            raise ConfigError("run_pbt needs train_bars and val_bars for the RLlib phase runner")
        runner_factory = PhaseRunnerFactory(cfg, phase, train_bars, val_bars, init_checkpoint)

    if resume and not (exp_path / "tuner.pkl").is_file():
        raise CheckpointError(f"no resumable PBT run at {exp_path}")
    if not resume and exp_path.exists() and any(exp_path.iterdir()):
        raise ConfigError(f"{exp_path} already holds a PBT run; use --resume or a new run dir")

    cluster = ray_utils.init_ray(cfg.resources.address, cfg.resources.num_cpus)
    _, line = fit_trial_runners(
        cluster,
        0,
        1.0,
        trial_cpus=cfg.tuning.cpus_per_trial,
        n_trials=population,
        what="PBT members",
    )
    if notify is not None:
        notify(line)
    random.seed(cfg.seed)  # PBT's explore step draws from `random` and numpy's global RNG
    np.random.seed(cfg.seed)

    trainable = tune.with_resources(
        tune.with_parameters(PhaseTrainable, runner_factory=runner_factory),
        {"cpu": cfg.tuning.cpus_per_trial},
    )
    if resume:
        if not tune.Tuner.can_restore(str(exp_path)):
            raise CheckpointError(f"no resumable PBT run at {exp_path}")
        tuner = tune.Tuner.restore(
            str(exp_path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        tuner = _new_tuner(cfg, phase, trainable, run_dir, population, iterations, mlflow, verbose)
    results = tuner.fit()
    if results.errors:
        first = str(results.errors[0]).strip().splitlines()
        raise RLTradingError(
            f"{len(results.errors)} of {len(results)} PBT trials failed "
            f"({first[-1][:200] if first else 'unknown error'}); fix the cause and continue "
            f"with --resume --run-dir {run_dir}"
        )
    result = summarize(results, cfg, phase, run_dir, population, iterations)
    if data_fingerprint:
        record_in_ledger(result, cfg, data_fingerprint, population)
    return result


def record_in_ledger(result: PBTResult, cfg: AppConfig, fingerprint: str, population: int) -> int:
    """Record a PBT run's members x perturbation rounds in the trial ledger; rows added."""
    rounds = max(1, result.n_trials // max(int(population), 1))
    configs = [{"member": m, "round": r} for m in range(int(population)) for r in range(rounds)]
    return ledger.record_trials(
        fingerprint, "pbt", configs, str(result.run_dir), url=ledger.ledger_url(cfg)
    )


def _new_tuner(
    cfg: AppConfig,
    phase: int,
    trainable: Any,
    run_dir: Path,
    population: int,
    iterations: int,
    mlflow: bool,
    verbose: int,
) -> Any:
    from ray import tune  # heavy: ray
    from ray.tune.search import BasicVariantGenerator  # heavy: ray

    interval = cfg.tuning.perturbation_interval
    param_space = {
        **search_space(hparam_ranges(cfg)),
        "seed": cfg.seed,
        "metric": cfg.tuning.metric,
        "phase": phase,
    }
    run_config = tune.RunConfig(
        name=EXPERIMENT_DIR,
        storage_path=str(run_dir),
        stop={"training_iteration": iterations},
        # PBT clones the latest checkpoint of a top trial: checkpoint on its interval, keep a
        # few per trial (PBT warns below 3) and always the final one (the best checkpoint).
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=max(3, 2 + iterations // max(interval, 1) // 4),
            checkpoint_frequency=interval,
            checkpoint_at_end=True,
        ),
        failure_config=tune.FailureConfig(max_failures=1),
        callbacks=[_mlflow_callback(cfg, phase)] if mlflow else [],
        verbose=verbose,
    )
    tune_config = tune.TuneConfig(
        scheduler=make_scheduler(cfg),
        metric=cfg.tuning.metric,
        mode=cfg.tuning.mode,
        num_samples=population,
        reuse_actors=True,
        search_alg=BasicVariantGenerator(random_state=cfg.seed),
    )
    return tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config, run_config=run_config
    )


def summarize(
    results: Any,
    cfg: AppConfig,
    phase: int,
    run_dir: Path,
    population: int,
    iterations: int,
) -> PBTResult:
    """Best trial, table (CSV), lineage PNG and `best.json` from a finished ResultGrid."""

    metric, mode = cfg.tuning.metric, cfg.tuning.mode
    exp_path = Path(results.experiment_path)
    exploits = read_exploits(exp_path)
    table = trials_table(results, metric, mode, exploits)
    table.to_csv(run_dir / TABLE_FILE, index=False)
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="last")
    except RuntimeError:
        best = None
    if best is None or best.metrics is None or metric not in best.metrics:
        errors = "; ".join(str(e).splitlines()[0] for e in results.errors[:2])
        detail = f": {errors}" if errors else ""
        raise RLTradingError(f"PBT produced no trial with '{metric}'{detail}")
    lineage_png = plot_lineage(results, exploits, metric, run_dir / LINEAGE_FILE)
    hparams = {k: float(best.config[k]) for k in HPARAM_FIELDS if k in best.config}
    checkpoint = best.checkpoint.path if best.checkpoint is not None else None
    n_trials, pbo = selection_stats(results, metric, mode, population, iterations, cfg)
    out = PBTResult(
        best_config=hparams,
        best_checkpoint=checkpoint,
        table=table,
        lineage_png=lineage_png,
        run_dir=run_dir,
        metric=metric,
        best_metric=float(best.metrics[metric]),
        best_trial=Path(best.path).name,
        ppo_overrides=ppo_overrides(hparams),
        n_trials=n_trials,
        pbo=pbo,
    )
    write_best(out, cfg, phase, population, iterations, exp_path, len(exploits))
    return out


def selection_stats(
    results: Any, metric: str, mode: str, population: int, iterations: int, cfg: AppConfig
) -> tuple[int, float | None]:
    """(trials tried, PBO): members x perturbation rounds, and with 4 or more members the
    CSCV probability of backtest overfitting over their per-iteration objective values
    (blocks of iterations; `metrics.probability_of_backtest_overfitting`)."""
    rounds = max(1, iterations // max(cfg.tuning.perturbation_interval, 1))
    n_trials = int(population) * rounds
    series = []
    for res in results:
        frame = getattr(res, "metrics_dataframe", None)
        if frame is not None and metric in frame:
            series.append(frame[metric].to_numpy(np.float64))
    if len(series) < 4:
        return n_trials, None
    n = min(len(x) for x in series)
    splits = (n // 2) // 2 * 2
    if splits < 2:
        return n_trials, None
    matrix = np.column_stack([x[-n:] for x in series])
    if mode == "min":
        matrix = -matrix
    try:
        pbo = probability_of_backtest_overfitting(matrix, n_splits=splits, statistic="mean")
    except ValueError:
        return n_trials, None
    return n_trials, pbo


def write_best(
    result: PBTResult,
    cfg: AppConfig,
    phase: int,
    population: int,
    iterations: int,
    exp_path: Path,
    n_exploits: int,
) -> Path:
    """Write `best.json` (picked up by the model registry) into the run directory."""
    payload = {
        "phase": phase,
        "metric": result.metric,
        "mode": cfg.tuning.mode,
        "best_metric": result.best_metric,
        "best_trial": result.best_trial,
        "best_config": result.best_config,
        "ppo_overrides": result.ppo_overrides,
        "best_checkpoint": result.best_checkpoint,
        "experiment_path": str(exp_path),
        "trials_csv": str(result.run_dir / TABLE_FILE),
        "lineage_png": str(result.lineage_png) if result.lineage_png else None,
        "population": population,
        "iterations": iterations,
        "n_exploits": n_exploits,
        "n_trials": result.n_trials,
        "pbo": result.pbo,
        "seed": cfg.seed,
    }
    path = result.run_dir / BEST_FILE
    path.write_text(json.dumps(payload, indent=2))
    return path


def load_best(run_dir: str | Path) -> dict[str, Any]:
    """Read `best.json` of a PBT run directory."""
    path = Path(run_dir) / BEST_FILE
    if not path.is_file():
        raise CheckpointError(f"no {BEST_FILE} in {run_dir}")
    return json.loads(path.read_text())
