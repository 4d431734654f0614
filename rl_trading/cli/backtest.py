"""`rl-trading backtest`: a policy next to the baselines, walk-forward CIs, JSON + PNG report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli.common import ConfigOpt, DataOpt, SetOpt, SplitOpt, cli_config, console


def backtest_command(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Algorithm checkpoint or RLModule dir to evaluate."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Registered model name (or TYPE, TYPE@alias).")
    ] = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder (default: <run_dir>/backtest).")
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option("--folds", help="Walk-forward folds over the bars (default from config)."),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds (default from config).")
    ] = None,
) -> None:
    """Backtest a policy (deterministic) against buy-and-hold, equal-weight, flat and random."""
    from rl_trading.config import periods_per_year_of
    from rl_trading.errors import ConfigError
    from rl_trading.evaluation import select_bars, trial_count
    from rl_trading.evaluation.backtest import backtest
    from rl_trading.evaluation.report import (
        render_table,
        render_targets,
        render_walk_forward,
        write_report,
    )
    from rl_trading.evaluation.walk_forward import walk_forward

    if (checkpoint is None) == (model is None):
        raise ConfigError("give exactly one of --checkpoint PATH or --model NAME")
    cfg = cli_config(config, sets)
    source = str(checkpoint) if checkpoint is not None else model
    bars, train, desc = select_bars(cfg, data, split)
    seed_list = [int(s) for s in seeds.split(",")] if seeds else list(cfg.evaluation.seeds)
    ppy = periods_per_year_of(cfg, train) if train is not None else None
    n_trials, trial_sharpes = trial_count(source, cfg, ppy)
    result = backtest(
        source,
        bars,
        cfg,
        seed=seed_list[0],
        scaler_bars=train,
        n_trials=n_trials,
        trial_sharpes=trial_sharpes,
    )
    result.meta["bars"] = desc
    walk = None
    n_folds = cfg.data.walk_forward_folds if folds is None else folds
    if n_folds > 1:
        walk = walk_forward(source, bars, cfg, n_folds=n_folds, seeds=seed_list, train_fn=None)
    out_dir = out or cfg.resolved_run_dir() / "backtest"
    paths = write_report(result, out_dir, cfg, walk=walk)
    console.print(render_table(result, title=f"Backtest: {result.meta.get('source')} on {desc}"))
    console.print(render_targets(result))
    if walk is not None:
        console.print(render_walk_forward(walk))
    if str(result.meta.get("scaler_origin", "")).startswith("evaluated"):
        console.print("[yellow]note: no stored feature scaler; fit on the evaluated bars[/]")
    pm = result.metrics.get("policy", {})
    if "dsr" in pm:
        console.print(
            f"PSR {pm['psr']:.3f}, DSR {pm['dsr']:.3f} over {n_trials} trial(s) "
            "(a grade above C needs DSR >= "
            f"{cfg.evaluation.grade_min_dsr:g} on data no selection saw)"
        )
    console.print(f"report: {paths['report']}  plots: {out_dir}")


def register(app: typer.Typer) -> None:
    """Attach the top-level `backtest` command."""
    app.command("backtest")(backtest_command)
