"""Same config and seed, same training: a tiny phase 1 trained twice in two fresh processes
with different PYTHONHASHSEED gives bit-identical metrics, validation and module weights.

Each run is its own subprocess (its own Ray instance, hash seed and torch / numpy state), as a
user running `rl-trading train` twice would be; the two runs go concurrently to save time.
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

SPECS = ["specialist_AAA", "specialist_BBB"]

CHILD = textwrap.dedent(
    """
    import json, sys
    import ray, torch
    from rl_trading.config import AppConfig
    from rl_trading.data import split_by_time, synthetic_market
    from rl_trading.training.checkpoints import load_module
    from rl_trading.training.env_bridge import hierarchical_factory
    from rl_trading.training.runner import run_phase

    SPECS = ["specialist_AAA", "specialist_BBB"]
    out, runners = sys.argv[1], int(sys.argv[2])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    bars = {
        **synthetic_market(["AAA"], n_bars=1200, seed=3, signal_strength=0.6),
        **synthetic_market(["BBB"], n_bars=1200, seed=4, signal_strength=0.0),
    }
    cfg = AppConfig.model_validate({
        "seed": 5,
        "data": {"symbols": ["AAA", "BBB"], "embargo_bars": 10},
        "env": {"episode_length": 50, "sectors": {}, "max_sector_allocation": None},
        "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 2},
        "policy": {"hidden_sizes": [16, 16]},
        "resources": {"num_env_runners": runners},
        "phases": {"phase1_timesteps": 256, "eval_interval": 1, "checkpoint_interval": 100},
    })
    splits = split_by_time(bars, 0.7, 0.15, 10)
    factory = hierarchical_factory(cfg, splits.train, splits.val)
    progress = []
    res = run_phase(cfg, 1, factory, out + "_run", tracking=False, progress=progress.append)
    weights = {pid: load_module(res.last_checkpoint, pid).state_dict() for pid in SPECS}
    torch.save(weights, out + ".pt")
    keep = ("val_", "env_steps", "episode_return", "specialist_")
    iters = [
        {k: v for k, v in m.items() if k.startswith(keep) and isinstance(v, float)}
        for m in progress
    ]
    json.dump({"iters": iters, "best": res.best_val_sharpe}, open(out, "w"))
    ray.shutdown()
    """
)


def _train_twice(tmp_path: Path, runners: int) -> tuple[dict, dict, dict, dict]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    procs = []
    for tag, hash_seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "RAY_ADDRESS": "local"}
        out = tmp_path / f"run_{tag}.json"
        cmd = [sys.executable, str(script), str(out), str(runners)]
        procs.append(
            (out, subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True))
        )
    results = []
    for out, proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append((json.loads(out.read_text()), _load_weights(Path(str(out) + ".pt"))))
    (ma, wa), (mb, wb) = results
    return ma, mb, wa, wb


def _load_weights(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("runners", [0, 2])  # 2: the default, episodes from two processes
def test_same_seed_same_training_across_processes(tmp_path, runners):
    import torch

    ma, mb, wa, wb = _train_twice(tmp_path, runners)
    assert len(ma["iters"]) == 2  # episodes (50 steps) cross the 128-step batches
    assert ma["iters"][-1]["env_steps"] >= 256
    # validation ran every iteration, on real numbers, identical bit for bit
    assert all("val_sharpe" in it for it in ma["iters"])
    assert ma["best"] is not None
    assert ma == mb
    assert set(wa) == set(wb) == set(SPECS)
    for pid in SPECS:
        assert set(wa[pid]) == set(wb[pid])
        for key in wa[pid]:
            assert torch.equal(wa[pid][key], wb[pid][key]), f"{pid}/{key} differs"
