"""Beyond one machine: a two-node Ray cluster on loopback (head + a worker node with a
`worker_node` resource), a tiny phase trained through the app with `resources.address` at the
head, and its env runners placed on the worker node.

The cluster and the driver live in a subprocess, so its `ray.init(address=...)` never meets the
test session's local Ray; the subprocess always shuts its own nodes down (never `ray stop`,
which would stop other Ray instances on the machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.rllib

_HOLDER = textwrap.dedent(
    """
    import signal, sys
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        worker = cluster.add_node(num_cpus=2, resources={"worker_node": 1})
        cluster.wait_for_nodes()
        print(cluster.address, worker.node_id, flush=True)
        sys.stdin.read()  # until the test closes stdin
    finally:
        cluster.shutdown()
    """
)
_INSPECT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray._private import state

    ray.init(address=sys.argv[1], log_to_driver=False)
    print(json.dumps({
        "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]],
        "runner_nodes": [
            a["Address"]["NodeID"] for a in state.actors().values()
            if a["ActorClassName"].endswith("EnvRunner")  # stock or the project's subclasses
        ],
    }))
    """
)
TINY = [
    "seed=2", "data.source=synthetic", "data.symbols=[AAA, BBB]", "data.timeframe=1h",
    "data.embargo_bars=5", "data.synthetic.n_bars=1500", "env.episode_length=64",
    "env.risk_window=20", "env.sectors={}", "ppo.train_batch_size=128", "ppo.minibatch_size=64",
    "ppo.num_epochs=1", "policy.hidden_sizes=[8]", "phases.phase1_timesteps=256",
    "phases.eval_interval=2", "phases.checkpoint_interval=2", "resources.num_env_runners=1",
    "resources.num_cpus_per_env_runner=1", "tracking.system_metrics=false",
    "resources.custom_resources_per_env_runner={worker_node: 0.5}",
]  # fmt: skip


def test_two_node_cluster_runs_env_runners_on_the_worker_node(tmp_path):
    env = {**os.environ, "RL_TRADING_WORKSPACE": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address, worker_node = holder.stdout.readline().split()
        sets = [a for s in TINY for a in ("--set", s)]
        cli = str(Path(sys.executable).parent / "rl-trading")
        res = subprocess.run(
            [cli, "train", "phase1", "--run-dir", "run", "--address", address, *sets],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        seen = subprocess.run(
            [sys.executable, "-c", _INSPECT, address],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert seen.returncode == 0, seen.stderr[-3000:]
        out = json.loads(seen.stdout.strip().splitlines()[-1])
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=90)
        except subprocess.TimeoutExpired:
            holder.terminate()  # SIGTERM -> the holder still shuts its nodes down
            holder.wait(timeout=60)
    assert len(out["nodes"]) == 2 and worker_node in out["nodes"]
    assert out["runner_nodes"] and set(out["runner_nodes"]) == {worker_node}
    state = json.loads((tmp_path / "run" / "state.json").read_text())["phases"]["phase1"]
    assert state["status"] == "done" and state["iteration"] == 2 and state["env_steps"] == 256
