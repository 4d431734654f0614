"""A paper session's report: its backtest on the very bars it saw, a PNG of both equity
curves, and an MLflow run (equity, drawdown, turnover, per-bar latency)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rl_trading import metrics
from rl_trading.evaluation.backtest import run_policy
from rl_trading.paper.broker import first_decision_bar
from rl_trading.paper.ledger import Ledger
from rl_trading.paper.model import ResolvedModel
from rl_trading.tracking import mlflow_run

EXPERIMENT = "paper_trading"


def session_backtest(model: ResolvedModel, ledger: Ledger, session: str) -> pd.Series | None:
    """The backtest's equity over the bars the session recorded (None before a decision):
    what the session should have made, bar for bar."""
    bars = ledger.bar_rows(session)
    if not bars or len(next(iter(bars.values()))) < first_decision_bar(model.cfg) + 2:
        return None
    try:
        run, _ = run_policy(model.bundle, bars, model.cfg, seed=model.cfg.seed)
    except Exception:  # noqa: BLE001 - a report never breaks a finished session
        return None
    return pd.Series(run.equity, index=run.index)


def traded_per_bar(eq: pd.DataFrame, orders: list[dict[str, Any]]) -> np.ndarray:
    """Notional bought + sold at each equity row's bar: the row's `traded` (the env's fills
    and stop exits). Rows written before the ledger kept it fall back to the orders (|units
    after - units before| x open per symbol: a stop exit counted at the open, net of a fill
    on the same bar)."""
    recorded = eq["traded"] if "traded" in eq.columns else pd.Series(np.nan, index=eq.index)
    out = pd.Series(0.0, index=eq.index)
    for o in orders:
        ts = pd.Timestamp(o["fill_ts"])
        if ts in out.index:
            out[ts] += abs(float(o["units_after"]) - float(o["units_before"])) * float(o["price"])
    known = recorded.notna()
    out[known] = recorded[known].astype(float)
    return out.to_numpy(np.float64)


def write_report(
    model: ResolvedModel, ledger: Ledger, session: str, out_dir: Path, mlflow: bool = True
) -> dict[str, Any]:
    """equity.png (live next to the backtest of the same bars) and report.json in `out_dir`;
    with `mlflow`, the session's metrics in an MLflow run of experiment `paper_trading`."""
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # heavy: matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    eq = ledger.equity_of(session)
    back = session_backtest(model, ledger, session)
    info: dict[str, Any] = {"session": session, "bars": int(len(eq))}
    if not eq.empty:
        traded = traded_per_bar(eq, ledger.orders_of(session))
        equity = eq["equity"].to_numpy(np.float64)
        # each bar's traded notional over the equity before it (row 0: the start)
        turnover = np.concatenate([[0.0], metrics.turnover_per_period(traded, equity)])
        info.update(
            final_equity=float(eq["equity"].iloc[-1]),
            max_drawdown=float(eq["drawdown"].max()),
            turnover=metrics.turnover(traded, equity),
            latency_p50_ms=float(np.percentile(eq["latency_ms"], 50)),
            latency_p99_ms=float(np.percentile(eq["latency_ms"], 99)),
        )
        if back is not None:
            info["backtest_final_equity"] = float(back.iloc[-1])
            info["parity_rel_diff"] = abs(info["final_equity"] / float(back.iloc[-1]) - 1.0)
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot(eq.index, eq["equity"], label="paper (live)", lw=1.6)
        if back is not None:
            ax.plot(back.index, back.to_numpy(), label="backtest, same bars", lw=1.0, ls="--")
        ax.set_title(f"paper session {session}")
        ax.legend()
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out_dir / "equity.png", dpi=100)
        plt.close(fig)
        info["plot"] = str(out_dir / "equity.png")
    (out_dir / "report.json").write_text(json.dumps(info, indent=2))
    if mlflow and not eq.empty:
        _log_mlflow(model, session, eq, turnover, info, out_dir)
    return info


def _log_mlflow(model: ResolvedModel, session: str, eq: pd.DataFrame, turnover: np.ndarray,
                info: dict[str, Any], out_dir: Path) -> None:  # fmt: skip
    """One MLflow run per `paper run` of the session (run name = session): every bar's
    equity, drawdown, turnover and latency by bar number, the summary and the plot."""
    import mlflow  # heavy, optional at this layer
    from mlflow.entities import Metric  # heavy: mlflow

    params = {"model": model.name, "session": session, "symbols": ",".join(model.symbols)}
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, step)
        for step, (row, turn) in enumerate(zip(eq.itertuples(), turnover, strict=True))
        for key, value in (("equity", row.equity), ("drawdown", row.drawdown),
                           ("turnover", turn), ("latency_ms", row.latency_ms))
    ]  # fmt: skip
    with mlflow_run(EXPERIMENT, session, params=params,
                    tracking_uri=model.cfg.tracking.tracking_uri) as run:  # fmt: skip
        client = mlflow.tracking.MlflowClient()
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
        mlflow.log_metrics({k: v for k, v in info.items() if isinstance(v, float)})
        for name in ("equity.png", "report.json"):
            if (out_dir / name).is_file():
                mlflow.log_artifact(str(out_dir / name))
