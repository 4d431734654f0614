"""Operating the MLflow store: system metrics per run, `mlflow server` on the embedded store
answering REST calls, and two processes writing to one SQLite store at the same time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from rl_trading.config import AppConfig
from rl_trading.training.mlflow_log import phase_tracking

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tracked_phase_records_system_metrics(workspace, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    cfg = AppConfig()
    assert cfg.tracking.system_metrics  # on by default
    with phase_tracking(cfg, "phase1", workspace / "run") as tracker:
        tracker.log({"episode_return_mean": 1.0}, step=1)
        time.sleep(3.5)
        run_id = tracker.run_id
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    assert metrics.get("system/cpu_utilization_percentage", -1) >= 0
    assert metrics.get("system/system_memory_usage_megabytes", 0) > 0
    history = mlflow.MlflowClient().get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2  # sampled every second for > 2 s


def test_mlflow_server_serves_the_embedded_store(workspace):
    import mlflow

    from rl_trading.tracking import check_tracking, mlflow_run

    with mlflow_run("ops_server_check", "seed-run", params={"a": 1}) as run:
        mlflow.log_metric("sharpe", 1.25, step=3)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", "sqlite:///mlflow.db"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        cmd,
        cwd=workspace,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not come up in 90 s"
            time.sleep(0.5)
        check_tracking(uri)  # what `--tracking-uri http://...` runs first
        with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=50") as r:
            names = [e["name"] for e in json.load(r)["experiments"]]
        assert "ops_server_check" in names
        got = f"{uri}/api/2.0/mlflow/runs/get?run_id={run.info.run_id}"
        with urllib.request.urlopen(got) as r:
            data = json.load(r)["run"]["data"]
        assert {m["key"]: m["value"] for m in data["metrics"]}["sharpe"] == 1.25
        assert {p["key"]: p["value"] for p in data["params"]}["a"] == "1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


_WRITER = textwrap.dedent(
    """
    import sys, mlflow
    from rl_trading.tracking import mlflow_run
    name = sys.argv[1]
    with mlflow_run("ops_concurrent", name, params={"writer": name}) as run:
        for step in range(40):
            sign = 1 if name == "a" else -1
            mlflow.log_metrics({"value": step * sign, "step2": step}, step=step)
        print(run.info.run_id)
    """
)


def test_two_processes_write_to_one_sqlite_store(workspace):
    import mlflow

    env = {**os.environ, "RL_TRADING_WORKSPACE": str(workspace)}
    env.pop("MLFLOW_TRACKING_URI", None)
    # Both start on a fresh store, so they also race on creating its schema and experiment.
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", _WRITER, name],
            cwd=workspace,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    }
    outs = {name: p.communicate(timeout=240) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, outs[name][1][-3000:]
    from rl_trading.tracking import configure_mlflow

    configure_mlflow()
    client = mlflow.MlflowClient()
    for name, (out, _) in outs.items():
        run = client.get_run(out.strip().splitlines()[-1])
        assert run.info.status == "FINISHED" and run.data.params["writer"] == name
        values = [m.value for m in client.get_metric_history(run.info.run_id, "value")]
        assert len(values) == 40
        assert values[-1] == (39 if name == "a" else -39)
    exps = [e for e in client.search_experiments() if e.name == "ops_concurrent"]
    assert len(exps) == 1
