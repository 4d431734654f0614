"""Root of the `rl-trading` command: sub-commands, --version and one-line error handling."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated

import click
import typer
from rich.markup import escape

from rl_trading.cli import logs
from rl_trading.cli.common import ConfigOpt, SetOpt, cli_config, console, err_console
from rl_trading.errors import RLTradingError
from rl_trading.tracking import redact_text
from rl_trading.verify import render_checks, run_checks
from rl_trading.version import __version__

# typer >= 0.29 vendors click: its usage errors are not click.ClickException but derive from
# the public typer.TyperException (and carry click's show / exit_code)
_TyperClickException = getattr(typer, "TyperException", click.ClickException)

app = typer.Typer(
    name="rl-trading",
    help="Train, tune, evaluate and version hierarchical RL trading agents on Ray RLlib.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"rl-trading {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show Ray, RLlib, Tune and MLflow logs on the console (default: "
            "<run_dir>/logs/library.log).",
        ),
    ] = False,
) -> None:
    """Train, tune, evaluate and version hierarchical RL trading agents on Ray RLlib."""
    if verbose:
        os.environ["RL_TRADING_VERBOSE"] = "1"
    logs.start()
    if not _IN_MAIN:  # the app run directly (Click's CliRunner, another program): undo at exit
        ctx.call_on_close(logs.stop)


@app.command()
def verify(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to reach (default: start Ray locally).")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI to check.")] = None,
    skip_ray: Annotated[bool, typer.Option(help="Skip starting Ray (faster).")] = False,
) -> None:
    """System check: versions, torch device/GPU, Ray, data source and MLflow store."""
    cfg = cli_config(config, sets)
    checks = run_checks(cfg, address=address, tracking_uri=tracking_uri, skip_ray=skip_ray)
    console.print(render_checks(checks))
    if not all(c.ok for c in checks):
        failed = ", ".join(c.name for c in checks if not c.ok)
        raise RLTradingError(f"verify failed: {failed}")


def _register_subcommands() -> None:
    """Attach the sub-command groups (each module owns one group)."""
    for module, name in [
        ("rl_trading.cli.data", "data"),
        ("rl_trading.cli.train", "train"),
        ("rl_trading.cli.tune", "tune"),
        ("rl_trading.cli.models", "models"),
        ("rl_trading.cli.backtest", None),
        ("rl_trading.cli.export", "export"),
        ("rl_trading.cli.demo", None),
        ("rl_trading.cli.evaluate", "evaluate"),
        ("rl_trading.cli.paper", "paper"),
    ]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # group not built yet
            raise
        mod.register(app) if name is None else app.add_typer(mod.app, name=name)


_register_subcommands()


MAX_MESSAGE_CHARS = 600  # every error line is capped (a YAML alias bomb must not print 25 MB)


def _one_line(exc: BaseException) -> str:
    """The first line of an error, credentials in URLs hidden, capped, rich markup escaped."""
    text = str(exc).strip()
    line = redact_text(text.splitlines()[0] if text else exc.__class__.__name__)
    if len(line) > MAX_MESSAGE_CHARS:
        line = f"{line[:MAX_MESSAGE_CHARS]}... ({len(line):,} characters, cut)"
    return escape(line)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, turn known failures into one-line errors.

    Library output goes to a log file while the command runs (`rl_trading.cli.logs`); an
    internal error names that file.
    """
    global _IN_MAIN
    internal = False
    verbose_before = os.environ.get("RL_TRADING_VERBOSE")
    _IN_MAIN = True  # main() stops the log routing itself, after reporting an internal error
    try:
        code = _dispatch(argv)
        internal = code == _INTERNAL
        return 1 if internal else code
    finally:
        _IN_MAIN = False
        logs.stop(failed=internal)  # an internal error names the library log
        if verbose_before is None:  # --verbose holds for this command only
            os.environ.pop("RL_TRADING_VERBOSE", None)


_INTERNAL = -1  # an unexpected exception (reported as exit code 1)
_IN_MAIN = False  # True while main() runs the app


def _dispatch(argv: list[str] | None) -> int:
    debug = os.environ.get("RL_TRADING_DEBUG") == "1"
    try:
        rv = app(args=argv, prog_name="rl-trading", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.ClickException, _TyperClickException) as exc:
        if not hasattr(exc, "show"):
            raise
        exc.show(file=err_console.file)
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except RLTradingError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False)
        return exc.exit_code
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False)
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort: never a traceback for the user
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {exc.__class__.__name__}: {_one_line(exc)} "
            "(set RL_TRADING_DEBUG=1 for the traceback)",
            highlight=False,
        )
        return _INTERNAL
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """Entry point used by `python -m rl_trading` and the console script."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
