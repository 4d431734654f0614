"""Faults seen from the `rl-trading` CLI (subprocesses): SIGTERM (or Ctrl+C to the process
group) mid-phase checkpoints and `--resume` finishes with no lost iteration; a corrupt
checkpoint, a missing data file, an unreachable Ray / MLflow and more env runners than local
CPUs each give one clear line (no traceback, exit != 0) and leave the run directory
byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.rllib

CLI = str(Path(sys.executable).parent / "rl-trading")
REPO = Path(__file__).resolve().parent.parent
ITERS = 30  # phase1_timesteps / train_batch_size
TINY = f"""\
base: {REPO / "configs/default.yaml"}
seed: 3
data: {{source: synthetic, symbols: [AAA, BBB], timeframe: 1h, embargo_bars: 5,
        synthetic: {{n_bars: 1500}}}}
env: {{episode_length: 64, risk_window: 20, sectors: {{}}}}
ppo: {{train_batch_size: 64, minibatch_size: 64, num_epochs: 1}}
policy: {{hidden_sizes: [8]}}
resources: {{num_env_runners: 0, num_cpus: 1}}
phases: {{phase1_timesteps: {ITERS * 64}, eval_interval: 10, checkpoint_interval: 10}}
tracking: {{system_metrics: false}}
"""


def _env(cwd: Path) -> dict[str, str]:
    env = {**os.environ, "RL_TRADING_WORKSPACE": str(cwd), "PYTHONUNBUFFERED": "1"}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RL_TRADING_DEBUG"):
        env.pop(key, None)
    return env


def _cli(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=timeout
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _state(cwd: Path) -> dict:
    path = cwd / "run" / "state.json"
    return json.loads(path.read_text())["phases"]["phase1"] if path.is_file() else {}


def _interrupt(
    cwd: Path,
    sig: int,
    group: bool,
    at: int = 2,
    extra: tuple[str, ...] = (),
    seen: list | None = None,
) -> subprocess.CompletedProcess:
    """Start phase 1 in `cwd/run`, send `sig` once iteration `at` is in state.json, wait;
    `seen` gets the process's descendants (Ray's helpers) just before the signal."""
    (cwd / "tiny.yaml").write_text(TINY)
    proc = subprocess.Popen(
        [CLI, "train", "phase1", "-c", "tiny.yaml", "--run-dir", "run", *extra],
        cwd=cwd,
        env=_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job in a terminal
    )
    deadline = time.monotonic() + 240
    while _state(cwd).get("iteration", 0) < at:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"training never reached iteration {at}"
        time.sleep(0.2)
    if seen is not None:
        import psutil

        seen.extend(psutil.Process(proc.pid).children(recursive=True))
    if group:  # what Ctrl+C in a terminal does: the whole foreground group gets SIGINT
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_stopped_cleanly(cwd: Path, res: subprocess.CompletedProcess) -> int:
    assert res.returncode == 130, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr and "--resume" in res.stdout
    ps = _state(cwd)
    stopped = ps["iteration"]
    assert ps["status"] == "running" and 2 <= stopped < ITERS
    # saved at the stop, named relative to the run dir (a copied run dir resumes)
    assert ps["last_checkpoint"] == f"phase1/checkpoints/iter_{stopped:06d}"
    assert (cwd / "run" / ps["last_checkpoint"] / "rllib_checkpoint.json").is_file()
    return stopped


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A workspace whose `run` was stopped by SIGTERM during phase 1 (kept pristine)."""
    cwd = tmp_path_factory.mktemp("sigterm")
    _assert_stopped_cleanly(cwd, _interrupt(cwd, signal.SIGTERM, group=False))
    return cwd


def test_ctrl_c_to_the_process_group_checkpoints(tmp_path):
    _assert_stopped_cleanly(tmp_path, _interrupt(tmp_path, signal.SIGINT, group=True))


def _copy(src: Path, dst: Path) -> Path:
    """The same workspace elsewhere, as is (state.json's paths are relative to the run dir)."""
    shutil.copytree(src, dst)
    assert str(src.resolve()) not in (dst / "run" / "state.json").read_text()
    return dst


def test_sigterm_checkpoints_and_resume_loses_no_iteration(interrupted, tmp_path):
    import mlflow

    cwd = _copy(interrupted, tmp_path / "ws")
    first_run = _state(cwd)["mlflow_run_id"]

    res = _cli(cwd, "train", "phase1", "-c", "tiny.yaml", "--run-dir", "run", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    ps = _state(cwd)
    # Same end as an uninterrupted run: every iteration once, the full step budget.
    assert ps["status"] == "done" and ps["iteration"] == ps["total_iterations"] == ITERS
    assert ps["env_steps"] == ITERS * 64
    # The resume continues the phase's MLflow run: one run, every iteration once.
    assert ps["mlflow_run_id"] == first_run
    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(first_run, "iteration")]
    assert sorted(steps) == list(range(1, ITERS + 1))
    assert client.get_run(first_run).info.status == "FINISHED"


def test_sigkill_before_the_first_checkpoint_then_resume(tmp_path):
    """Issue 17 cases 1 and 12: SIGKILL at iteration 3 with no checkpoint yet leaves no Ray
    helper behind, no lock, and an orphan MLflow run that the resume closes; the resume trains
    the whole budget from iteration 1 (it used to count on from 3 with fresh weights)."""
    import mlflow
    import psutil

    helpers: list = []
    # ITERS iterations and no checkpoint before the end: the kill lands well before the run
    # ends (with 6 iterations, 3 short ones could finish between a state poll and the kill)
    budget = ("--set", f"phases.checkpoint_interval={ITERS + 1}")
    res = _interrupt(tmp_path, signal.SIGKILL, group=False, at=3, extra=budget, seen=helpers)
    assert res.returncode == -signal.SIGKILL
    gone, alive = psutil.wait_procs(helpers, timeout=20)
    assert not alive, [p.info for p in alive]
    ps = _state(tmp_path)
    assert ps["status"] == "running" and ps["iteration"] >= 3 and ps["last_checkpoint"] is None
    orphan = ps["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(orphan).info.status == "RUNNING"

    res = _cli(
        tmp_path, "train", "phase1", "-c", "tiny.yaml", "--run-dir", "run", "--resume", *budget
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{ITERS} iterations, {ITERS * 64:,} env steps" in res.stdout
    ps = _state(tmp_path)
    assert ps["status"] == "done" and ps["iteration"] == ITERS and ps["env_steps"] == ITERS * 64
    assert client.get_run(orphan).info.status == "KILLED"
    new = client.get_run(ps["mlflow_run_id"])
    assert new.info.run_id != orphan and new.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(new.info.run_id, "iteration")]
    assert steps == list(range(1, ITERS + 1))


def _assert_one_line_failure(res: subprocess.CompletedProcess, code: int, needle: str) -> None:
    err = res.stderr.strip()
    assert res.returncode == code, (res.returncode, err[-2000:])
    assert "Traceback" not in res.stdout + res.stderr
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err[-2000:]


def test_corrupt_checkpoint_fails_cleanly_and_damages_nothing(interrupted, tmp_path):
    cwd = _copy(interrupted, tmp_path / "ws")
    ckpt = cwd / "run" / _state(cwd)["last_checkpoint"]
    assert ckpt.resolve().is_relative_to(cwd.resolve())  # the copy's, not the pristine one
    modules = [p for p in (ckpt / "learner_group").rglob("*") if p.is_file() and p.stat().st_size]
    assert modules
    for path in modules:  # a checkpoint cut short mid-write
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    before = _checksums(cwd / "run")
    res = _cli(cwd, "train", "phase1", "-c", "tiny.yaml", "--run-dir", "run", "--resume")
    _assert_one_line_failure(res, 4, "cannot resume from")
    assert _checksums(cwd / "run") == before


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--set", "data.source=files", "--set", "data.paths={AAA: gone.csv, BBB: gone.csv}",
          "--allow-config-change"], 3, "gone.csv"),  # the change allowed: the data check
        (["--address", "127.0.0.1:{port}"], 5, "Ray cluster unreachable"),
        (["--tracking-uri", "http://127.0.0.1:{port}"], 5, "MLflow tracking server unreachable"),
        (["--set", "resources.num_env_runners=3"], 2, "need 3 CPUs, Ray has 1"),
    ],
    ids=["missing-data-file", "unreachable-ray", "unreachable-mlflow", "too-few-cpus"],
)  # fmt: skip
def test_unavailable_inputs_fail_before_any_work(interrupted, tmp_path, args, code, needle):
    cwd = _copy(interrupted, tmp_path / "ws")
    before = _checksums(cwd)
    port = str(_closed_port())
    args = [a.replace("{port}", port) for a in args]
    res = _cli(cwd, "train", "phase1", "-c", "tiny.yaml", "--run-dir", "run", "--resume", *args)
    _assert_one_line_failure(res, code, needle)
    assert _checksums(cwd) == before  # the run dir and the MLflow store are untouched


@pytest.mark.slow
def test_resume_extends_a_finished_phase_and_overwrite_moves_it_aside(tmp_path):
    """Issue 31: a larger budget continues a finished phase from its last checkpoint (one MLflow
    run, every iteration once); a changed setting needs --allow-config-change, which keeps both
    configs; a fresh train on the run dir is refused, --overwrite moves the old run aside."""
    import mlflow

    (tmp_path / "tiny.yaml").write_text(TINY)
    base = ("train", "phase1", "-c", "tiny.yaml", "--run-dir", "run")
    small = ("--set", "phases.phase1_timesteps=192", "--set", "phases.checkpoint_interval=2")
    res = _cli(tmp_path, *base, *small)
    assert res.returncode == 0, res.stderr[-3000:]
    first = _state(tmp_path)
    assert (first["status"], first["iteration"]) == ("done", 3)

    bigger = ("--set", "phases.phase1_timesteps=320", "--set", "phases.checkpoint_interval=2")
    res = _cli(tmp_path, *base, "--resume", *bigger, "--set", "ppo.lr=1e-4")
    _assert_one_line_failure(res, 2, "ppo.lr: 0.0003 -> 0.0001")
    res = _cli(
        tmp_path, *base, "--resume", *bigger, "--set", "ppo.lr=1e-4", "--allow-config-change"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "budget raised from 3 to 5 iterations" in res.stdout
    ps = _state(tmp_path)
    assert (ps["status"], ps["iteration"], ps["env_steps"]) == ("done", 5, 5 * 64)
    assert ps["mlflow_run_id"] == first["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(ps["mlflow_run_id"], "iteration")]
    assert sorted(steps) == [1, 2, 3, 4, 5]
    run = client.get_run(ps["mlflow_run_id"])
    assert "ppo.lr: 0.0003 -> 0.0001" in run.data.tags["config_changed_on_resume"]
    assert len(list((tmp_path / "run").glob("config.before-*.yaml"))) == 1

    res = _cli(tmp_path, *base, *small)
    _assert_one_line_failure(res, 4, "already holds phase1 (done)")
    res = _cli(tmp_path, *base, *small, "--overwrite")
    assert res.returncode == 0, res.stderr[-3000:]
    (moved,) = (tmp_path / "run" / "replaced").iterdir()
    assert json.loads((moved / "state.json").read_text())["phases"]["phase1"]["iteration"] == 5
    assert (moved / "phase1" / "checkpoints" / "iter_000005").is_dir()
    assert _state(tmp_path)["iteration"] == 3
