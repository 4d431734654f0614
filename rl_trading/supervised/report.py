"""The rich results table of a supervised run: each model next to its baselines."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from rl_trading.evaluation.report import PackedTables


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def results_table(records: list[Any]) -> Any:
    """Each model (column) next to its baselines: accuracy, F1, CV mean±std, majority-class and
    previous-direction accuracy, and whether it beats the better baseline on the held-out
    test part. A renderable that splits into several tables to fit the console width."""
    rows = ["accuracy", "F1", "CV acc mean±std", "majority", "prev-direction", "beats baseline?"]
    columns = []
    notes = []
    for rec in records:
        name = escape(f"{rec.model_type} {rec.timeframe}")
        m = rec.metrics
        if rec.status != "ok":
            columns.append((name, ["-"] * (len(rows) - 1) + [f"[yellow]{rec.status}[/]"]))
            notes.append(f"{name}: {escape(str(rec.note))}")
            continue
        cv = f"{_fmt(m.get('cv_accuracy_mean'))}±{_fmt(m.get('cv_accuracy_std'))}"
        beats = "[green]yes[/]" if m.get("beats_baselines") else "[red]no[/]"
        columns.append(
            (
                name,
                [
                    _fmt(m.get("accuracy")),
                    _fmt(m.get("f1")),
                    cv,
                    _fmt(m.get("majority_accuracy")),
                    _fmt(m.get("prev_direction_accuracy")),
                    beats,
                ],
            )
        )
    return PackedTables(
        "Supervised models (held-out test = last part of the data, time-ordered)",
        "metric",
        rows,
        columns,
        caption="; ".join(notes) or None,
    )
