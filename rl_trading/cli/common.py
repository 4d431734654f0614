"""Options and helpers shared by every CLI command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rl_trading.artifacts import stored_config
from rl_trading.config import AppConfig, load_config
from rl_trading.registry import ModelRegistry

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one error line, never hard-wrapped

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config (configs/*.yaml); if omitted, the schema's defaults (plain sizing, "
        "no trade band; configs/default.yaml turns both on).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set ppo.lr=1e-4 (repeatable)."),
]

DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Bars file or folder (default: --split).")
]
SplitOpt = Annotated[str, typer.Option("--split", help="train, val or test split.")]
ExtraTrialsOpt = Annotated[
    int,
    typer.Option(
        "--extra-trials",
        min=0,
        help="Trials tried outside the tool on this data (the ledger counts the rest).",
    ),
]


def cli_config(config: Path | None, sets: list[str] | None, **extra: object) -> AppConfig:
    """Load the config, then CLI overrides; `extra` maps dotted keys set by dedicated flags."""
    overrides = list(sets or [])
    overrides += [f"{k}={v}" for k, v in extra.items() if v is not None]
    return load_config(config, overrides)


def policy_config(
    config: Path | None,
    sets: list[str] | None,
    checkpoint: str | Path | None = None,
    model: str | None = None,
) -> tuple[AppConfig, str]:
    """The config to evaluate a policy with, and where it came from.

    By default the training config stored with the checkpoint or registered model (symbols,
    timeframe, data source, env and reward settings), with `--set` on top; `-c` replaces it
    explicitly. Falls back to `-c`/defaults for policies saved without one.
    """
    base = cli_config(config, sets)
    if config is not None:
        return base, f"{config} (explicit -c)"
    stored: dict | None = None
    if checkpoint is not None:
        stored = stored_config(checkpoint)
    elif model is not None:
        stored = ModelRegistry(cfg=base).load_training_config(model)
    if not stored:
        return base, "defaults (no training config stored with the policy)"
    stored = dict(stored)
    stored["tracking"] = base.model_dump(mode="json")["tracking"]  # this machine's MLflow
    return load_config(None, sets or [], extra=stored), "training config stored with the policy"
