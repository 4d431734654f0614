"""`rl-trading models list|info|register|benchmark|ensemble|promote|rollback|migrate`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich import box
from rich.table import Table

from rl_trading import metrics
from rl_trading.cli import logs
from rl_trading.cli.common import (
    ConfigOpt,
    DataOpt,
    ExtraTrialsOpt,
    SetOpt,
    SplitOpt,
    cli_config,
    console,
    policy_config,
)
from rl_trading.cli.output import JsonOpt, next_steps, print_json
from rl_trading.errors import CheckpointError, ConfigError, RegistryError
from rl_trading.registry import ModelRegistry

app = typer.Typer(
    help="Registered models: families, versions, aliases, grades, lineage.", no_args_is_help=True
)
ALIAS_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # what MLflow accepts as a model alias
TrackingOpt = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow store (default: workspace SQLite).")
]


def _registry(config: Path | None, sets: list[str] | None, tracking_uri: str | None):
    cfg = cli_config(config, sets)
    return ModelRegistry(tracking_uri=tracking_uri, cfg=cfg), cfg


@app.command("list")
def list_models(
    model_type: Annotated[str | None, typer.Option("--type", help="Only this family.")] = None,
    grade: Annotated[str | None, typer.Option("--grade", help="Only this grade.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every model family with its versions (newest first) and aliases."""
    registry, _ = _registry(config, sets, tracking_uri)
    records = registry.list(model_type=model_type, grade=grade)
    if as_json:
        print_json([record_dict(r) for r in records])
        return
    for table in family_tables(records):
        console.print(table)
    legacy = [r for r in records if r.legacy]
    if legacy:
        console.print(
            f"[yellow]{len(legacy)} model(s) in the old layout (one registered model per "
            "version): read as they are; `rl-trading models migrate` moves them into families[/]"
        )
    if not records:
        console.print("no registered models (register one with `rl-trading models register`)")
    else:
        console.print("refer to a model as NAME (newest), NAME/VERSION or NAME@ALIAS")


def family_tables(records: list) -> list:
    """One rich table per family (versions, semver, grade, metric, aliases, date), each
    readable at 80 columns; old-layout records in a table of their own with full names."""
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault("" if r.legacy else r.family, []).append(r)
    tables = []
    for family, recs in sorted(groups.items(), key=lambda kv: (kv[0] == "", kv[0])):
        if not family:
            table = Table(title="Old layout (read-only)", box=box.SIMPLE, header_style="bold")
            table.add_column("name", overflow="fold")
            table.add_column("grade", no_wrap=True)
            table.add_column("aliases", overflow="fold")
            for r in recs:
                table.add_row(r.name, r.grade, ",".join(r.aliases) or "-")
            tables.append(table)
            continue
        held = {a: r.mlflow_version for r in recs for a in r.aliases}
        n = len(recs)
        title = f"[bold]{family}[/] ({recs[0].kind}, {n} version{'s' if n != 1 else ''})"
        if held:
            title += " " + ", ".join(f"@{a}={v}" for a, v in sorted(held.items()))
        table = Table(title=title, box=box.SIMPLE, header_style="bold", title_justify="left")
        table.add_column("version", justify="right", no_wrap=True)
        table.add_column("semver", no_wrap=True)
        table.add_column("grade", no_wrap=True)
        table.add_column(recs[0].metric_name or "metric", justify="right", no_wrap=True)
        table.add_column("aliases", overflow="fold")
        table.add_column("created (UTC)", no_wrap=True)
        for r in sorted(recs, key=lambda r: int(r.mlflow_version), reverse=True):
            table.add_row(
                f"{family}/{r.mlflow_version}" if len(family) <= 20 else r.mlflow_version,
                r.version,
                r.grade,
                f"{r.metric_value:.3f}",
                ",".join(r.aliases) or "-",
                r.created[:16].replace("T", " "),
            )
        tables.append(table)
    return tables


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="NAME (newest), NAME/VERSION or NAME@ALIAS.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    tracking_uri: TrackingOpt = None,
    verify: Annotated[bool, typer.Option(help="Re-check every artifact's sha256.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Version, grade, metrics, lineage, data fingerprint and integrity of one model."""
    registry, _ = _registry(config, sets, tracking_uri)
    r = registry.info(name)
    if as_json:
        out = record_dict(r)
        if verify:
            registry.load_path(r.name)
            out["integrity"] = "all sha256 match"
        print_json(out)
        return
    table = Table(title=r.display_name, show_header=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    rows = [
        ("model", r.name + ("  (old layout)" if r.legacy else f"  ({r.uri})")),
        ("type / kind", f"{r.model_type} / {r.kind}"),
        ("version", r.version),
        ("grade", f"{r.grade} (score {r.tags.get('rl_trading.grade_score', '?')})"),
        ("stage / aliases", f"{r.stage} / {', '.join(r.aliases) or '-'}"),
        *([("encoder", encoder_line(r.lineage["encoder"]))] if r.lineage.get("encoder") else []),
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
    for title, data in (("Metrics", r.metrics), ("Lineage", r.lineage)):
        if not data:
            continue
        sub = Table(title=title, header_style="bold", title_justify="left")
        sub.add_column("name", no_wrap=True)
        sub.add_column("value", justify="right" if title == "Metrics" else "left", overflow="fold")
        for key, value in sorted(data.items()):
            sub.add_row(key, _fmt(value))
        console.print(sub)


def encoder_line(enc: dict) -> str:
    """One line on a policy's CNN-LSTM encoder: which version, frozen or fine-tuned."""
    mode = "frozen" if enc.get("mode") == "frozen" else f"fine-tuned, lr {enc.get('encoder_lr')}"
    sha = str(enc.get("sha256") or "")[:12]
    return f"{enc.get('name')} (v{enc.get('version')}, sha256 {sha}...), {mode}"


@app.command("register")
def register_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Trained checkpoint dir.")],
    model_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="Model type (default: hybrid for a fine-tuned CNN-LSTM encoder, "
            "else hierarchical_ppo).",
        ),
    ] = None,
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
    extra_trials: ExtraTrialsOpt = 0,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Backtest a checkpoint on --split, grade it, and register it with its preprocessing."""
    from rl_trading.evaluation.registration import register_policy  # heavy: numba, sqlalchemy

    if bump is not None and bump not in ("major", "minor", "patch"):  # before any backtest
        raise ConfigError(f"--bump must be major, minor or patch, not '{bump}'")
    if not checkpoint.exists():
        raise CheckpointError(f"checkpoint path does not exist: {checkpoint}")
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
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated NAME, NAME/VERSION or NAME@ALIAS.")
    ],
    data: DataOpt = None,
    split: SplitOpt = "test",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write comparison JSON here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Backtest several models on the same bars; one comparison table (+ baselines)."""
    from rl_trading.evaluation.report import metrics_grid  # heavy: numba

    names = [m.strip() for m in models.split(",") if m.strip()]
    if len(names) < 1:
        raise ConfigError("--models needs at least one name")
    cfg, _ = policy_config(config, sets, model=names[0])  # the first model's training config
    rows = compare_models(names, cfg, data, split)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2, default=str))
    if as_json:
        print_json(rows)
        return
    caption = "targets passed: " + ", ".join(f"{n} {p}" for n, p in rows["passes"].items())
    console.print(metrics_grid(rows["metrics"], f"Benchmark on {rows['bars']}", caption=caption))
    if rows.get("pbo") is not None:
        console.print(f"probability of backtest overfitting (CSCV): {rows['pbo']:.2f}")
    if rows.get("selection_on_test"):
        console.print("[yellow]compared on the test split: recorded as a selection[/]")
    if out is not None:
        console.print(f"wrote {out}")


def compare_models(names: list[str], cfg, data: Path | None, split: str) -> dict:
    """Backtest each registered model on the same bars; metrics per model and baselines.

    Comparing models is a selection: each model's DSR is deflated for the number compared,
    with 4 or more the probability of backtest overfitting (CSCV) is reported, and on the
    test split every compared model is tagged in the registry (`test_selections`).
    """
    from rl_trading import ledger  # heavy: sqlalchemy
    from rl_trading.evaluation.backtest import backtest  # heavy: numba
    from rl_trading.evaluation.selection import select_bars  # heavy: sqlalchemy

    bars, train, desc = select_bars(cfg, data, split)
    # comparing is a selection on these bars: recorded in the ledger, every trial on them counts
    fp = ledger.market_fingerprint(cfg, bars if data is not None else None)
    url = ledger.ledger_url(cfg)
    ledger.record_trials(fp, "models_benchmark", names, source=f"models benchmark {desc}", url=url)
    n_trials = max(1, len(names), ledger.count_trials(fp, url))
    out: dict = {"bars": desc, "metrics": {}, "passes": {}, "spans": {}, "n_trials": n_trials}
    returns = {}
    for name in names:
        res = backtest(name, bars, cfg, seed=cfg.seed, scaler_bars=train, n_trials=n_trials)
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
def ensemble(
    members: Annotated[
        str, typer.Argument(help="Comma-separated members: NAME1,NAME2/3,NAME3@champion.")
    ],
    method: Annotated[
        str, typer.Option("--method", help="mean (average actions/probabilities) or vote.")
    ] = "mean",
    weights: Annotated[
        str | None, typer.Option("--weights", help="Member weights, e.g. 0.7,0.3.")
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Split graded on (test: untouched by selection).")
    ] = "test",
    model_type: Annotated[str, typer.Option("--type", help="Registered model type.")] = "ensemble",
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder (default: <run_dir>/ensemble).")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Combine registered policies, backtest next to members and baselines, grade, register."""
    from rl_trading.evaluation.ensemble import (  # heavy: numba, sqlalchemy
        create_ensemble,
        parse_weights,
    )
    from rl_trading.evaluation.report import render_table  # heavy: numba

    names = [m.strip() for m in members.split(",") if m.strip()]
    if len(names) < 2:
        raise ConfigError("an ensemble needs at least two members: NAME1,NAME2")
    if method not in ("mean", "vote"):
        raise ConfigError(f"--method must be mean or vote, not '{method}'")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"member '{twice[0]}' is given twice: an ensemble needs distinct models")
    w = parse_weights(weights, len(names))
    cfg, _ = policy_config(config, sets, model=names[0])  # the members' stored training config
    out_dir = out or cfg.resolved_run_dir() / "ensemble"
    log = logs.attach_run_dir(out_dir)
    res = create_ensemble(names, cfg, method, w, split, model_type, out_dir)  # type: ignore[arg-type]
    rec = res.record
    if as_json:
        print_json(
            {
                "model": record_dict(rec),
                "strategies": res.result.metrics,
                "report": res.report_paths["report"],
            }
        )
        return
    title = f"Ensemble ({method}) vs members and baselines, {split} split"
    console.print(render_table(res.result, title=title))
    console.print(f"registered [bold]{rec.display_name}[/]", soft_wrap=True)
    next_steps(
        console,
        ("report", res.report_paths["report"]),
        *([("logs", log)] if log is not None else []),
        ("next", f"rl-trading backtest --model {rec.name} --split test"),
    )


def record_dict(r) -> dict:  # noqa: ANN001 - a registry ModelRecord
    """A registry record as plain JSON-ready data (what `--json` prints)."""
    return {
        "name": r.name,
        "family": r.family,
        "mlflow_version": r.mlflow_version,
        "uri": None if r.legacy else r.uri,
        "legacy": r.legacy,
        "display_name": r.display_name,
        "type": r.model_type,
        "kind": r.kind,
        "version": r.version,
        "grade": r.grade,
        "grade_score": r.tags.get("rl_trading.grade_score"),
        "metric": {"name": r.metric_name, "value": r.metric_value},
        "metrics": r.metrics,
        "lineage": r.lineage,
        "aliases": r.aliases,
        "stage": r.stage,
        "data_fingerprint": r.data_fingerprint,
        "signature": r.signature,
        "source": r.source,
        "mlflow_run": r.run_id,
        "created": r.created,
    }


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="NAME/VERSION (or NAME, NAME@ALIAS) to promote.")],
    alias: Annotated[
        str, typer.Option("--alias", help="Alias to set: champion, challenger, ...")
    ] = "champion",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Point an alias (default `champion`) of the family at this version."""
    if not ALIAS_RE.fullmatch(alias) or re.fullmatch(r"(?i)v\d+|latest", alias):
        raise RegistryError(
            f"invalid alias {alias[:64]!r}: use 1-64 letters, digits, _ or - "
            "(not 'latest' or v<number>, which MLflow reserves)"
        )
    registry, _ = _registry(config, sets, tracking_uri)
    rec = registry.promote(name, alias)
    console.print(
        f"[green]{rec.display_name}[/] is now {rec.family}@{alias} "
        f"(roll back with `rl-trading models rollback {rec.family} --alias {alias}`)",
        soft_wrap=True,
    )


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Family NAME.")],
    alias: Annotated[str, typer.Option("--alias", help="Alias to move back.")] = "champion",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move an alias back to the version that held it before."""
    registry, _ = _registry(config, sets, tracking_uri)
    rec = registry.rollback(name, alias)
    console.print(f"[green]{rec.family}@{alias}[/] is back on {rec.display_name}", soft_wrap=True)


@app.command()
def migrate(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Move old-layout models (one registered model per version) into families."""
    registry, _ = _registry(config, sets, tracking_uri)
    moved = registry.migrate()
    for old, new in moved:
        console.print(f"{old} -> [bold]{new}[/]", soft_wrap=True)
    console.print(
        f"migrated {len(moved)} model(s); old names still resolve to their new versions"
        if moved
        else "nothing to migrate: every model is already in a family"
    )
