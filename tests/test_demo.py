"""The main job end to end through the CLI: `rl-trading demo` on a tiny config, then
`rl-trading models list` in the same workspace sees what it registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.rllib

CLI = [sys.executable, "-m", "rl_trading"]

TINY = {
    "base": str(Path(__file__).resolve().parent.parent / "configs" / "default.yaml"),
    "seed": 3,
    "data": {
        "source": "synthetic",
        "symbols": ["AAA", "BBB"],
        "embargo_bars": 5,
        "walk_forward_folds": 2,
        "synthetic": {"n_bars": 1500, "seed": 4, "signal_strength": 0.5},
    },
    "train": {"window_size": 8},
    "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
    "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
    "policy": {"hidden_sizes": [16]},
    "resources": {"num_env_runners": 0, "num_cpus": 2},
    "phases": {
        "phase1_timesteps": 128,
        "phase2_timesteps": 128,
        "phase3_timesteps": 128,
        "eval_interval": 1,
    },
    "supervised": {"models": ["analyst"], "timeframes": ["1m"], "n_estimators": 10},
    "evaluation": {"seeds": [0, 1]},
    "tracking": {"system_metrics": False},
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["COLUMNS"] = "200"
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_demo_runs_the_whole_pipeline_and_registers_models(workspace):
    cfg_path = workspace / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    done = _run(["demo", "-c", str(cfg_path), "--run-dir", "runs/demo"], workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    out = done.stdout
    for stage in ("Market data", "analyst", "phase1", "phase2", "phase3", "Walk-forward"):
        assert stage in out, f"{stage!r} missing from demo output"
    assert "rl-trading demo: done" in out

    run_dir = workspace / "runs" / "demo"
    state = json.loads((run_dir / "state.json").read_text())
    assert {"phase1", "phase2", "phase3"} <= set(state["phases"])
    report = json.loads((run_dir / "backtest" / "report.json").read_text())
    assert {"policy", "buy_and_hold", "equal_weight", "flat", "random"} <= set(report["strategies"])
    assert report["walk_forward"]["n_runs"] == 2 * 2  # folds x seeds
    for png in ("equity.png", "drawdown.png"):
        assert (run_dir / "backtest" / png).stat().st_size > 5_000
    assert (run_dir / "config.yaml").is_file()

    listed = _run(["models", "list"], workspace)
    assert listed.returncode == 0, listed.stderr
    assert "hierarchical_ppo/1" in listed.stdout and "1.0.0" in listed.stdout
    # One Sharpe: the registered version carries the report's test-split Sharpe (graded there),
    # and the report says how it annualised and which risk-free rate it used.
    from rl_trading.registry import ModelRegistry

    sharpe = report["strategies"]["policy"]["sharpe_ratio"]
    assert ModelRegistry().resolve("hierarchical_ppo").metric_value == pytest.approx(sharpe)
    assert f"{sharpe:.3f}" in listed.stdout
    meta = report["meta"]
    assert meta["risk_free_rate"] == 0.0 and meta["periods_per_year"] > 0
    assert meta["bars"].startswith("test split") and meta["n_trials"] >= 1
    assert report["walk_forward"]["retrained"] is False
    assert "analyst_1m/1" in listed.stdout
