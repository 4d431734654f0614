"""The scale-out benchmark (benchmarks/scale_out.py): the worker node's resources, the config
that pins env runners to it, the placement check, the recovery of per-iteration times from
RLlib's EMA timers, and (RLlib tier) a two-node loopback cluster whose env runners must report
the worker node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import scale_out  # noqa: E402

from rl_trading.errors import ConfigError  # noqa: E402


def test_worker_node_fits_exactly_the_env_runners_and_the_config_pins_them_there() -> None:
    from rl_trading.data import split_by_time, synthetic_market
    from rl_trading.training.algo_config import build_phase_config
    from rl_trading.training.env_bridge import hierarchical_factory

    sets = ["data.symbols=[AAA, BBB]", "resources.num_env_runners=3", "env.sectors={}"]
    cfg = scale_out.load_cfg([*sets, "resources.num_cpus_per_env_runner=2"])
    assert scale_out.worker_node_args(cfg) == {"num_cpus": 6, "resources": {"worker_node": 3.0}}
    pinned = scale_out.two_node_cfg(cfg)
    assert pinned.resources.custom_resources_per_env_runner == {"worker_node": 1.0}
    assert cfg.resources.custom_resources_per_env_runner == {}  # the one-node config unchanged
    # what RLlib is given: every env runner asks for one worker_node (3 runners, 3 on the node)
    bars = split_by_time(synthetic_market(["AAA", "BBB"], n_bars=600, seed=1), 0.7, 0.15, 5)
    factory = hierarchical_factory(pinned, bars.train, bars.val)
    config = build_phase_config(pinned, 1, factory)
    assert config.custom_resources_per_env_runner == {"worker_node": 1.0}
    assert config.num_env_runners == 3 and config.num_cpus_per_env_runner == 2
    with pytest.raises(ConfigError, match="num_env_runners >= 1"):
        scale_out.worker_node_args(scale_out.load_cfg(["resources.num_env_runners=0"]))


def test_learners_share_the_rollout_and_minibatch_so_budget_and_update_stay_those_of_one() -> None:
    from rl_trading.data import split_by_time, synthetic_market
    from rl_trading.training.algo_config import build_phase_config
    from rl_trading.training.env_bridge import hierarchical_factory
    from rl_trading.training.mapping import phase_iterations

    bars = split_by_time(synthetic_market(["AAA", "BBB"], n_bars=600, seed=1), 0.7, 0.15, 5)
    sets = ["data.symbols=[AAA, BBB]", "env.sectors={}"]
    for n, per_learner, mb in ((0, 2000, 256), (1, 2000, 256), (2, 1000, 128), (4, 500, 64)):
        cfg = scale_out.load_cfg([*sets, f"resources.num_learners={n}"])
        config = build_phase_config(cfg, 1, hierarchical_factory(cfg, bars.train, bars.val))
        assert config.total_train_batch_size == 2000  # env steps per iteration, any N
        assert (config.train_batch_size_per_learner, config.minibatch_size) == (per_learner, mb)
        assert phase_iterations(cfg, 1) * config.total_train_batch_size == 500_000  # the budget
    with pytest.raises(ConfigError, match="multiples of resources.num_learners \\(3\\)"):
        scale_out.load_cfg(["resources.num_learners=3"])  # 2000 / 3: refused at load time


def test_placement_check_fails_loudly_when_a_runner_is_elsewhere_or_missing() -> None:
    scale_out.check_placement(["w", "w"], "w", 2)
    with pytest.raises(scale_out.PlacementError, match="1 of 2 env runners ran on \\['head'\\]"):
        scale_out.check_placement(["w", "head"], "w", 2)
    with pytest.raises(scale_out.PlacementError, match="expected 2 env runners, 1 answered"):
        scale_out.check_placement(["w"], "w", 2)
    assert issubclass(scale_out.PlacementError, AssertionError)


def test_bad_input_fails_with_one_line_before_ray_starts(tmp_path, capsys) -> None:
    import ray

    before = ray.is_initialized()  # an earlier test's Ray session may be up: it must not change
    out = tmp_path / "x.json"
    assert scale_out.main(["--address", "127.0.0.1:1", "--out", str(out)]) != 0
    assert "Ray cluster unreachable at 127.0.0.1:1" in capsys.readouterr().err
    assert scale_out.main(["--set", "resources.num_env_runners=0", "--out", str(out)]) == 2
    assert "num_env_runners >= 1" in capsys.readouterr().err
    assert ray.is_initialized() == before and not out.exists()


def test_per_iteration_times_are_recovered_from_rllibs_ema_timer() -> None:
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    # the way Algorithm.training_step times sampling: a root logger, log_time's defaults
    metrics = MetricsLogger(root=True)
    key = ("timers", "env_runner_sampling_timer")
    own, emas = [], []
    for delay in (0.06, 0.01, 0.03, 0.005):
        t0 = time.perf_counter()
        with metrics.log_time(key):
            time.sleep(delay)
        own.append(time.perf_counter() - t0)
        metrics.reduce()
        emas.append(metrics.peek(key))
    assert emas[-1] > 0.05  # the EMA itself is still mostly the first (warm-up) value
    got = scale_out.per_iteration(emas)
    assert len(got) == 3
    for value, mine in zip(got, own[1:], strict=True):
        assert value == pytest.approx(mine, abs=2e-3)


@pytest.mark.rllib
def test_two_node_cluster_places_the_env_runners_on_the_worker_node(tmp_path) -> None:
    """0 iterations: cluster, phase-1 build, placement check, JSON; no training."""
    out = tmp_path / "scale.json"
    env = {**os.environ, "RL_TRADING_WORKSPACE": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    sets = [
        "data.symbols=[AAA, BBB]",
        "env.sectors={}",
        "resources.num_env_runners=1",
        "policy.hidden_sizes=[8]",
    ]
    cmd = [sys.executable, str(BENCH / "scale_out.py"), "--quick", "--nodes", "2"]
    cmd += ["--iterations", "0", "--object-store-mib", "100", "--out", str(out)]
    cmd += [a for s in sets for a in ("--set", s)]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    report = json.loads(out.read_text())
    [two] = report["results"]["two_nodes"]  # --quick: one repeat
    assert "one_node" not in report["results"]
    assert len(two["layout"]["nodes"]) == 2
    assert two["head_node"] != two["worker_node"]
    assert two["layout"]["env_runner_nodes"] == [two["worker_node"]]
    assert two["layout"]["learner_nodes"] == [two["head_node"]] == [two["layout"]["driver_node"]]
    assert report["worker_node_args"] == {"num_cpus": 1, "resources": {"worker_node": 1.0}}
    assert "env runners checked on the worker node" in res.stdout
