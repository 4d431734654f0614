"""MLflow logging of a training phase: params, per-iteration metrics, tags and artifacts."""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rl_trading.config import AppConfig, save_config
from rl_trading.tracking import mlflow_run

logger = logging.getLogger(__name__)
_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Finite numeric metrics with MLflow-safe names."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[_BAD.sub("_", key)] = float(value)
    return out


class PhaseTracker:
    """Thin wrapper over an active MLflow run (or a no-op when tracking is off)."""

    def __init__(self, run: Any | None):
        self.run = run

    @property
    def run_id(self) -> str | None:
        """MLflow run id, or None when not tracking."""
        return self.run.info.run_id if self.run is not None else None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log per-iteration metrics."""
        if self.run is None:
            return
        import mlflow  # heavy: mlflow

        clean = clean_metrics(metrics)
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_dir(self, path: str | Path, artifact_path: str) -> None:
        """Log a folder (e.g. the best checkpoint) as artifacts."""
        if self.run is None or not Path(path).exists():
            return
        import mlflow  # heavy: mlflow

        mlflow.log_artifacts(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Add tags to the run."""
        if self.run is not None:
            import mlflow  # heavy: mlflow

            mlflow.set_tags(dict(tags))


@contextlib.contextmanager
def phase_tracking(
    cfg: AppConfig,
    phase_name: str,
    run_dir: Path,
    tags: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
    enabled: bool = True,
    resume_run_id: str | None = None,
) -> Iterator[PhaseTracker]:
    """An MLflow run for one phase: flattened config params, standard + data tags, config file.

    `resume_run_id` continues the phase's earlier run (resume from a checkpoint).
    """
    if not enabled:
        yield PhaseTracker(None)
        return

    all_tags = {"phase": phase_name, "run_dir": str(run_dir.resolve()), **(tags or {})}
    with mlflow_run(
        cfg.train.experiment_name,
        f"{run_dir.name}-{phase_name}",
        # the run dir this phase really writes to, not the `runs/{timestamp}` template
        params={**cfg.flat(), "run_dir": str(run_dir.resolve())},
        tags=all_tags,
        tracking_uri=tracking_uri or cfg.tracking.tracking_uri,
        system_metrics=cfg.tracking.system_metrics,
        resume_run_id=resume_run_id,
    ) as run:
        import mlflow  # heavy: mlflow

        cfg_path = save_config(cfg, run_dir / "config.yaml")
        mlflow.log_artifact(str(cfg_path))
        for before in sorted(run_dir.glob("config.before-*.yaml")):  # resumed with a change
            mlflow.log_artifact(str(before), artifact_path="config_history")
        yield PhaseTracker(run)
