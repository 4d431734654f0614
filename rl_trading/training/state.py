"""The run-state file: which phases finished, iterations done, last and best checkpoints."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


@dataclass
class PhaseState:
    """Progress of one phase."""

    status: str = "pending"  # pending | running | done
    iteration: int = 0
    total_iterations: int = 0
    env_steps: int = 0
    last_checkpoint: str | None = None
    checkpoint_iteration: int = 0  # iteration the last checkpoint holds (resume point)
    best_checkpoint: str | None = None
    best_val_sharpe: float | None = None
    # every validation Sharpe the best checkpoint was chosen among (trials, for the DSR)
    val_sharpes: list[float] = field(default_factory=list)
    last_val: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None


@dataclass
class RunState:
    """All phases of one run directory, persisted as JSON after every change."""

    run_dir: Path
    phases: dict[str, PhaseState] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunState:
        """Read `run_dir/state.json`, or a fresh state when absent."""
        run_dir = Path(run_dir)
        path = run_dir / STATE_FILE
        if not path.is_file():
            return cls(run_dir=run_dir)
        raw = json.loads(path.read_text())
        known = set(PhaseState.__dataclass_fields__)
        phases = {
            k: PhaseState(**{f: x for f, x in v.items() if f in known})
            for k, v in raw.get("phases", {}).items()
        }
        return cls(run_dir=run_dir, phases=phases)

    def selection_trials(self) -> list[float]:
        """Validation Sharpes of every checkpoint evaluated for selection, all phases."""
        return [s for name in sorted(self.phases) for s in self.phases[name].val_sharpes]

    def phase(self, name: str) -> PhaseState:
        """State of `name`, created on first use."""
        return self.phases.setdefault(name, PhaseState())

    def save(self) -> Path:
        """Write atomically (temp file + rename)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / STATE_FILE
        tmp = path.with_suffix(".json.tmp")
        data: dict[str, Any] = {"phases": {k: asdict(v) for k, v in self.phases.items()}}
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path
