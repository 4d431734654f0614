"""Fault tolerance: an env runner process that dies mid-training is recreated by RLlib and the
phase still reaches its budget, with the restart and the lost samples reported."""

from __future__ import annotations

import logging
import os
import sys
import time

import pytest
import training_standin
from ray import cloudpickle
from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
from ray.tune.registry import register_env
from training_standin import StandInHierarchicalEnv, standin_factory

from rl_trading.config import AppConfig
from rl_trading.training.runner import run_phase

pytestmark = pytest.mark.rllib
CRASH_ENV = "standin_crash_once"

# Remote env runners must unpickle the env creator without `tests/` on their sys.path.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(training_standin)


class CrashOnceEnv(StandInHierarchicalEnv):
    """Stand-in env whose process exits hard after `crash_after_steps` steps, once overall.

    The marker file is created atomically, so exactly one env runner (never the driver) dies.
    """

    def __init__(self, config: dict):
        super().__init__(config)
        self._steps = 0
        self._after = int(config.get("crash_after_steps", 0))
        self._marker = config.get("crash_marker")
        self._driver_pid = int(config.get("driver_pid", -1))

    def step(self, actions):
        self._steps += 1
        crash_now = self._marker and self._after and self._steps == self._after
        if crash_now and os.getpid() != self._driver_pid:
            try:
                fd = os.open(self._marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)  # a real crash of the env runner process
        return super().step(actions)


def _create(config):
    return ParallelPettingZooEnv(CrashOnceEnv(config))


def _is_env_runner(actor: dict) -> bool:
    """An env runner actor, stock or subclassed: Ray names actors after their class (e.g.
    `MultiAgentEnvRunner` or the project's fast subclass), so match any `...EnvRunner`."""
    name = str(actor.get("ActorClassName") or "")
    return name.rsplit(".", 1)[-1].endswith("EnvRunner")


def _wait_for_alive_env_runners(n: int, timeout: float) -> None:
    from ray._private import state  # GCS actor table (works without the dashboard)

    deadline = time.monotonic() + timeout
    names: set[str] = set()
    while time.monotonic() < deadline:
        actors = list(state.actors().values())
        names = {str(a.get("ActorClassName")) for a in actors}
        alive = [a for a in actors if _is_env_runner(a) and a["State"] == "ALIVE"]
        if len(alive) >= n:
            return
        time.sleep(0.25)
    raise AssertionError(f"fewer than {n} env runners alive after {timeout:g} s; actors: {names}")


def test_crashed_env_runner_is_restarted_and_training_continues(ray_session, tmp_path, caplog):
    register_env(CRASH_ENV, _create)
    marker = tmp_path / "crashed.pid"
    factory = standin_factory(
        episode_length=32, crash_after_steps=40, crash_marker=str(marker), driver_pid=os.getpid()
    )
    factory.env_name = CRASH_ENV
    cfg = AppConfig.model_validate(
        {
            "seed": 5,
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
            "policy": {"hidden_sizes": [8]},
            "resources": {
                "num_env_runners": 2,
                "num_cpus_per_env_runner": 0.5,
                "env_runner_restart_delay_s": 0.5,
            },
            "phases": {"phase1_timesteps": 768, "eval_interval": 5, "checkpoint_interval": 5},
        }
    )
    assert cfg.resources.restart_failed_env_runners  # the app's default
    seen: list[dict] = []

    def progress(info: dict) -> None:
        # Iterations take ~1 s here while Ray re-runs a dead runner's constructor for much
        # longer on a busy machine: wait (like a longer training would) until Ray has it alive
        # again, so RLlib's next iteration probes it and brings it back into service.
        seen.append(info)
        if info.get("num_healthy_env_runners", 2) < 2:
            _wait_for_alive_env_runners(2, timeout=120)

    with caplog.at_level(logging.WARNING, logger="rl_trading.training.runner"):
        res = run_phase(cfg, 1, factory, tmp_path / "run", tracking=False, progress=progress)

    assert marker.is_file(), "the crash was never injected"
    assert int(marker.read_text()) != os.getpid()
    assert res.iterations == 6 and [i["iteration"] for i in seen] == [1, 2, 3, 4, 5, 6]
    healthy = [i.get("num_healthy_env_runners") for i in seen]
    assert min(healthy) == 1, healthy  # the lost runner is reported while it is down
    restarts = [i.get("num_env_runner_restarts", 0) for i in seen]
    assert max(restarts) == 1, restarts  # exactly one restart, reported in the metrics
    assert seen[-1]["num_healthy_env_runners"] == 2  # the crashed runner is back
    assert res.env_steps >= 6 * 128 - 64  # training went on (a few samples may be lost)
    assert any("env runner(s) restarted" in r.getMessage() for r in caplog.records)


def test_env_runner_actor_names_match_stock_and_subclassed_runners():
    assert _is_env_runner({"ActorClassName": "MultiAgentEnvRunner"})
    assert _is_env_runner({"ActorClassName": "FastMultiAgentEnvRunner"})
    assert _is_env_runner({"ActorClassName": "rl_trading.training.fast.X.SingleAgentEnvRunner"})
    assert not _is_env_runner({"ActorClassName": "PPOTorchLearner"})
    assert not _is_env_runner({"ActorClassName": "EnvRunnerGroupHelper"})
