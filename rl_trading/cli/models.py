"""`rl-trading models list|info|register|benchmark|promote`: the MLflow model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli.common import (
    ConfigOpt,
    DataOpt,
    SetOpt,
    SplitOpt,
    cli_config,
    console,
    policy_config,
)

app = typer.Typer(help="Registered models: versions, grades, lineage.", no_args_is_help=True)
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
    split: Annotated[
        str,
        typer.Option(
            "--split", help="Split graded on: test (untouched by selection) or val (grade <= C)."
        ),
    ] = "test",
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Run dir (lineage; default: found).")
    ] = None,
    bump: Annotated[str | None, typer.Option("--bump", help="Force major, minor or patch.")] = None,
    extra_trials: Annotated[
        int,
        typer.Option(
            "--extra-trials",
            min=0,
            help="Trials tried before this run (e.g. PBT best.json n_trials), for the DSR.",
        ),
    ] = 0,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Backtest a checkpoint on --split, grade it, and register it with its preprocessing."""
    from rl_trading.errors import ConfigError
    from rl_trading.evaluation import register_policy

    if bump is not None and bump not in ("major", "minor", "patch"):  # before any backtest
        raise ConfigError(f"--bump must be major, minor or patch, not '{bump}'")
    cfg, _ = policy_config(config, sets, checkpoint=checkpoint)
    rec, result = register_policy(
        checkpoint, cfg, model_type, split, run_dir, bump, extra_trials=extra_trials
    )
    pm = result.metrics["policy"]
    console.print(
        f"registered [bold]{rec.display_name}[/] (sharpe {pm['sharpe_ratio']:.3f}, "
        f"max drawdown {pm['max_drawdown']:.3f}, PSR {pm['psr']:.3f}, DSR {pm['dsr']:.3f} "
        f"over {result.meta['n_trials']} trials on the {split} split)"
    )
    capped = rec.tags.get("rl_trading.grade_capped")
    if capped:
        console.print(f"[yellow]grade capped at C: {capped}[/]")


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
    cfg, _ = policy_config(config, sets, model=names[0])  # the first model's training config
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
    if rows.get("pbo") is not None:
        console.print(f"probability of backtest overfitting (CSCV): {rows['pbo']:.2f}")
    if rows.get("selection_on_test"):
        console.print("[yellow]compared on the test split: recorded as a selection[/]")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2, default=str))
        console.print(f"wrote {out}")


def compare_models(names: list[str], cfg, data: Path | None, split: str) -> dict:
    """Backtest each registered model on the same bars; metrics per model and baselines.

    Comparing models is a selection: each model's DSR is deflated for the number compared,
    with 4 or more the probability of backtest overfitting (CSCV) is reported, and on the
    test split every compared model is tagged in the registry (`test_selections`).
    """
    import numpy as np

    from rl_trading import metrics
    from rl_trading.evaluation import select_bars
    from rl_trading.evaluation.backtest import backtest
    from rl_trading.registry import ModelRegistry

    bars, train, desc = select_bars(cfg, data, split)
    out: dict = {"bars": desc, "metrics": {}, "passes": {}, "spans": {}, "n_trials": len(names)}
    returns = {}
    for name in names:
        res = backtest(
            name, bars, cfg, seed=cfg.seed, scaler_bars=train, n_trials=max(1, len(names))
        )
        out["metrics"][name] = res.metrics["policy"]
        returns[name] = res.runs["policy"].returns
        checks = res.targets["policy"]
        out["passes"][name] = f"{sum(c['pass'] for c in checks.values())}/{len(checks)}"
        out["spans"][name] = [res.meta["start"], res.meta["end"]]
        for base, mets in res.metrics.items():
            if base != "policy" and base not in out["metrics"]:
                out["metrics"][base] = mets
                checks = res.targets[base]
                out["passes"][base] = f"{sum(c['pass'] for c in checks.values())}/{len(checks)}"
    pbo = None
    if len(names) >= 4:
        n = min(len(r) for r in returns.values())
        matrix = np.column_stack([r[-n:] for r in returns.values()])
        splits = 16 if n >= 32 else max(2, (n // 2) // 2 * 2)
        try:
            pbo = metrics.probability_of_backtest_overfitting(matrix, n_splits=splits)
        except ValueError as exc:
            out["pbo_error"] = str(exc)
    out["pbo"] = pbo
    if split == "test" and data is None:
        ModelRegistry(cfg=cfg).record_test_selection(names, pbo)
        out["selection_on_test"] = True
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
    registry, _ = _registry(config, sets, tracking_uri)
    rec = registry.promote(name, alias)
    console.print(f"[green]{rec.display_name}[/] is now '{alias}' (stage {rec.stage})")
