"""`rl-trading backtest`: a policy next to the baselines, walk-forward CIs, JSON + PNG report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli import logs
from rl_trading.cli.common import ConfigOpt, DataOpt, SetOpt, SplitOpt, console, policy_config
from rl_trading.cli.output import JsonOpt, next_steps, print_json
from rl_trading.config import periods_per_year_of
from rl_trading.errors import ConfigError


def backtest_command(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Algorithm checkpoint or RLModule dir to evaluate."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="NAME, NAME/VERSION or NAME@ALIAS.")
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
        typer.Option(
            "--folds",
            help="Walk-forward folds over the bars, at least 1 (1: none; default from config).",
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds (default from config).")
    ] = None,
    allow_overlap: Annotated[
        bool,
        typer.Option(
            "--allow-overlap", help="Evaluate dates inside the model's training range too."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Backtest a policy (deterministic) against buy-and-hold, equal-weight, flat and random.

    The policy's stored training config and scalers are used unless -c/--set override them.
    """
    from rl_trading.evaluation.backtest import backtest  # heavy: numba
    from rl_trading.evaluation.report import (  # heavy: numba
        render_table,
        render_targets,
        render_walk_forward,
        report_dict,
        write_report,
    )
    from rl_trading.evaluation.selection import select_bars, trial_count  # heavy: sqlalchemy
    from rl_trading.evaluation.walk_forward import walk_forward  # heavy: numba

    if (checkpoint is None) == (model is None):
        raise ConfigError("give exactly one of --checkpoint PATH or --model NAME")
    if folds is not None and folds < 1:
        raise ConfigError(f"--folds must be at least 1 (1: no walk-forward), not {folds}")
    given_seeds = parse_seeds(seeds) if seeds is not None else None
    cfg, cfg_origin = policy_config(config, sets, checkpoint=checkpoint, model=model)
    source = str(checkpoint) if checkpoint is not None else model
    bars, train, desc = select_bars(cfg, data, split)
    seed_list = given_seeds or list(cfg.evaluation.seeds)
    ppy = periods_per_year_of(cfg, train) if train is not None else None
    n_trials, trial_sharpes = trial_count(source, cfg, ppy)
    result = backtest(
        source,
        bars,
        cfg,
        seed=seed_list[0],
        scaler_bars=train,
        allow_overlap=allow_overlap,
        n_trials=n_trials,
        trial_sharpes=trial_sharpes,
    )
    result.meta["bars"] = desc
    result.meta["config"] = cfg_origin
    walk = None
    n_folds = cfg.data.walk_forward_folds if folds is None else folds
    if n_folds > 1:
        walk = walk_forward(source, bars, cfg, n_folds=n_folds, seeds=seed_list, train_fn=None)
    out_dir = out or cfg.resolved_run_dir() / "backtest"
    log = logs.attach_run_dir(out_dir if out is not None else out_dir.parent)
    paths = write_report(result, out_dir, cfg, walk=walk)
    if as_json:
        print_json({**report_dict(result, cfg, walk), "files": paths})
        return
    console.print(render_table(result, title=f"Backtest: {result.meta.get('source')} on {desc}"))
    console.print(render_targets(result))
    if walk is not None:
        console.print(render_walk_forward(walk))
    if str(result.meta.get("scaler_origin", "")).startswith("evaluated"):
        console.print("[yellow]note: no stored feature scaler; fit on the evaluated bars[/]")
    if result.meta.get("training_overlap"):
        console.print(f"[yellow]--allow-overlap: {result.meta['training_overlap']}[/]")
    console.print(f"config: {cfg_origin}")
    pm = result.metrics.get("policy", {})
    if "dsr" in pm:
        console.print(
            f"PSR {pm['psr']:.3f}, DSR {pm['dsr']:.3f} over {n_trials} trial(s) "
            "(a grade above C needs DSR >= "
            f"{cfg.evaluation.grade_min_dsr:g} on data no selection saw)"
        )
    plots = ", ".join(p.name for k, p in paths.items() if k != "report")
    next_steps(
        console,
        ("report", paths["report"]),
        ("plots", f"{out_dir}/ ({plots})"),
        *([("logs", log)] if log is not None else []),
        ("next", f"python -m json.tool {paths['report']}"),
    )


def parse_seeds(text: str) -> list[int]:
    """`--seeds 1,2,3` as integers; ConfigError naming the bad item otherwise."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ConfigError(f"--seeds must be comma-separated integers, e.g. 1,2,3 (got {text!r})")
    out = []
    for item in items:
        try:
            out.append(int(item))
        except ValueError:
            raise ConfigError(
                f"--seeds: {item!r} is not an integer (use comma-separated integers, e.g. 1,2,3)"
            ) from None
    return out


def register(app: typer.Typer) -> None:
    """Attach the top-level `backtest` command."""
    app.command("backtest")(backtest_command)
