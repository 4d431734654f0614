"""`rl-trading models list|info|register|benchmark|promote`: the MLflow model registry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli.common import ConfigOpt, DataOpt, SetOpt, SplitOpt, cli_config, console

app = typer.Typer(help="Registered models: versions, grades, lineage.", no_args_is_help=True)
ALIAS_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # what MLflow accepts as a model alias
TrackingOpt = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow store (default: workspace SQLite).")
]


def _registry(config: Path | None, sets: list[str] | None, tracking_uri: str | None):
    from rl_trading.registry import ModelRegistry

    cfg = cli_config(config, sets)
    return ModelRegistry(tracking_uri=tracking_uri, cfg=cfg), cfg


@app.command("list")
def list_models(
    model_type: Annotated[str | None, typer.Option("--type", help="Only this model type.")] = None,
    grade: Annotated[str | None, typer.Option("--grade", help="Only this grade.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Every registered model, newest first."""
    from rich.table import Table

    registry, _ = _registry(config, sets, tracking_uri)
    records = registry.list(model_type=model_type, grade=grade)
    table = Table(title=f"Registered models ({len(records)})", header_style="bold")
    width = max((len(r.display_name) for r in records), default=4)
    table.add_column("name", no_wrap=True, min_width=width)  # names are copied: never cut
    for col in ("type", "kind", "version", "grade", "metric", "aliases", "created"):
        table.add_column(col)
    for r in records:
        table.add_row(
            r.display_name,
            r.model_type,
            r.kind,
            r.version,
            r.grade,
            f"{r.metric_name}={r.metric_value:.3f}",
            ",".join(r.aliases) or "-",
            r.created[:19],
        )
    console.print(table)


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="Model name, TYPE (newest) or NAME@alias.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    verify: Annotated[bool, typer.Option(help="Re-check every artifact's sha256.")] = True,
) -> None:
    """Version, grade, metrics, lineage, data fingerprint and integrity of one model."""
    from rich.table import Table

    registry, _ = _registry(config, sets, tracking_uri)
    r = registry.info(name)
    table = Table(title=r.display_name, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [
        ("registered name", r.name),
        ("type / kind", f"{r.model_type} / {r.kind}"),
        ("version", r.version),
        ("grade", f"{r.grade} (score {r.tags.get('rl_trading.grade_score', '?')})"),
        ("stage / aliases", f"{r.stage} / {', '.join(r.aliases) or '-'}"),
        ("metrics", json.dumps(r.metrics)),
        ("lineage", json.dumps(r.lineage)),
        ("data fingerprint", r.data_fingerprint or "-"),
        ("signature", r.signature[:200] or "-"),
        ("source", r.source),
        ("mlflow run", r.run_id or "-"),
        ("created", r.created),
    ]
    manifest = json.loads(r.tags.get("rl_trading.sha256_manifest", "{}"))
    rows.append(("artifacts", f"{len(manifest)} files, sha256 recorded"))
    if verify:
        registry.load_path(r.name)
        rows.append(("integrity", "[green]all sha256 match[/]"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@app.command("register")
def register_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Trained checkpoint dir.")],
    model_type: Annotated[str, typer.Option("--type", help="Model type.")] = "hierarchical_ppo",
    split: Annotated[str, typer.Option("--split", help="Split graded on (val/test).")] = "val",
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run dir (lineage; default: found).")
    ] = None,
    bump: Annotated[str | None, typer.Option("--bump", help="Force major, minor or patch.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Backtest a checkpoint on --split, grade it, and register it with its preprocessing."""
    from rl_trading.errors import CheckpointError
    from rl_trading.evaluation import register_policy

    if not checkpoint.exists():
        raise CheckpointError(f"checkpoint path does not exist: {checkpoint}")
    cfg = cli_config(config, sets)
    rec, result = register_policy(checkpoint, cfg, model_type, split, run_dir, bump)
    pm = result.metrics["policy"]
    console.print(
        f"registered [bold]{rec.display_name}[/] (sharpe {pm['sharpe_ratio']:.3f}, "
        f"max drawdown {pm['max_drawdown']:.3f} on the {split} split)"
    )


@app.command()
def benchmark(
    models: Annotated[str, typer.Option("--models", help="Comma-separated model names.")],
    data: DataOpt = None,
    split: SplitOpt = "test",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write comparison JSON here.")] = None,
) -> None:
    """Backtest several models on the same bars; one comparison table (+ baselines)."""
    from rich.table import Table

    from rl_trading.errors import ConfigError
    from rl_trading.evaluation.report import HEADLINE

    names = [m.strip() for m in models.split(",") if m.strip()]
    if len(names) < 1:
        raise ConfigError("--models needs at least one name")
    cfg = cli_config(config, sets)
    rows = compare_models(names, cfg, data, split)
    table = Table(title=f"Benchmark on {rows['bars']}", header_style="bold")
    table.add_column("model")
    for m in HEADLINE:
        table.add_column(m.replace("_", " "), justify="right")
    table.add_column("targets")
    for name, mets in rows["metrics"].items():
        passed = rows["passes"][name]
        table.add_row(name, *[f"{mets.get(m, float('nan')):.3f}" for m in HEADLINE], passed)
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2, default=str))
        console.print(f"wrote {out}")


def compare_models(names: list[str], cfg, data: Path | None, split: str) -> dict:
    """Backtest each registered model on the same bars; metrics per model and baselines."""
    from rl_trading.evaluation import select_bars
    from rl_trading.evaluation.backtest import backtest

    bars, train, desc = select_bars(cfg, data, split)
    out: dict = {"bars": desc, "metrics": {}, "passes": {}, "spans": {}}
    for name in names:
        res = backtest(name, bars, cfg, seed=cfg.seed, scaler_bars=train)
        out["metrics"][name] = res.metrics["policy"]
        checks = res.targets["policy"]
        out["passes"][name] = f"{sum(c['pass'] for c in checks.values())}/{len(checks)}"
        out["spans"][name] = [res.meta["start"], res.meta["end"]]
        for base, mets in res.metrics.items():
            if base != "policy" and base not in out["metrics"]:
                out["metrics"][base] = mets
                checks = res.targets[base]
                out["passes"][base] = f"{sum(c['pass'] for c in checks.values())}/{len(checks)}"
    return out


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Model name to promote.")],
    alias: Annotated[str, typer.Option("--alias", help="Alias to set.")] = "production",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Point an alias (default `production`) at this model; the previous holder is archived."""
    from rl_trading.errors import RegistryError

    if not ALIAS_RE.fullmatch(alias) or re.fullmatch(r"(?i)v\d+|latest", alias):
        raise RegistryError(
            f"invalid alias {alias[:64]!r}: use 1-64 letters, digits, _ or - "
            "(not 'latest' or v<number>, which MLflow reserves)"
        )
    registry, _ = _registry(config, sets, tracking_uri)
    rec = registry.promote(name, alias)
    console.print(f"[green]{rec.display_name}[/] is now '{alias}' (stage {rec.stage})")
