"""Run dirs, resume and state (issue 17: 2, 8, 9, 12, 15): state.json, the run-dir lock, and
the checks that refuse bad input with one line before Ray starts. No Ray is started here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl_trading.cli.main import main
from rl_trading.config import load_config
from rl_trading.errors import ConnectionFailure, RunDirError
from rl_trading.training.state import PhaseState, RunState, run_dir_lock

TINY = {
    "seed": 3,
    "data": {
        "source": "synthetic",
        "symbols": ["AAA", "BBB"],
        "timeframe": "1h",
        "embargo_bars": 5,
        "synthetic": {"n_bars": 600},
    },
    "env": {"episode_length": 32, "risk_window": 20, "sectors": {}},
    "ppo": {"train_batch_size": 64, "minibatch_size": 64, "num_epochs": 1},
    "policy": {"hidden_sizes": [8]},
    "resources": {"num_env_runners": 0, "num_cpus": 1},
    "phases": {"phase1_timesteps": 128},
    "tracking": {"system_metrics": False},
}


@pytest.fixture()
def cli(workspace, monkeypatch, capsys):
    """`rl-trading train ...` in-process; Ray must never be reached unless a test allows it."""
    (workspace / "tiny.yaml").write_text(yaml.safe_dump(TINY))

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the bad input was refused")

    monkeypatch.setattr("rl_trading.ray_utils.init_ray", no_ray)

    def run(*args: str) -> tuple[int, str]:
        rc = main(["train", *args[:1], "-c", "tiny.yaml", *args[1:]])
        err = capsys.readouterr().err
        assert "Traceback" not in err and "internal error" not in err, err
        return rc, err

    return run


def _one_line(err: str, needle: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err
    return lines[0]


def _reaches_ray(monkeypatch) -> None:
    """Let the run get as far as starting Ray, which then fails with a recognisable error."""

    def sentinel(*args, **kwargs):
        raise ConnectionFailure("sentinel: Ray reached")

    monkeypatch.setattr("rl_trading.ray_utils.init_ray", sentinel)


# --- state.json -------------------------------------------------------------------------------


def test_state_paths_are_relative_so_a_copied_run_dir_resumes(tmp_path):
    run = tmp_path / "a" / "run"
    state = RunState(run_dir=run.resolve())
    ckpt = run.resolve() / "phase1" / "checkpoints" / "iter_000002"
    state.phases["phase1"] = PhaseState(
        status="running", iteration=2, last_checkpoint=str(ckpt), checkpoint_iteration=2
    )
    state.phases["phase1"].best_checkpoint = str(run.resolve() / "phase1" / "best")
    state.save()
    raw = json.loads((run / "state.json").read_text())["phases"]["phase1"]
    assert raw["last_checkpoint"] == "phase1/checkpoints/iter_000002"
    assert raw["best_checkpoint"] == "phase1/best"
    moved = tmp_path / "b" / "copy"
    shutil.copytree(run, moved)
    shutil.rmtree(tmp_path / "a")
    ps = RunState.load(moved).phases["phase1"]
    assert ps.last_checkpoint == str(moved.resolve() / "phase1/checkpoints/iter_000002")
    assert ps.best_checkpoint == str(moved.resolve() / "phase1/best")


def test_rewind_matches_counters_to_the_restored_weights():
    ps = PhaseState(status="running", iteration=3, env_steps=3000)
    assert ps.rewind() is False and (ps.iteration, ps.env_steps) == (0, 0)  # fresh start
    ps = PhaseState(
        status="running",
        iteration=7,
        env_steps=7000,
        last_checkpoint="/x/iter_000005",
        checkpoint_iteration=5,
        checkpoint_env_steps=5000,
    )
    assert ps.rewind() is True and (ps.iteration, ps.env_steps) == (5, 5000)


def test_rewind_restores_the_selection_state_of_the_last_checkpoint():
    """Validations and a best after the last checkpoint belong to the discarded timeline: a
    resume redoes those iterations, so they must not stay counted (or chosen) twice."""
    ps = PhaseState(status="running", last_checkpoint="/x/iter_000002", checkpoint_iteration=2)
    ps.val_sharpes = [1.0, 2.0]
    ps.best_val_sharpe, ps.best_checkpoint, ps.last_val = 2.0, "/x/best", {"val_sharpe": 2.0}
    ps.commit_selection()
    ps.iteration = 3
    ps.val_sharpes.append(5.0)
    ps.best_val_sharpe, ps.best_checkpoint, ps.last_val = (
        5.0,
        "/x/best.pending",
        {"val_sharpe": 5.0},
    )
    assert ps.rewind() is True
    assert ps.val_sharpes == [1.0, 2.0] and ps.best_val_sharpe == 2.0
    assert ps.best_checkpoint == "/x/best" and ps.last_val == {"val_sharpe": 2.0}

    fresh = PhaseState(status="running", iteration=2, val_sharpes=[1.0, 3.0])
    fresh.best_val_sharpe, fresh.best_checkpoint = 3.0, "/x/best.pending"
    assert fresh.rewind() is False
    assert fresh.val_sharpes == [] and fresh.best_val_sharpe is None
    assert fresh.best_checkpoint is None and fresh.last_val == {}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "is corrupt"),
        ('{"phases": {"phase1": {"iteration": 2, "colour": "red"}}}', "unknown key(s) colour"),
        ('{"phases": {"phase9": {}}}', "unknown phase entry 'phase9'"),
        ('{"phases": {"phase1": {"iteration": "two"}}}', "phase1.iteration"),
        ('{"phases": {"phase1": {"status": "maybe"}}}', "phase1.status"),
        ('{"phases": {}, "extra": 1}', "unexpected top level"),
    ],
    ids=["not-json", "unknown-key", "unknown-phase", "bad-type", "bad-status", "top-level"],
)
def test_corrupt_or_unknown_state_is_a_one_line_error(tmp_path, text, needle):
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(RunDirError, match="state.json") as err:
        RunState.load(tmp_path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_corrupt_state_refused_before_ray_and_left_as_is(cli, workspace):
    run = workspace / "run"
    run.mkdir()
    (run / "state.json").write_text('{"phases": {"phase1": {"iteration": 2, "colour": "red"}}}')
    before = (run / "state.json").read_bytes()
    for extra in ([], ["--resume"]):
        rc, err = cli("phase1", "--run-dir", "run", *extra)
        assert rc == 4
        _one_line(err, "unknown key(s) colour")
    assert (run / "state.json").read_bytes() == before


# --- the run-dir lock (2) ---------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with run_dir_lock(tmp_path / "run") as path:
        assert f"pid {os.getpid()}" in path.read_text()
        busy = pytest.raises(RunDirError, match=f"in use by pid {os.getpid()} on ")
        with busy, run_dir_lock(tmp_path / "run"):
            pass
    assert path.read_text() == ""  # released and emptied
    with run_dir_lock(tmp_path / "run"):  # free again
        pass


_HOLDER = (
    "import sys, time\n"
    "from rl_trading.training.state import run_dir_lock\n"
    "with run_dir_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(120)\n"
)


def test_second_run_on_a_locked_run_dir_fails_before_ray_and_lock_dies_with_holder(cli, workspace):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(workspace / "run")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, err = cli("phase1", "--run-dir", "run")
        assert rc == 4
        line = _one_line(err, f"is in use by pid {holder.pid} on ")
        assert "since 20" in line
        assert not (workspace / "run" / "state.json").exists()  # nothing of the second run
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        holder.wait(timeout=30)
    with run_dir_lock(workspace / "run"):
        pass


def test_read_only_run_dir_is_refused_before_ray(cli, workspace):
    if os.geteuid() == 0:  # root writes through file modes: use a read-only file system
        target = Path("/sys/rl_trading_run")
        assert not target.exists()
    else:
        ro = workspace / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "run"
    rc, err = cli("phase1", "--run-dir", str(target))
    assert rc == 4
    _one_line(err, "is not writable")


# --- --resume on nothing (8) ------------------------------------------------------------------


def test_resume_needs_a_run_unless_resume_or_start(cli, workspace, monkeypatch):
    rc, err = cli("phase1", "--run-dir", "missing", "--resume")
    assert rc == 4
    _one_line(err, "does not exist")
    assert not (workspace / "missing").exists()
    (workspace / "empty").mkdir()
    rc, err = cli("phase1", "--run-dir", "empty", "--resume")
    assert rc == 4
    _one_line(err, "has no state.json")
    rc, err = cli("phase1", "--resume")  # no --run-dir and no run anywhere
    assert rc == 4
    _one_line(err, "--resume: no run with state.json")
    _reaches_ray(monkeypatch)
    rc, err = cli("phase1", "--run-dir", "missing", "--resume-or-start")
    assert rc == 5
    _one_line(err, "sentinel: Ray reached")


# --- refused before Ray (9) -------------------------------------------------------------------


def test_phase2_without_phase1_fails_before_ray(cli):
    rc, err = cli("phase2", "--run-dir", "fresh")
    assert rc == 4
    _one_line(err, "phase2 needs phase1 first")
    rc, err = cli("phase3", "--run-dir", "fresh")
    assert rc == 4
    _one_line(err, "phase3 needs phase2 first")


def test_non_checkpoint_from_checkpoint_fails_before_ray(cli, workspace):
    (workspace / "notackpt").mkdir()
    (workspace / "notackpt" / "weights.txt").write_text("x")
    rc, err = cli("phase2", "--run-dir", "r", "--from-checkpoint", "notackpt")
    assert rc == 4
    _one_line(err, "not an RLlib checkpoint")
    rc, err = cli("phase2", "--run-dir", "r", "--from-checkpoint", "nowhere")
    assert rc == 4
    _one_line(err, "checkpoint not found: nowhere")
    # an algorithm checkpoint without the specialists phase 2 loads
    fake = workspace / "other"
    (fake / "learner_group/learner/rl_module/meta").mkdir(parents=True)
    (fake / "rllib_checkpoint.json").write_text("{}")
    rc, err = cli("phase2", "--run-dir", "r", "--from-checkpoint", "other")
    assert rc == 4
    _one_line(err, "has no policy 'specialist_AAA'")


def test_minibatch_larger_than_rollout_is_a_config_error(cli):
    rc, err = cli("phase1", "--run-dir", "r", "--set", "ppo.minibatch_size=128")
    assert rc == 2
    _one_line(err, "ppo.minibatch_size (128) must not exceed ppo.train_batch_size (64)")


def test_unknown_bump_is_refused_before_any_backtest(workspace, monkeypatch, capsys):
    def no_register(*args, **kwargs):
        raise AssertionError("register_policy ran with a bad --bump")

    monkeypatch.setattr("rl_trading.evaluation.registration.register_policy", no_register)
    rc = main(["models", "register", "--checkpoint", "ckpt", "--bump", "huge"])
    err = capsys.readouterr().err
    assert rc == 2
    _one_line(err, "--bump must be major, minor or patch, not 'huge'")


def test_missing_data_fails_before_ray(cli):
    rc, err = cli(
        "phase1",
        "--run-dir",
        "r",
        "--set",
        "data.source=files",
        "--set",
        "data.paths={AAA: gone.csv, BBB: gone.csv}",
    )
    assert rc == 3
    _one_line(err, "gone.csv")


# --- which Ray (15) ---------------------------------------------------------------------------


class _FakeRay:
    def __init__(self):
        self.calls: list[dict] = []

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.calls.append(kwargs)

    def cluster_resources(self):
        return {"CPU": 2.0}

    def nodes(self):
        return [{"Alive": True}]


def test_local_ray_never_joins_a_running_cluster_silently(monkeypatch):
    import ray

    from rl_trading import ray_utils

    fake = _FakeRay()
    for name in ("is_initialized", "init", "cluster_resources", "nodes"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    said: list[str] = []
    ray_utils.init_ray(None, num_cpus=2, notify=said.append)
    # address="local": a new instance; a bare ray.init() would join a `ray start` cluster
    assert fake.calls[-1]["address"] == "local"
    assert said == ["Ray: started a local instance on 127.0.0.1 (2 CPUs)"]
    ray_utils.init_ray("auto", notify=said.append)  # the opt-in
    assert fake.calls[-1]["address"] == "auto"
    assert said[-1] == "Ray: joined the cluster at auto (1 node(s), 2 CPUs)"
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # an explicit environment setting also counts
    ray_utils.init_ray(None, notify=said.append)
    assert fake.calls[-1]["address"] == "auto"


# --- MLflow run lifecycle (12) ----------------------------------------------------------------


def test_resume_continues_the_mlflow_run_and_orphans_are_closed(workspace):
    import mlflow

    from rl_trading.tracking import close_orphan_run, configure_mlflow, mlflow_run

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    with mlflow_run("exp", "r-phase1", params={"a": 1}, tracking_uri=uri) as run:
        first = run.info.run_id
        exp_id = run.info.experiment_id
        mlflow.log_metric("iteration", 1, step=1)
    with mlflow_run(
        "exp", "r-phase1", params={"a": 2}, tracking_uri=uri, resume_run_id=first
    ) as run:
        assert run.info.run_id == first
        mlflow.log_metric("iteration", 2, step=2)
    client = mlflow.MlflowClient(uri)
    done = client.get_run(first)
    assert done.info.status == "FINISHED" and done.data.params["a"] == "1"
    assert [m.step for m in client.get_metric_history(first, "iteration")] == [1, 2]
    assert len(client.search_runs([exp_id])) == 1
    # an id unknown to this store starts a new run instead of failing
    with mlflow_run("exp", "r-phase1", tracking_uri=uri, resume_run_id="0" * 32) as run:
        assert run.info.run_id != first
    configure_mlflow(uri)
    orphan = client.create_run(exp_id).info.run_id  # RUNNING, as a SIGKILLed process leaves it
    assert close_orphan_run(orphan, uri) is True
    assert client.get_run(orphan).info.status == "KILLED"
    assert close_orphan_run(first, uri) is False  # only RUNNING runs are touched


def test_a_port_that_is_not_a_live_ray_head_fails_fast_with_one_line():
    """A dying cluster (or another server) accepts TCP but its GCS never answers: one line
    within the probe's timeout, instead of Ray's own minute-long wait."""
    import socket
    import threading
    import time

    from rl_trading import ray_utils

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept())

    threading.Thread(target=accept, daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        ray_utils.check_address(address)  # the TCP check alone lets it through
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailure, match=f"Ray cluster at {address}") as err:
            ray_utils.check_gcs(address, timeout=8)
        assert time.monotonic() - t0 < 20 and "\n" not in str(err.value)
    finally:
        server.close()


def test_readers_of_state_json_get_absolute_checkpoint_paths(tmp_path):
    """analysis (notebook, backtest of a run) resolves the run-dir-relative paths."""
    from rl_trading import analysis

    run = tmp_path / "run"
    state = RunState(run_dir=run.resolve())
    state.phases["phase1"] = PhaseState(
        status="done", last_checkpoint=str(run.resolve() / "phase1/checkpoints/iter_000002")
    )
    state.phases["phase1"].best_checkpoint = str(run.resolve() / "phase1/best")
    state.save()
    assert analysis.load_state(run)["phase1"]["best_checkpoint"] == str(
        run.resolve() / "phase1/best"
    )
    assert analysis.best_checkpoint(run) == run.resolve() / "phase1/best"


# --- fresh start, --overwrite and --resume semantics (issue 31) -------------------------------


def _finished_run(workspace: Path, iterations: int = 2) -> Path:
    """A run dir whose phase 1 is done at `iterations` (files stand in for the checkpoints),
    with the config.yaml the run used (tiny.yaml, as `train` records it)."""
    from rl_trading.config import load_config, save_config

    run = workspace / "run"
    ckpt = run / "phase1" / "checkpoints" / f"iter_{iterations:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "weights").write_text("trained")
    ps = PhaseState(
        status="done",
        iteration=iterations,
        total_iterations=iterations,
        env_steps=64 * iterations,
        last_checkpoint=str(ckpt),
        checkpoint_iteration=iterations,
        checkpoint_env_steps=64 * iterations,
    )
    RunState(run_dir=run, phases={"phase1": ps}).save()
    save_config(load_config(workspace / "tiny.yaml"), run / "config.yaml")
    return run


def test_fresh_train_on_a_finished_run_dir_is_refused_and_changes_nothing(cli, workspace):
    run = _finished_run(workspace)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc, err = cli("phase1", "--run-dir", "run")
    assert rc == 4
    _one_line(err, "already holds phase1 (done)")
    assert "--overwrite" in err and "--resume" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # phase 2 after a finished phase 1 is the normal next step, not a fresh start over it
    from rl_trading.training.session import check_fresh_start

    assert check_fresh_start(RunState.load(run), (2,), resume=False, overwrite=False) == []


def test_overwrite_moves_the_old_run_aside_never_deletes(cli, workspace, monkeypatch):
    run = _finished_run(workspace)
    _reaches_ray(monkeypatch)
    rc, err = cli("phase1", "--run-dir", "run", "--overwrite")
    _one_line(err, "sentinel: Ray reached")  # every check passed; the move came just before
    (moved,) = (run / "replaced").iterdir()
    assert (moved / "phase1/checkpoints/iter_000002/weights").read_text() == "trained"
    assert not (run / "phase1").exists() and "phase1" not in RunState.load(run).phases
    # the moved folder is a run dir of its own: its state names its own checkpoints
    old = RunState.load(moved).phases["phase1"]
    assert old.status == "done" and Path(old.last_checkpoint).is_relative_to(moved)


def test_resume_flags_exclude_each_other(cli, workspace):
    rc, err = cli("phase1", "--run-dir", "run", "--resume", "--resume-or-start")
    assert rc == 2
    _one_line(err, "--resume and --resume-or-start exclude each other")
    assert not (workspace / "run").exists()


def test_resume_with_a_budget_below_what_is_trained_is_refused(cli, workspace):
    _finished_run(workspace, iterations=2)
    rc, err = cli("phase1", "--run-dir", "run", "--resume", "--set", "phases.phase1_timesteps=64")
    assert rc == 2
    _one_line(err, "phase1 has trained 2 iteration(s) already")


def test_resume_with_a_larger_budget_extends_and_says_so(cli, workspace):
    from rl_trading.training.session import check_budgets, phase_finished

    run = _finished_run(workspace, iterations=2)
    rc, err = cli("phase1", "--run-dir", "run", "--resume", "--set", "phases.phase1_timesteps=256")
    # not skipped as done: it goes on to restore its last checkpoint (a stand-in file here)
    _one_line(err, "not an RLlib checkpoint (no rllib_checkpoint.json)")
    cfg = load_config(workspace / "tiny.yaml", ["phases.phase1_timesteps=256"])
    said: list[str] = []
    check_budgets(cfg, RunState.load(run), (1,), resume=True, notify=said.append)
    assert said == ["phase1: budget raised from 2 to 4 iterations; continuing from iteration 2"]
    assert not phase_finished(RunState.load(run).phases["phase1"], cfg, 1)
    # with phase 2 already trained on phase 1's weights, continuing phase 1 would leave it stale
    state = RunState.load(run)
    state.phases["phase2"] = PhaseState(status="done", iteration=1, total_iterations=1)
    state.save()
    rc, err = cli("phase1", "--run-dir", "run", "--resume", "--set", "phases.phase1_timesteps=256")
    assert rc == 2
    _one_line(err, "phase2 already trained on its earlier weights")


def test_resume_with_a_changed_setting_is_refused_unless_allowed(cli, workspace, monkeypatch):
    run = _finished_run(workspace)
    saved = (run / "config.yaml").read_bytes()
    rc, err = cli("phase1", "--run-dir", "run", "--resume", "--set", "ppo.lr=1e-4")
    assert rc == 2
    _one_line(err, "ppo.lr: 0.0003 -> 0.0001")
    assert "--allow-config-change" in err
    assert (run / "config.yaml").read_bytes() == saved  # the run still shows what it used
    # where it runs and logs, and the budget, are no hyperparameters
    _reaches_ray(monkeypatch)
    rc, err = cli("phase1", "--run-dir", "run", "--resume", "--set", "resources.num_cpus=2")
    _one_line(err, "sentinel: Ray reached")
    rc, err = cli(
        "phase1", "--run-dir", "run", "--resume", "--set", "ppo.lr=1e-4", "--allow-config-change"
    )
    _one_line(err, "sentinel: Ray reached")
    # a phase that has not started yet is no resume of it: phase 2 may use its own settings
    rc, err = cli("phase2", "--run-dir", "run", "--resume-or-start", "--set", "phases.meta_lr=1e-4")
    _one_line(err, "not an RLlib checkpoint")  # past the config check, at phase 1's stand-in
    # the run records both configs before it starts (MLflow gets both with the phase)
    (before,) = run.glob("config.before-*.yaml")
    assert yaml.safe_load(before.read_text())["ppo"]["lr"] == 3e-4
    assert yaml.safe_load((run / "config.yaml").read_text())["ppo"]["lr"] == 1e-4


def test_pipeline_on_a_finished_run_dir_is_refused_before_any_stage(workspace, monkeypatch):
    from rl_trading.pipeline import run_pipeline

    (workspace / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run = _finished_run(workspace)
    saved = (run / "config.yaml").read_bytes()
    monkeypatch.setattr("rl_trading.ray_utils.init_ray", lambda *a, **k: pytest.fail("Ray"))
    with pytest.raises(RunDirError, match="already holds phase1"):
        run_pipeline(load_config(workspace / "tiny.yaml", ["ppo.lr=1e-4"]), run_dir=run)
    assert (run / "config.yaml").read_bytes() == saved
