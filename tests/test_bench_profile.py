"""The benchmarks' profile and peak-memory helpers (benchmarks/bench_profile.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_profile  # noqa: E402


def test_profile_times_the_wrapped_calls_and_restores_them() -> None:
    import importlib

    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.core.learner.learner_group import LearnerGroup

    from rl_trading.training import runner

    ppo = importlib.import_module("ray.rllib.algorithms.ppo.ppo")
    build = AlgorithmConfig.build_algo
    originals = (LearnerGroup.update, ppo.synchronous_parallel_sample, runner.validate)

    class Owner:
        def update(self, delay: float) -> str:
            time.sleep(delay)
            return "done"

    with bench_profile.PhaseProfile() as prof:
        assert LearnerGroup.update is not originals[0]
        assert ppo.synchronous_parallel_sample is not originals[1]
        assert runner.validate is not originals[2] and AlgorithmConfig.build_algo is not build
        prof._wrap(Owner, "update", "learner")
        assert Owner().update(0.05) == "done"  # the wrapper passes the call on
        before = prof.snapshot()
        Owner().update(0.02)
        parts = bench_profile.diff(prof.snapshot(), before)
    assert (LearnerGroup.update, ppo.synchronous_parallel_sample, runner.validate) == originals
    assert AlgorithmConfig.build_algo is build
    assert 0.02 <= parts["learner"] < 0.5 and parts["sampling"] == 0.0
    assert prof.calls["learner"] == 2 and before["learner"] >= 0.05


def test_describe_shares_add_up_with_the_rest() -> None:
    text = bench_profile.describe({"sampling": 3.0, "learner": 1.0, "checkpoint": 0.0}, 5.0, 2)
    assert text == "sampling 1.50s (60%), learner 0.50s (20%), other 0.50s (20%)"


def test_peak_memory_sees_the_driver_and_titled_workers() -> None:
    # a child whose argv[0] starts with ray:: counts as a worker (Ray's workers retitle so)
    child = subprocess.Popen(["ray::Fake", "30"], executable="/bin/sleep")
    try:
        time.sleep(0.5)
        mem = bench_profile.PeakMemory(interval_s=0.05)
        with mem:
            time.sleep(0.3)
    finally:
        child.kill()
        child.wait()
    assert mem.samples >= 2 and mem.driver > 10 * 1024**2
    assert mem.workers_total > 0 and mem.worker_max_title == "ray::Fake"
    assert mem.tree_total >= mem.driver + mem.workers_total
    assert "peak RSS: driver" in mem.report()
