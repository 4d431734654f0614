"""`rl-trading evaluate`: the retraining walk-forward (`evaluate walk-forward`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rl_trading.cli import logs
from rl_trading.cli.common import ConfigOpt, ExtraTrialsOpt, SetOpt, cli_config, console

app = typer.Typer(
    help="Out-of-sample evaluation protocols: the retraining walk-forward, the trial ledger."
)


@app.callback()
def _group() -> None:
    """Out-of-sample evaluation protocols: the retraining walk-forward."""


@app.command("walk-forward")
def walk_forward_command(
    config: ConfigOpt = None,
    folds: Annotated[
        int | None, typer.Option("--folds", help="Test folds (default data.walk_forward_folds).")
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            help="Training seeds per fold: seed, seed+1, ... (default: len(evaluation.seeds)).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default runs/walk_forward).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue in --out; finished trials are kept.")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to run the trials on (default: local Ray).")
    ] = None,
    phases: Annotated[
        str, typer.Option("--phases", help="Phases trained per fold: 1, 1,2 or 1,2,3.")
    ] = "1,2,3",
    extra_trials: ExtraTrialsOpt = 0,
    sets: SetOpt = None,
) -> None:
    """Retrain on every expanding-window fold x seed, test each fold once, report with CIs."""
    from rl_trading.evaluation.walk_forward_retrain import (  # heavy: numba, sqlalchemy
        prepare,
        render_table,
        walk_forward_retrain,
    )

    cfg = cli_config(config, sets)
    plan = prepare(cfg, folds, seeds, out, resume=resume, phases=phases)
    todo = plan.pending()
    console.print(
        f"walk-forward: {len(plan.plans)} folds x {len(plan.seeds)} seeds, phases "
        f"{','.join(map(str, plan.phases))}; {len(plan.units) - len(todo)} done, "
        f"{len(todo)} to run -> {plan.out_dir}"
    )

    report = walk_forward_retrain(
        plan,
        address=address,
        verbose=1 if logs.verbose_requested() else 0,  # Tune's status tables only when asked
        notify=console.print,
        extra_trials=extra_trials,
    )
    console.print(render_table(report))
    console.print(f"report: {report['files']['json']}  plot: {report['files']['png']}")


@app.command("trials")
def trials_command(
    data: Annotated[
        str | None,
        typer.Option("--data", help="Data fingerprint (or its first characters) to list."),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Write the ledger's rows (those of --data, or all) to this JSON file.",
        ),
    ] = None,
    import_file: Annotated[
        Path | None,
        typer.Option(
            "--import",
            help="Merge an exported ledger file into this workspace's ledger (rows already "
            "there are kept once).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Let --export replace an existing file.")
    ] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """The trial ledger: configurations evaluated per data fingerprint (what every DSR counts).
    `--export` / `--import` carry it to another workspace or a fresh clone."""
    from rl_trading import ledger  # heavy: sqlalchemy

    cfg = cli_config(config, sets)
    url = ledger.ledger_url(cfg)
    if import_file is not None:
        added, trials = ledger.import_rows(import_file, url)
        console.print(f"trial ledger: {added} row(s), {trials} trial(s) added from {import_file}")
    if export is not None:
        keep = None
        if data:
            keep = sorted({r.fingerprint for r in ledger.list_trials(data, url)})
        n, trials = ledger.export_rows(export, keep, url, overwrite=overwrite)
        console.print(f"trial ledger: {n} row(s), {trials} trial(s) written to {export}")
        return
    rows = ledger.summary(data, url)
    if not rows:
        console.print(f"trial ledger: no trials recorded{f' on {data}' if data else ''}")
        return
    table = Table(title="Trial ledger (every DSR on the data counts these)")
    for col in ("data", "kind", "trials", "configs", "sources", "last"):
        right = col in ("trials", "configs", "sources")
        table.add_column(col, justify="right" if right else "left")
    for r in rows:
        table.add_row(
            r["fingerprint"][:12],
            r["kind"],
            str(r["trials"]),
            str(r["configs"]),
            str(r["sources"]),
            r["last"][:10],
        )
    console.print(table)
    totals: dict[str, int] = {}
    for r in rows:
        totals[r["fingerprint"]] = totals.get(r["fingerprint"], 0) + r["trials"]
    for fp, n in totals.items():
        console.print(f"{fp[:12]}: {n} trials")
