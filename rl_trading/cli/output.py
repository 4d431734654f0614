"""What the CLI prints besides tables: `--json` output and the closing "what next" lines."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")
]


def _plain(value: Any) -> Any:
    """JSON-safe: paths and numpy scalars to plain values, non-finite floats to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(obj: Any) -> None:
    """Write `obj` as indented JSON to stdout (plain, no colours or wrapping)."""
    sys.stdout.write(json.dumps(_plain(obj), indent=2, default=str) + "\n")
    sys.stdout.flush()


def next_steps(console: Any, *lines: tuple[str, Any]) -> None:
    """The closing lines of a long command: where its results are, what to run next."""
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        console.print(f"{key.ljust(width)}  {value}", highlight=False, soft_wrap=True)
