"""`rl-trading demo`: the main job, the whole hierarchical pipeline with a printed report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rl_trading.cli import logs
from rl_trading.cli.common import ConfigOpt, SetOpt, cli_config, console
from rl_trading.cli.progress import phase_progress


def _print_stage(name: str, info: dict[str, Any]) -> None:
    from rl_trading.evaluation.report import (  # heavy: numba
        render_table,
        render_targets,
        render_walk_forward,
    )
    from rl_trading.supervised.report import results_table  # heavy: numba

    if name == "data":
        table = Table(title="Market data", show_header=False)
        table.add_column("field", no_wrap=True)
        table.add_column("value", overflow="fold")  # the fingerprint is copied: never cut
        for key in ("source", "symbols", "timeframe", "bars", "start", "end", "fingerprint"):
            table.add_row(key, str(info[key]))
        table.add_row("synthetic", ", ".join(info.get("synthetic_symbols", [])) or "none")
        table.add_row("train / val / test", f"{info['train']} / {info['val']} / {info['test']}")
        console.print(table)
    elif name == "supervised":
        console.print(results_table(info["results"].records))
        for rec in info["registered"]:
            console.print(f"registered supervised model [bold]{rec.display_name}[/]")
    elif name == "training":
        for phase, res in info["phases"].items():
            sharpe = "n/a" if res.best_val_sharpe is None else f"{res.best_val_sharpe:.3f}"
            console.print(
                f"[green]{phase}[/] {res.iterations} iterations, {res.env_steps:,} env steps, "
                f"best validation Sharpe {sharpe}"
            )
    elif name == "registry":
        rec = info["model"]
        console.print(f"registered policy [bold]{rec.display_name}[/]")
    elif name == "backtest":
        result = info["result"]
        console.print(render_table(result, title=f"Backtest on {result.meta.get('bars')}"))
        console.print(render_targets(result))
        if info["walk"] is not None:
            console.print(render_walk_forward(info["walk"]))


def demo(
    config: ConfigOpt = Path("configs/quickstart.yaml"),
    sets: SetOpt = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run folder (default: run_dir).")] = None,
    supervised: Annotated[
        bool, typer.Option("--supervised/--no-supervised", help="Run the supervised stage.")
    ] = True,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Run the whole pipeline: data, supervised models, RL phases 1-3, registry, backtest."""
    from rl_trading.pipeline import run_pipeline  # heavy: numba, sqlalchemy

    cfg = cli_config(config, sets)
    run_dir = Path(run_dir or cfg.resolved_run_dir()).resolve()
    log = logs.attach_run_dir(run_dir)
    with phase_progress(console) as progress:
        out = run_pipeline(
            cfg,
            run_dir=run_dir,
            supervised=supervised,
            progress=progress,
            on_stage=_print_stage,
            tracking_uri=tracking_uri,
        )
    rec = out.model
    pm = out.backtest.metrics["policy"]
    plots = ", ".join(p.name for k, p in out.report_paths.items() if k != "report")
    lines = [
        f"run dir  {out.run_dir}",
        f"model    {rec.name} (grade {rec.grade}, version {rec.version})",
        f"test     Sharpe {pm['sharpe_ratio']:.3f}, max drawdown {pm['max_drawdown']:.3f}, "
        f"total return {pm['total_return']:.3%}",
        f"report   {out.report_paths['report']}",
        f"plots    {plots}",
    ]
    if log is not None:
        lines.append(f"logs     {log}")
    body = Text("\n".join(lines), overflow="fold")
    console.print(Panel(body, title="rl-trading demo: done", expand=False))
    # commands on lines of their own, never wrapped, so they can be copied
    for cmd in (
        f"rl-trading models info {rec.name}",
        f"rl-trading models promote {rec.name} --alias champion",
        f"rl-trading backtest --model {rec.name} --split test",
        "mlflow ui --backend-store-uri sqlite:///mlflow.db",
    ):
        console.print(f"next: {cmd}", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    """Attach the top-level `demo` command."""
    app.command("demo")(demo)
