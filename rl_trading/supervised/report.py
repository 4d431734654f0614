"""The rich results table of a supervised run: each model next to its baselines."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def results_table(records: list[Any]) -> Any:
    """A `rich.table.Table`: model, timeframe, accuracy, F1, CV mean±std, both baselines,
    and whether the model beats the better baseline on the held-out test part."""
    from rich.table import Table

    table = Table(title="Supervised models (held-out test = last part of the data, time-ordered)")
    for name in (
        "model",
        "timeframe",
        "accuracy",
        "F1",
        "CV acc mean±std",
        "majority",
        "prev-direction",
        "beats baseline?",
    ):
        table.add_column(name, justify="left" if name in ("model", "timeframe") else "right")
    for rec in records:
        m = rec.metrics
        if rec.status != "ok":
            table.add_row(
                rec.model_type,
                rec.timeframe,
                "-",
                "-",
                "-",
                "-",
                "-",
                f"[yellow]{rec.status}[/]: {rec.note}",
            )
            continue
        cv = f"{_fmt(m.get('cv_accuracy_mean'))}±{_fmt(m.get('cv_accuracy_std'))}"
        beats = "[green]yes[/]" if m.get("beats_baselines") else "[red]no[/]"
        table.add_row(
            rec.model_type,
            rec.timeframe,
            _fmt(m.get("accuracy")),
            _fmt(m.get("f1")),
            cv,
            _fmt(m.get("majority_accuracy")),
            _fmt(m.get("prev_direction_accuracy")),
            beats,
        )
    return table
