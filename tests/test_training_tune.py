"""Phases as Tune runs (issue 18 item 4): `train phase1` leaves a Tune experiment under the run
dir (ExperimentAnalysis, TensorBoard), no `~/ray_results` folder, the trial's resources are the
Algorithm's, `--dashboard` starts a loopback dashboard and prints its URL, and inside a Ray
worker a phase runs in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rl_trading import ray_utils

CLI = str(Path(sys.executable).parent / "rl-trading")
REPO = Path(__file__).resolve().parent.parent
TINY = f"""\
base: {REPO / "configs/default.yaml"}
seed: 5
data: {{source: synthetic, symbols: [AAA, BBB], timeframe: 1h, embargo_bars: 5,
        synthetic: {{n_bars: 900}}}}
env: {{episode_length: 64, risk_window: 20, sectors: {{}}}}
ppo: {{train_batch_size: 64, minibatch_size: 64, num_epochs: 1}}
policy: {{hidden_sizes: [8]}}
resources: {{num_env_runners: 0, num_cpus: 1}}
phases: {{phase1_timesteps: 256, eval_interval: 2, checkpoint_interval: 2}}
tracking: {{system_metrics: false}}
"""


def test_local_ray_dashboard_only_when_asked_and_only_on_loopback():
    plain = ray_utils.local_init_kwargs()
    assert plain["include_dashboard"] is False and plain["_node_ip_address"] == "127.0.0.1"
    asked = ray_utils.local_init_kwargs(dashboard=True)
    assert asked["include_dashboard"] is True and asked["dashboard_host"] == "127.0.0.1"
    assert ray_utils.dashboard_message("127.0.0.1:8265", local=True).endswith(
        "http://127.0.0.1:8265"
    )
    assert "did not report" in ray_utils.dashboard_message(None, local=False)


def test_init_ray_with_dashboard_passes_loopback_and_prints_the_url(monkeypatch):
    import ray

    seen: dict = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        return SimpleNamespace(dashboard_url="127.0.0.1:8265")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray_utils, "reap_with_driver", lambda: None)
    lines: list[str] = []
    ray_utils.init_ray(None, 2, notify=lines.append, dashboard=True)
    assert seen["address"] == "local" and seen["include_dashboard"] is True
    assert seen["dashboard_host"] == "127.0.0.1"
    assert "Ray dashboard: http://127.0.0.1:8265" in lines
    seen.clear()
    lines.clear()
    ray_utils.init_ray(None, 2, notify=lines.append)
    assert seen["include_dashboard"] is False and not any("dashboard" in x for x in lines)


def test_train_dashboard_flag_reaches_the_session(monkeypatch, workspace):
    from rl_trading.cli.main import main
    from rl_trading.training import session

    got: dict = {}

    def fake_train(cfg, phases, **kwargs):
        got.update(kwargs, phases=phases)
        return workspace / "run", {}

    monkeypatch.setattr(session, "train", fake_train)
    assert main(["train", "phase1", "--dashboard", "--run-dir", "run"]) == 0
    assert got["dashboard"] is True and got["phases"] == (1,)


def test_dashboard_without_rays_extras_is_a_one_line_error_before_ray(monkeypatch, workspace):
    import ray

    from rl_trading.cli.main import main

    monkeypatch.setitem(sys.modules, "ray.dashboard.optional_deps", None)  # import fails
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(ray_utils.ConfigError, match=r"pip install \"ray\[default\]=="):
        ray_utils.check_dashboard_available()
    assert main(["train", "phase1", "--dashboard", "--run-dir", "run"]) == 2
    assert not (workspace / "run").exists()


def test_trial_resources_are_the_algorithms_bundles_without_the_drivers_cpu():
    from ray.rllib.algorithms.ppo import PPOConfig

    from rl_trading.training.algo_config import trial_resources

    def base():
        return PPOConfig().environment("CartPole-v1")

    two = trial_resources(base().env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5))
    # bundle 0: the trial's main process (learner, validation), then one bundle per env runner
    assert two.bundles == [{"memory": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]
    none = trial_resources(base().env_runners(num_env_runners=0))
    assert none.bundles == [{"memory": 1.0}]
    gpu = trial_resources(base().env_runners(num_env_runners=1).learners(num_gpus_per_learner=1))
    assert gpu.bundles[0] == {"GPU": 1.0} and gpu.bundles[1:] == [{"CPU": 1.0}]
    pinned = trial_resources(base().env_runners(num_env_runners=1), "node:10.0.0.7")
    assert pinned.bundles == [{"node:10.0.0.7": 0.001}, {"CPU": 1.0}]


@pytest.mark.rllib
def test_a_phase_inside_a_ray_worker_runs_in_process(ray_session):
    from rl_trading.training.runner import inside_ray_worker

    assert inside_ray_worker() is False
    assert ray_session.get(ray_session.remote(inside_ray_worker).remote()) is True
    # the phase trial is pinned to the driver's node (the run dir is on its disk)
    node = ray_utils.driver_node_resource()
    assert node and node.startswith("node:") and ray_session.cluster_resources()[node] == 1.0


@pytest.mark.rllib
def test_cli_phase_is_a_tune_experiment_under_the_run_dir(tmp_path):
    """`train phase1` in a fresh process whose HOME is a temp folder: the phase's results are in
    `<run>/tune/phase1` (ExperimentAnalysis, one row per iteration with the objective; a
    TensorBoard event file) and nothing appears in the default `~/ray_results`."""
    from ray.tune import ExperimentAnalysis

    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "tiny.yaml").write_text(TINY)
    env = {**os.environ, "HOME": str(home), "RL_TRADING_WORKSPACE": str(tmp_path)}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RL_TRADING_DEBUG"):
        env.pop(key, None)
    res = subprocess.run(
        [CLI, "train", "phase1", "-c", "tiny.yaml", "--run-dir", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((tmp_path / "run/state.json").read_text())["phases"]["phase1"]
    assert state["status"] == "done" and state["iteration"] == 4
    assert (tmp_path / "run" / state["best_checkpoint"] / "rllib_checkpoint.json").is_file()

    exp = tmp_path / "run/tune/phase1"
    analysis = ExperimentAnalysis(str(exp))
    assert len(analysis.trials) == 1
    (frame,) = analysis.trial_dataframes.values()
    assert len(frame) == 4 and frame["iteration"].tolist() == [1, 2, 3, 4]
    assert frame["training_iteration"].tolist() == [1, 2, 3, 4]
    assert frame["val_sharpe"].notna().tolist() == [False, True, True, True]
    assert frame["val_sharpe"].iloc[-1] == pytest.approx(state["last_val"]["val_sharpe"])
    assert list(exp.glob("*/events.out.tfevents.*")), "no TensorBoard event file"
    # ... and as a result grid, whose checkpoint points at the run dir's last checkpoint
    from ray import tune

    from tuning.trainable import PhaseTrainable

    (result,) = tune.Tuner.restore(str(exp), trainable=PhaseTrainable).get_results()
    assert result.metrics["iteration"] == 4 and result.metrics["done"]
    pointer = json.loads((Path(result.checkpoint.path) / "phase_checkpoint.json").read_text())
    assert pointer["iteration"] == 4 and pointer["checkpoint"] == state["last_checkpoint"]
    assert not (home / "ray_results").exists(), list((home / "ray_results").iterdir())
    assert not list((tmp_path / "run/logs").glob("20*")), "empty Algorithm log folders left"


def test_stopper_drives_progress_and_asks_the_trial_to_stop(tmp_path):
    """The driver's side of a phase trial: progress gets the loop's info (no Tune keys); a set
    StopFlag writes the stop file and ends the trial; a failing progress ends it and is kept."""
    from rl_trading.training.signals import StopFlag
    from rl_trading.training.tune_phase import PhaseStopper, result_metrics

    result = {
        "phase": "phase1",
        "iteration": 2,
        "total": 5,
        "val_sharpe": 0.5,
        "env_steps": 256.0,
        "elapsed_s": 3.0,
        "eta_s": 4.5,
        "done": False,
        "interrupted": False,
        "training_iteration": 2,
        "time_this_iter_s": 0.4,
        "trial_id": "abc",
        "hp/lr": 1e-3,
    }
    seen: list[dict] = []
    stop, stop_file = StopFlag(), tmp_path / "phase1" / ".stop_requested"
    stopper = PhaseStopper(stop_file, seen.append, stop)
    assert stopper("abc", result) is False and not stop_file.exists()
    assert seen[-1] == {
        k: result[k]
        for k in ("phase", "iteration", "total", "val_sharpe", "env_steps", "elapsed_s", "eta_s")
    }
    assert result_metrics(result) == {"iteration": 2.0, "val_sharpe": 0.5, "env_steps": 256.0}
    stop.set()
    assert stopper("abc", {**result, "iteration": 3}) is True and stop_file.is_file()
    assert PhaseStopper(stop_file, None, StopFlag())("abc", {**result, "interrupted": True})

    def broken(_info):
        raise RuntimeError("progress failed")

    failing = PhaseStopper(tmp_path / "other", broken, StopFlag())
    assert failing("abc", result) is True and isinstance(failing.error, RuntimeError)
    assert not (tmp_path / "other").exists()  # no stop file: the trial saves no checkpoint


def test_a_phase_trial_knows_when_its_driver_is_gone():
    """The trial checks the driver (host, pid) around every iteration: a dead driver (here a
    finished child process) means stop; unknown, another host or itself means go on."""
    import os
    import socket
    import subprocess
    import sys

    from rl_trading.training.runner import driver_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: its pid is gone
    host = socket.gethostname()
    assert driver_alive((host, child.pid)) is False
    assert driver_alive((host, os.getppid())) is True
    assert driver_alive((host, os.getpid())) is True
    assert driver_alive(("another-host", child.pid)) is True
    assert driver_alive(None) is True
