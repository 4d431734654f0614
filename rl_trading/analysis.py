"""Analysis of a run directory for notebooks: MLflow runs and Tune (PBT) results loaded as
DataFrames, and matplotlib figures of learning curves per policy, the PBT lineage and backtest
equity / drawdown against the baselines. Functions return data or figures; nothing is shown.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from rl_trading.config import AppConfig, load_config, periods_per_year_of
from rl_trading.errors import CheckpointError, ConnectionFailure, RunDirError
from rl_trading.evaluation.backtest import backtest
from rl_trading.evaluation.report import HEADLINE
from rl_trading.evaluation.selection import select_bars, trial_count
from rl_trading.tracking import DEFAULT_DB_NAME, configure_mlflow, expand_env_vars
from rl_trading.training.state import RunState

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rl_trading.evaluation.backtest import BacktestResult

RETURN_SUFFIX = "/episode_return_mean"


def _plt() -> Any:
    import matplotlib  # heavy: matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython  # optional: IPython (notebooks)

        return get_ipython() is not None
    except ImportError:
        return False


def load_state(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Phases of `run_dir/state.json` (status, iterations, checkpoints, MLflow run ids)."""
    path = Path(run_dir) / "state.json"
    if not path.is_file():
        raise CheckpointError(f"no state.json in {run_dir} (not a training run directory)")
    # RunState resolves the checkpoint paths (stored relative to the run dir)
    return {name: asdict(ps) for name, ps in RunState.load(run_dir).phases.items()}


def load_run_config(run_dir: str | Path) -> AppConfig:
    """The config a run really used (`run_dir/config.yaml`), else the defaults.

    `config.yaml` stores a literal database password as `***`: such a URL is dropped, so the
    data layer takes RL_TRADING_DB_URL (as a checkpoint's stored config does).
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return AppConfig()
    raw = yaml.safe_load(path.read_text()) or {}
    data = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(data, dict) and "***" in str(data.get("db_url") or ""):
        data["db_url"] = None
        return load_config(None, [], extra=raw)
    return load_config(path)


def _search_roots() -> list[Path]:
    """Folders a relative path or the default store may be relative to, in order: the
    workspace (RL_TRADING_WORKSPACE), the directory the shell started Jupyter from ($PWD), the
    kernel's working directory (a notebook's kernel runs in `notebooks/`) and its parent."""
    roots = [os.environ.get("RL_TRADING_WORKSPACE"), os.environ.get("PWD"), os.getcwd()]
    out: list[Path] = []
    for root in [*roots, str(Path.cwd().parent)]:
        if root and Path(root).is_dir() and Path(root).resolve() not in out:
            out.append(Path(root).resolve())
    return out


def resolve_run_dir(run_dir: str | Path | None = None) -> Path:
    """The absolute run directory: `run_dir` as given (absolute, or relative to one of the
    search roots), or with None the newest `runs/*` holding a state.json. RunDirError (one
    line) when there is none, so a notebook never analyses an empty folder."""
    roots = _search_roots()
    if run_dir is None or str(run_dir) == "":
        found = [
            d for root in roots for d in (root / "runs").glob("*") if (d / "state.json").is_file()
        ]
        if not found:
            where = ", ".join(str(r / "runs") for r in roots)
            raise RunDirError(f"no run directory found in {where}: set RL_TRADING_RUN_DIR")
        return max(found, key=lambda d: (d / "state.json").stat().st_mtime)
    path = Path(run_dir).expanduser()
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for cand in candidates:
        if (cand / "state.json").is_file():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise RunDirError(f"not a training run directory (no state.json): {tried}")


def run_tracking_uri(run_dir: str | Path, tracking_uri: str | None = None) -> str:
    """The MLflow store of a run, as an absolute URI.

    `tracking_uri` (or MLFLOW_TRACKING_URI) when given, a relative SQLite path made absolute
    against the search roots; else the first `mlflow.db` in the workspace the run was trained
    in (the run dir's parents), RL_TRADING_WORKSPACE, $PWD or the kernel's directory. A SQLite
    file that does not exist is an error (ConnectionFailure), never a new empty store.
    """
    run_dir = Path(run_dir).resolve()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    roots = [run_dir.parent.parent, run_dir.parent, run_dir, *_search_roots()]
    if not uri:
        for root in roots:
            if (root / DEFAULT_DB_NAME).is_file():
                return f"sqlite:///{root / DEFAULT_DB_NAME}"
        raise ConnectionFailure(
            f"no {DEFAULT_DB_NAME} found for {run_dir} (looked in its workspace, "
            "RL_TRADING_WORKSPACE and the current directory): set "
            "MLFLOW_TRACKING_URI=sqlite:////absolute/path/mlflow.db"
        )
    uri = expand_env_vars(uri)
    if not uri.startswith("sqlite:///"):
        return uri
    db = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    if not db.is_absolute():
        hits = [root / db for root in roots if (root / db).is_file()]
        if hits:
            return f"sqlite:///{hits[0]}"
    elif db.is_file():
        return uri
    raise ConnectionFailure(
        f"MLflow store {uri} does not exist (relative SQLite paths are taken from the run's "
        "workspace): give an absolute path, e.g. sqlite:////abs/path/mlflow.db"
    )


def mlflow_runs(run_dir: str | Path, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per MLflow run of the phases in `run_dir` (ids from state.json, then the store
    found by :func:`run_tracking_uri`)."""
    import mlflow  # heavy: mlflow
    from mlflow.exceptions import MlflowException  # heavy: mlflow

    uri = configure_mlflow(run_tracking_uri(run_dir, tracking_uri))
    client = mlflow.MlflowClient()
    rows = []
    for phase, ps in sorted(load_state(run_dir).items()):
        run_id = ps.get("mlflow_run_id")
        if not run_id:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise ConnectionFailure(
                f"{phase}'s MLflow run {run_id} is not in {uri}: set MLFLOW_TRACKING_URI to the "
                "store the run was trained with"
            ) from None
        rows.append(
            {
                "phase": phase,
                "run_id": run_id,
                "status": run.info.status,
                "start": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
                "iterations": ps.get("iteration", 0),
                "best_val_sharpe": ps.get("best_val_sharpe"),
                **{f"metric.{k}": v for k, v in sorted(run.data.metrics.items())},
            }
        )
    return pd.DataFrame(rows)


def learning_curves(run_dir: str | Path, tracking_uri: str | None = None) -> pd.DataFrame:
    """Long table (phase, policy, iteration, episode_return_mean) from the MLflow histories."""
    import mlflow  # heavy: mlflow

    runs = mlflow_runs(run_dir, tracking_uri)
    client = mlflow.MlflowClient()
    rows = []
    for _, run in runs.iterrows():
        keys = [c[len("metric.") :] for c in runs.columns if c.startswith("metric.")]
        for key in keys:
            if not key.endswith(RETURN_SUFFIX) or pd.isna(run.get(f"metric.{key}")):
                continue
            for m in client.get_metric_history(run["run_id"], key):
                rows.append(
                    {
                        "phase": run["phase"],
                        "policy": key[: -len(RETURN_SUFFIX)],
                        "iteration": m.step,
                        "episode_return_mean": m.value,
                    }
                )
    cols = ["phase", "policy", "iteration", "episode_return_mean"]
    return pd.DataFrame(rows, columns=cols).sort_values(["phase", "policy", "iteration"])


def plot_learning_curves(curves: pd.DataFrame) -> Figure:
    """One panel per phase, one line per policy: mean episode return over iterations."""
    plt = _plt()
    phases = sorted(curves["phase"].unique()) or ["(none)"]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 3.8), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        sub = curves[curves["phase"] == phase]
        for policy, grp in sub.groupby("policy"):
            # markers: a phase whose episodes rarely finish has few points (one is no line)
            ax.plot(grp["iteration"], grp["episode_return_mean"], marker="o", ms=3, label=policy)
        if sub.empty:
            ax.text(0.5, 0.5, "no finished episode logged", ha="center", transform=ax.transAxes)
        ax.set_title(f"{phase}: episode return per policy")
        ax.set_xlabel("training iteration")
        ax.set_ylabel("mean episode return (reward)")
        ax.grid(alpha=0.3)
        if len(sub):
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def find_pbt_runs(run_dir: str | Path) -> list[Path]:
    """PBT run directories (those holding `best.json`) at or below `run_dir`."""
    root = Path(run_dir)
    return sorted(p.parent for p in root.rglob("best.json"))


def tune_results(pbt_dir: str | Path) -> pd.DataFrame:
    """Every reported Tune row of every trial (the trials' progress.csv files) with `trial`."""
    from tuning.trainable import trial_index  # heavy: ray

    frames = []
    for csv in sorted(Path(pbt_dir).rglob("progress.csv")):
        df = pd.read_csv(csv)
        if df.empty:
            continue
        trial_id = str(df["trial_id"].iloc[0]) if "trial_id" in df else csv.parent.name
        df["trial"] = trial_index(trial_id)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_pbt_lineage(pbt_dir: str | Path, metric: str | None = None) -> Figure:
    """Objective and each mutated hyperparameter over iterations per trial; dots mark exploits
    (the trial took over another trial's weights and perturbed its hyperparameters)."""
    from tuning.lineage import read_exploits  # heavy: ray

    plt = _plt()
    pbt_dir = Path(pbt_dir)
    best_file = pbt_dir / "best.json"
    best = json.loads(best_file.read_text()) if best_file.is_file() else {}
    metric = metric or best.get("metric", "val_sharpe")
    rows = tune_results(pbt_dir)
    exploits = read_exploits(pbt_dir)
    hps = [c for c in rows.columns if str(c).startswith("hp/")]
    panels = [metric, *hps]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.3 * len(panels)), sharex=True)
    axes = np.atleast_1d(axes)
    for trial, grp in rows.groupby("trial") if len(rows) else []:
        grp = grp.sort_values("training_iteration")
        for ax, col in zip(axes, panels, strict=True):
            if col not in grp:
                continue
            (line,) = ax.step(grp["training_iteration"], grp[col], where="post")
            line.set_label(f"trial {trial}")
            for _, ev in exploits[exploits["target"] == trial].iterrows():
                after = grp[grp["training_iteration"] > ev["target_iter"]]
                if len(after):
                    ax.plot(after["training_iteration"].iloc[0], after[col].iloc[0], "o",
                            color=line.get_color(), markeredgecolor="black")  # fmt: skip
    for ax, col in zip(axes, panels, strict=True):
        ax.set_ylabel(col.removeprefix("hp/"))
        ax.grid(alpha=0.3)
        if col == "hp/lr":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7, ncol=4)
    axes[-1].set_xlabel("training iteration")
    fig.suptitle(f"PBT lineage: {len(exploits)} exploits")
    fig.tight_layout()
    return fig


def best_checkpoint(run_dir: str | Path) -> Path:
    """Best checkpoint of the last finished phase in `run_dir` (paths as state.json has them)."""
    done = {k: v for k, v in load_state(run_dir).items() if v.get("status") == "done"}
    if not done:
        raise CheckpointError(f"no finished phase in {run_dir}")
    ps = done[max(done)]
    path = Path(ps.get("best_checkpoint") or ps["last_checkpoint"])
    run_dir = Path(run_dir)
    if not path.is_absolute() and run_dir.name in path.parts:  # relative to the training cwd
        path = run_dir.joinpath(*path.parts[path.parts.index(run_dir.name) + 1 :])
    return path


def backtest_run(run_dir: str | Path, split: str = "val", seed: int | None = None) -> Any:
    """Backtest the run's best checkpoint next to the baselines on `split` of its own data."""
    cfg = load_run_config(run_dir)
    bars, train, desc = select_bars(cfg, None, split)
    source = str(best_checkpoint(run_dir))
    n_trials, trial_sharpes = trial_count(source, cfg, periods_per_year_of(cfg, train))
    result = backtest(
        source, bars, cfg, seed=cfg.seed if seed is None else seed, scaler_bars=train,
        n_trials=n_trials, trial_sharpes=trial_sharpes,
    )  # fmt: skip
    result.meta["split"] = split
    result.meta.setdefault("bars", desc)
    return result


def equity_frame(result: BacktestResult) -> pd.DataFrame:
    """Equity of the policy and every baseline, normalised to 1.0 at the start."""
    cols = {}
    for name, run in result.runs.items():
        eq = np.asarray(run.equity, dtype=np.float64)
        cols[name] = pd.Series(eq / eq[0], index=run.index[: len(eq)])
    return pd.DataFrame(cols)


def drawdown_frame(equity: pd.DataFrame) -> pd.DataFrame:
    """Fraction below the running peak of each equity column (0 at a new high, negative below)."""
    return equity / equity.cummax() - 1.0


def plot_equity_drawdown(result: BacktestResult) -> Figure:
    """Equity (top) and drawdown (bottom) of the policy against the baselines."""
    plt = _plt()
    equity = equity_frame(result)
    dd = drawdown_frame(equity)
    fig, (ax_eq, ax_dd) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[2, 1])
    for name in equity:
        width = 2.0 if name == "policy" else 1.0
        ax_eq.plot(equity.index, equity[name], lw=width, label=name)
        ax_dd.plot(dd.index, dd[name], lw=width, label=name)
    meta = getattr(result, "meta", {}) or {}
    where = f"the {meta['split']} split" if meta.get("split") else "the evaluated bars"
    span = f", {str(meta['start'])[:10]} .. {str(meta['end'])[:10]}" if meta.get("start") else ""
    ax_eq.set_title(f"Equity vs baselines on {where}{span} (1.0 at start)")
    ax_dd.set_title("Drawdown")
    ax_eq.set_ylabel("equity / initial equity (x)")
    ax_dd.set_ylabel("fraction below peak")
    ax_dd.set_xlabel("date (UTC)")
    for ax in (ax_eq, ax_dd):
        ax.grid(alpha=0.3)
    ax_eq.legend(fontsize=8)
    ax_dd.legend(fontsize=7, ncol=3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def metrics_table(result: BacktestResult) -> pd.DataFrame:
    """Headline metrics (rows) of the policy and each baseline (columns)."""
    return pd.DataFrame(
        {name: {k: m.get(k) for k in HEADLINE if k in m} for name, m in result.metrics.items()}
    )
