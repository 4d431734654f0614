"""`rl-trading tune`: Population-Based Training of an RL phase (`tune pbt`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli import logs
from rl_trading.cli.common import ConfigOpt, SetOpt, cli_config, console
from rl_trading.data import split_for_env
from rl_trading.errors import ConfigError
from rl_trading.supervised.signals import observed_market

app = typer.Typer(help="Hyperparameter search: Population-Based Training of the RL phases.")


@app.callback()
def _group() -> None:
    """Hyperparameter search: Population-Based Training of the RL phases."""


@app.command()
def pbt(
    config: ConfigOpt = None,
    phase: Annotated[int, typer.Option("--phase", "-p", help="RL phase to tune (1, 2 or 3).")] = 1,
    population: Annotated[
        int | None, typer.Option(help="Trials in the population (default tuning.population).")
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Training iterations per trial (default tuning.iterations).")
    ] = None,
    sets: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted run in --run-dir.")
    ] = False,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run folder (default <run_dir>/pbt_phase<N>).")
    ] = None,
    from_checkpoint: Annotated[
        Path | None,
        typer.Option(help="Phase 2: the phase-1 checkpoint; phase 3: the phase-2 checkpoint."),
    ] = None,
    mlflow: Annotated[bool, typer.Option(help="Log every trial to MLflow.")] = True,
) -> None:
    """Population-Based Training of one phase; writes best.json, trials.csv and lineage.png."""
    from rl_trading.ledger import market_fingerprint  # heavy: sqlalchemy

    if population is not None and population < 2:  # checked before any data or Ray work
        raise ConfigError(f"--population must be at least 2 trials (got {population})")
    if iterations is not None and iterations < 1:
        raise ConfigError(f"--iterations must be at least 1 (got {iterations})")
    from tuning.pbt import run_pbt  # heavy: ray, sqlalchemy
    from tuning.results import render_table  # heavy: ray

    cfg = cli_config(config, sets)
    if phase not in (1, 2, 3):
        raise ConfigError(f"--phase must be 1, 2 or 3 (got {phase})")
    if resume and run_dir is None:
        raise ConfigError("--resume needs --run-dir (the folder of the interrupted run)")
    bars = observed_market(cfg)  # what the agents see in training (sig_* columns included)
    splits = split_for_env(bars, cfg)
    console.print(
        f"PBT phase {phase}: population {population or cfg.tuning.population}, "
        f"{iterations or cfg.tuning.iterations} iterations, objective "
        f"{cfg.tuning.metric} ({cfg.tuning.mode})"
    )
    result = run_pbt(
        cfg,
        phase,
        splits.train,
        splits.val,
        run_dir=run_dir,
        population=population,
        iterations=iterations,
        resume=resume,
        init_checkpoint=str(from_checkpoint) if from_checkpoint else None,
        mlflow=mlflow,
        verbose=1 if logs.verbose_requested() else 0,
        notify=lambda line: console.print(line, soft_wrap=True),
        data_fingerprint=market_fingerprint(cfg, bars),  # the trial ledger's key
    )
    log = logs.attach_run_dir(result.run_dir)
    console.print(render_table(result.table, result.metric))
    best = ", ".join(f"{k}={v:.4g}" for k, v in result.best_config.items())
    console.print(f"best {result.metric} = {result.best_metric:.4f} ({result.best_trial}): {best}")
    console.print(f"best checkpoint: {result.best_checkpoint}")
    pbo = (
        f", probability of backtest overfitting {result.pbo:.2f}" if result.pbo is not None else ""
    )
    console.print(
        f"trials tried: {result.n_trials} (members x perturbation rounds, in the trial ledger){pbo}"
    )
    console.print(f"run folder: {result.run_dir} (best.json, trials.csv, lineage.png)")
    if log is not None:
        console.print(f"library log: {log}", soft_wrap=True)
    console.print(f"next: open {Path(result.run_dir) / 'lineage.png'}", soft_wrap=True)
