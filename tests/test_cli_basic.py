"""Every CLI command answers --help; --version; `verify --skip-ray` passes in a fresh workspace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rl_trading import __version__
from rl_trading.cli.main import app, main

RUNNER = CliRunner()
EXE = Path(sys.executable).parent / "rl-trading"


def _command_paths() -> list[list[str]]:
    """Every registered command and sub-command, discovered from the Typer app."""
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd, prefix: list[str]) -> None:  # noqa: ANN001 - a click/typer command
        paths.append(prefix)
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click classes)
            for name, sub in cmd.commands.items():
                walk(sub, [*prefix, name])

    walk(root, [])
    return paths


COMMANDS = _command_paths()


def test_expected_commands_registered() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"verify", "data", "data validate", "data import", "data info", "data synth"} <= names
    assert "data summary" in names


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "<root>" for p in COMMANDS])
def test_help_on_every_command(path: list[str]) -> None:
    result = RUNNER.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "Traceback" not in result.output


def test_version() -> None:
    result = RUNNER.invoke(app, ["--version"])
    assert result.exit_code == 0 and f"rl-trading {__version__}" in result.output
    assert main(["--version"]) == 0


def test_verify_skip_ray_in_fresh_workspace(workspace) -> None:
    proc = subprocess.run(
        [str(EXE), "verify", "--skip-ray", "--set", "data.synthetic.n_bars=2000"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workspace,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and "data source" in proc.stdout
    assert "PASS" in proc.stdout


def test_usage_error_is_not_an_internal_error() -> None:
    proc = subprocess.run(
        [str(EXE), "no-such-command"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "No such command" in proc.stderr and "internal error" not in proc.stderr


def test_unknown_command_and_bad_config_are_one_line_errors(workspace) -> None:
    proc = subprocess.run(
        [str(EXE), "data", "summary", "--set", "ppo.lrr=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown config key 'ppo.lrr'" in lines[0]
    assert "Traceback" not in proc.stderr


def test_phase_progress_keeps_the_last_finished_episodes_reward():
    """An iteration in which no episode finished reports NaN: the bar keeps the last reward."""
    import io

    from rich.console import Console

    from rl_trading.cli.progress import phase_progress

    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    with phase_progress(console) as progress:
        progress({"phase": "phase1", "total": 3, "iteration": 1, "env_steps": 10,
                  "episode_return_mean": -1.5})  # fmt: skip
        progress({"phase": "phase1", "total": 3, "iteration": 2, "env_steps": 20,
                  "episode_return_mean": float("nan"), "val_sharpe": 0.25})  # fmt: skip
        # a phase whose episodes are all still running shows no number rather than NaN
        progress({"phase": "phase2", "total": 3, "iteration": 1, "env_steps": 10,
                  "episode_return_mean": float("nan")})  # fmt: skip
        # before the first validation the runner carries a NaN val_sharpe: not shown
        progress({"phase": "phase3", "total": 3, "iteration": 1, "env_steps": 10,
                  "episode_return_mean": 1.0, "val_sharpe": float("nan")})  # fmt: skip
    text = out.getvalue()
    assert "reward -1.500" in text and "val_sharpe 0.25" in text and "nan" not in text
    assert "reward n/a" in text
