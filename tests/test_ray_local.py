"""A local Ray started by the project listens on 127.0.0.1 only (not on every interface)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import psutil, ray
from rl_trading.ray_utils import init_ray
init_ray(None, num_cpus=1, log_to_driver=False)
me = psutil.Process()
pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
hosts = sorted({c.laddr.ip for c in psutil.net_connections("inet")
                if c.status == psutil.CONN_LISTEN and c.pid in pids})
print("NODE", ray._private.worker.global_worker.node.node_ip_address)
print("HOSTS", ",".join(hosts))
ray.shutdown()
"""


@pytest.mark.rllib
def test_local_ray_listens_on_loopback_only():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["NODE"] == "127.0.0.1"
    hosts = lines["HOSTS"].split(",")
    assert hosts and all(h in ("127.0.0.1", "::ffff:127.0.0.1") for h in hosts), hosts
