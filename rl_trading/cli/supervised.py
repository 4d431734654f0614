"""`rl-trading train supervised`: analyst / tactician / CNN-LSTM as parallel Ray Tune trials.

Exposes the plain command function `supervised`; `rl_trading/cli/train.py` registers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli import logs
from rl_trading.cli.common import ConfigOpt, SetOpt, cli_config, console
from rl_trading.errors import ConfigError


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"empty list '{text}'")
    return items


def supervised(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    models: Annotated[
        str | None,
        typer.Option(help="Comma list of analyst,tactician,cnn_lstm (default: config)."),
    ] = None,
    timeframes: Annotated[
        str | None, typer.Option(help="Comma list of timeframes, e.g. 1h,5m (default: config).")
    ] = None,
    optimize: Annotated[
        bool, typer.Option("--optimize", help="Search hyperparameters (CV on training data).")
    ] = False,
    n_trials: Annotated[
        int | None, typer.Option(min=1, help="Search trials per model (default tuning.n_trials).")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run folder for Tune results and results.json.")
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(help="Where fitted models are saved (default ./models/supervised)."),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start Ray locally).")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    register: Annotated[
        bool,
        typer.Option(
            "--register",
            help="Also grade and register every saved model in the model registry (e.g. a "
            "CNN-LSTM for `train phase1 --cnn-lstm-model NAME`).",
        ),
    ] = False,
) -> None:
    """Train the supervised models as Ray Tune trials and print them next to their baselines."""
    from rl_trading.evaluation.registration import register_supervised  # heavy: numba, sqlalchemy
    from rl_trading.supervised.report import results_table  # heavy: numba
    from rl_trading.supervised.trainables import train_supervised  # heavy: sqlalchemy

    model_list = _split(models)
    tf_list = _split(timeframes)
    cfg = cli_config(
        config,
        sets,
        **{
            "resources.address": address,
            "tracking.tracking_uri": tracking_uri,
            "supervised.models": f"[{','.join(model_list)}]" if model_list else None,
            "supervised.timeframes": f"[{','.join(tf_list)}]" if tf_list else None,
        },
    )
    results = train_supervised(
        cfg,
        models=model_list,
        timeframes=tf_list,
        optimize=optimize,
        n_trials=n_trials,
        run_dir=run_dir,
        models_dir=models_dir,
        verbose=1 if logs.verbose_requested() else 0,
        notify=lambda line: console.print(line, soft_wrap=True),
    )
    log = logs.attach_run_dir(Path(results.results_path).parent)
    console.print(results_table(results.records))
    if register:
        for rec in register_supervised(results, cfg):
            console.print(f"registered [bold]{rec.display_name}[/]", soft_wrap=True)
    console.print(f"results: {results.results_path}", soft_wrap=True)
    if log is not None:
        console.print(f"library log: {log}", soft_wrap=True)
    console.print("next: rl-trading models list --json", soft_wrap=True)
