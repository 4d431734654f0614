"""The table of PBT trials: one row per trial, as a DataFrame, a CSV and a rich table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from rl_trading.evaluation.report import PackedTables
from tuning.trainable import HPARAM_FIELDS, trial_index


def trials_table(results: Any, metric: str, mode: str, exploits: pd.DataFrame) -> pd.DataFrame:
    """Final hyperparameters, final and best objective, iterations and exploits per trial."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id", Path(result.path).name))
        idx = trial_index(trial_id)
        history = result.metrics_dataframe
        values = (
            history[metric].dropna()
            if history is not None and metric in history
            else pd.Series(dtype=float)
        )
        best = (values.max() if mode == "max" else values.min()) if len(values) else math.nan
        row: dict[str, Any] = {
            "trial": idx,
            "trial_id": trial_id,
            "status": "error" if result.error else "done",
            "iterations": int(metrics.get("training_iteration", 0)),
            metric: float(metrics.get(metric, math.nan)),
            f"best_{metric}": float(best),
            "exploits": int((exploits["target"] == idx).sum()) if not exploits.empty else 0,
        }
        for key in HPARAM_FIELDS:
            if key in (result.config or {}):
                row[key] = float(result.config[key])
        row["checkpoint"] = result.checkpoint.path if result.checkpoint is not None else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(metric, ascending=(mode == "min"), na_position="last")
    return table.reset_index(drop=True)


_SHORT = {
    "iterations": "iter",
    "clip_param": "clip",
    "entropy_coeff": "entropy",
    "exploits": "exploited",
}


def render_table(table: pd.DataFrame, metric: str) -> Any:
    """The trials (best first), one row each; columns that do not fit the console width go into
    a further table that repeats the trial number, so no cell is cut at 80 columns."""
    hidden = {"trial_id", "checkpoint"}
    if "status" in table and (table["status"] == "done").all():
        hidden.add("status")
    shown = [c for c in table.columns if c not in hidden]
    label = "trial" if "trial" in shown else shown[0]
    rows = [str(v) for v in table[label]] if len(shown) else []
    columns = []
    for col in shown:
        if col == label:
            continue
        cells = []
        for value in table[col]:
            if isinstance(value, float):
                cells.append(f"{value:.2e}" if col in ("lr", "entropy_coeff") else f"{value:.3f}")
            else:
                cells.append(str(value))
        columns.append((_SHORT.get(col, col), cells))
    return PackedTables(f"PBT trials (by {metric})", label, rows, columns)
