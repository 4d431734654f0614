"""`rl-trading paper`: run a registered policy on arriving bars; status, list, stop."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rl_trading.cli.common import ConfigOpt, SetOpt, console
from rl_trading.cli.output import JsonOpt, print_json

app = typer.Typer(help="Paper trading: a registered policy on bars that arrive one at a time.")

SessionOpt = Annotated[str, typer.Option("--session", help="Session name (its ledger key).")]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL of the ledger and bar store (default: workspace)."),
]


@app.command("run")
def run_command(
    model: Annotated[str, typer.Option("--model", help="Registered model name (or path).")],
    session: SessionOpt,
    source: Annotated[str, typer.Option("--source", help="replay, sql or file.")] = "replay",
    split: Annotated[str, typer.Option("--split", help="Replay: train, val or test.")] = "test",
    start: Annotated[str | None, typer.Option("--start", help="Replay from this date.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Replay up to this date.")] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="File source: bars file or folder.")
    ] = None,
    db: DbOpt = None,
    speed: Annotated[
        float, typer.Option("--speed", help="Replay: bars per second (0 = full speed).")
    ] = 0.0,
    poll: Annotated[
        float | None, typer.Option("--poll", help="Seconds between feed polls.")
    ] = None,
    stale_after: Annotated[
        float | None, typer.Option("--stale-after", help="Halt after this long without a bar.")
    ] = None,
    max_bars: Annotated[
        int | None, typer.Option("--max-bars", help="Stop after this many new bars.")
    ] = None,
    max_daily_loss: Annotated[
        float | None, typer.Option("--max-daily-loss", help="Kill switch: daily loss fraction.")
    ] = None,
    max_drawdown: Annotated[
        float | None, typer.Option("--max-drawdown", help="Kill switch: drawdown fraction.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Trade in a throw-away ledger (nothing kept).")
    ] = False,
    clear_halt: Annotated[
        bool,
        typer.Option("--clear-halt", help="Trade a session its kill switch halted again."),
    ] = False,
    onnx: Annotated[
        Path | None,
        typer.Option("--onnx", help="Act with exported policies: DIR/<policy id>.onnx each."),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            help="Broker adapter module:factory, given the simulated book (default: "
            "the simulated broker).",
        ),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="At the end: equity.png next to the backtest of the same bars, an MLflow run.",
        ),
    ] = True,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder (default: paper/<session>).")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a policy on a feed; each bar's fills, decision and equity commit atomically."""
    from rl_trading.paper import (  # heavy: numba, sqlalchemy
        Ledger,
        PaperOptions,
        PaperSession,
        resolve_model,
    )
    from rl_trading.paper.broker import load_broker_factory  # heavy: numba, sqlalchemy
    from rl_trading.paper.loop import make_feed  # heavy: numba, sqlalchemy
    from rl_trading.paper.report import write_report  # heavy: numba, sqlalchemy

    factory = load_broker_factory(broker) if broker else None  # a bad path: one line, now
    resolved = resolve_model(model, config, sets, onnx=onnx)
    feed = make_feed(
        resolved, source, split=split, start=start, end=end, path=data, db=db, speed=speed
    )
    tmp = tempfile.TemporaryDirectory() if dry_run else None
    ledger = Ledger(f"sqlite:///{tmp.name}/dry_run.db" if tmp else db)
    opts = PaperOptions(
        session=session,
        poll_s=poll,
        stale_after_s=stale_after,
        max_daily_loss=max_daily_loss,
        max_drawdown=max_drawdown,
        max_bars=max_bars,
        clear_halt=clear_halt,
    )
    result = PaperSession(resolved, feed, ledger, opts, broker=factory).run()
    status = result.status
    info = {}
    if report and not dry_run:
        info = write_report(resolved, ledger, session, out or Path("paper") / session)
    if as_json:
        print_json({**status, "new_bars": result.new_bars, "dry_run": dry_run, "report": info})
        return
    console.print(
        f"paper session [bold]{session}[/]: {status['state']} ({status['reason']}); "
        f"{result.new_bars} new bar(s), equity {status['equity']:,.2f}, "
        f"{len(status['orders'])} order(s)" + (" [dry run: nothing kept]" if dry_run else ""),
        highlight=False,
    )
    if "parity_rel_diff" in info:
        console.print(
            f"backtest of the same bars: equity {info['backtest_final_equity']:,.2f} "
            f"(relative difference {info['parity_rel_diff']:.1e}); plot {info['plot']}",
            highlight=False,
        )


@app.command("status")
def status_command(session: SessionOpt, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """A session's state, equity, cash, positions and orders."""
    from rl_trading.paper import Ledger  # heavy: numba, sqlalchemy

    status = Ledger(db).status(session)
    if as_json:
        print_json(status)
        return
    table = Table(title=f"paper session {session}", show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in ("state", "reason", "model", "source", "last_bar", "bars_processed"):
        table.add_row(key, str(status[key]))
    table.add_row("equity", f"{status['equity'] or 0:,.2f}")
    table.add_row("cash", f"{status['cash'] or 0:,.2f}")
    table.add_row("positions", json.dumps(status["positions"]))
    table.add_row("orders", str(len(status["orders"])))
    console.print(table)


@app.command("list")
def list_command(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every paper session in the ledger."""
    from rl_trading.paper import Ledger  # heavy: numba, sqlalchemy

    ledger = Ledger(db)
    rows = [ledger.status(r["name"]) for r in ledger.list_sessions()]
    if as_json:
        print_json([{k: v for k, v in r.items() if k != "orders"} for r in rows])
        return
    table = Table(title="paper sessions")
    for col in ("session", "state", "last bar", "bars", "equity"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["session"], r["state"], str(r["last_bar"]), str(r["bars_processed"]),
            f"{r['equity'] or 0:,.2f}",
        )  # fmt: skip
    console.print(table)


@app.command("stop")
def stop_command(
    session: SessionOpt,
    flatten: Annotated[
        bool, typer.Option("--flatten/--keep", help="Flatten the book at the next open.")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Stop a session: a running one at its next poll (flat first with --flatten)."""
    from rl_trading.paper import Ledger  # heavy: numba, sqlalchemy

    ledger = Ledger(db)
    row = ledger.request_stop(session, flatten)
    what = "flatten, then stop" if flatten else "stop (positions kept)"
    console.print(f"paper session {session}: {what} requested; state {row.get('state')}")
