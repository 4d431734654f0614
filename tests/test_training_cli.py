"""`rl-trading train ...` end to end: a tiny phase against a real MLflow server on loopback,
resume through the CLI, and one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from rl_trading.cli.main import main
from rl_trading.training.state import RunState

pytestmark = pytest.mark.rllib

TINY = {
    "seed": 11,
    "data": {
        "source": "synthetic",
        "symbols": ["AAA", "BBB"],
        "embargo_bars": 5,
        "synthetic": {"n_bars": 900, "seed": 2},
    },
    "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
    "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
    "policy": {"hidden_sizes": [16]},
    "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 2},
    "phases": {
        "phase1_timesteps": 256,
        "phase2_timesteps": 128,
        "phase3_timesteps": 128,
        "eval_interval": 1,
        "checkpoint_interval": 1,
    },
    "tracking": {"system_metrics": False},
    "train": {"experiment_name": "cli_test"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
            "--default-artifact-root", str(tmp_path / "art"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_phase1_logs_to_mlflow_server(ray_session, workspace, mlflow_server):
    cfg_path = workspace / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    rc = main(
        ["train", "phase1", "-c", str(cfg_path), "--run-dir", "run1",
         "--tracking-uri", mlflow_server, "--set", "ppo.lr=5e-4"]
    )  # fmt: skip
    assert rc == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("cli_test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["ppo.lr"] == "0.0005"
    assert run.data.params["data.symbols"] == "['AAA', 'BBB']"
    for key in ("val_sharpe", "episode_return_mean", "env_steps", "specialist_AAA/policy_loss"):
        assert key in run.data.metrics, key
    history = client.get_metric_history(run.info.run_id, "val_sharpe")
    assert [m.step for m in history] == [1, 2]
    tags = run.data.tags
    assert len(tags["data_fingerprint"]) == 64 and tags["phase"] == "phase1"
    assert tags["git_commit"] and tags["ray_version"].startswith("2.")
    arts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in arts and "checkpoints" in arts


def test_cli_pipeline_resume_and_errors(ray_session, workspace, capsys):
    cfg_path = workspace / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    base = ["-c", str(cfg_path), "--run-dir", "run2"]
    assert main(["train", "phase1", *base]) == 0
    assert RunState.load(workspace / "run2").phases["phase1"].status == "done"
    # pipeline --resume skips the finished phase 1 and runs phases 2 and 3.
    assert main(["train", "pipeline", *base, "--resume"]) == 0
    state = RunState.load(workspace / "run2")
    assert [state.phases[p].iteration for p in ("phase1", "phase2", "phase3")] == [2, 1, 1]
    out = capsys.readouterr().out
    assert "phase3" in out and "best val Sharpe" in out
    # Phase 2 in an empty run dir without --from-checkpoint, and a missing checkpoint.
    assert main(["train", "phase2", "-c", str(cfg_path), "--run-dir", "empty"]) == 4
    rc = main(["train", "phase3", "-c", str(cfg_path), "--from-checkpoint", "nowhere"])
    assert rc == 4
    err = capsys.readouterr().err
    assert "checkpoint not found: nowhere" in err and "Traceback" not in err
