"""Shared fixtures: one session-scoped Ray, the real-data folder, temporary workspaces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MARKET_DIR = Path(os.environ.get("RL_TRADING_MARKET_DIR", REPO_ROOT.parent / "shared/data/market"))


def pytest_addoption(parser):
    parser.addoption(
        "--stock-rllib",
        action="store_true",
        help="train on RLlib's stock classes (sets RL_TRADING_FAST_PATHS=0, also for subprocesses)",
    )


def pytest_configure(config):
    if config.getoption("--stock-rllib"):
        os.environ["RL_TRADING_FAST_PATHS"] = "0"


# What the tests cost: the RLlib runs of these files (training phases, learning checks, fault
# injection, Tune / PBT, the demo and other end-to-end runs; each from ~20 s to a few minutes
# on 2 cores) are `slow`: `make test` leaves them out, CI runs them next (`make test-slow`).
# The default tier keeps a few short RLlib smoke tests (config, local Ray, secrets).
SLOW_RLLIB_FILES = frozenset(
    f"test_{name}.py"
    for name in (
        "checkpoint_restore", "cluster", "demo", "faults_cli", "faults_env_runner", "notebook",
        "pretrained_encoder", "registry_e2e", "scale_out", "supervised_tune", "training_cli",
        "training_curriculum", "training_determinism", "training_fast_paths", "training_grouped",
        "training_learning", "training_phases", "training_real_bars", "training_signals",
        "training_speedups", "training_trainer", "training_tune", "tuning_pbt",
        "walk_forward_retrain",
    )
)  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_RLLIB_FILES and item.get_closest_marker("rllib"):
            item.add_marker(pytest.mark.slow)


def pytest_report_header(config):
    mode = os.environ.get("RL_TRADING_FAST_PATHS", "").strip() or "unset (fast paths)"
    return f"RL_TRADING_FAST_PATHS: {mode}"


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole session (2 CPUs, no dashboard), started on first use."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh local instance, never a stray cluster on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def market_dir() -> Path:
    """The real-market folder; tests that need it skip with a reason when it is absent."""
    if not MARKET_DIR.is_dir():
        pytest.skip(f"real market data not found at {MARKET_DIR} (set RL_TRADING_MARKET_DIR)")
    return MARKET_DIR


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """Run in a fresh workspace directory so embedded stores (MLflow, SQLite) stay isolated."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a real PostgreSQL server for SQL tests (set by .ci/run), else skip."""
    url = os.environ.get("RL_TRADING_TEST_PG_URL")
    if not url:
        pytest.skip("no PostgreSQL server configured (RL_TRADING_TEST_PG_URL unset)")
    return url


HIERARCHY_SETS = [
    "data.source=synthetic",
    "data.symbols=[AAA, BBB]",
    "data.timeframe=1h",
    "data.synthetic.n_bars=1200",
    "data.embargo_bars=5",
    "train.window_size=8",
    "env.risk_window=20",
    "tracking.system_metrics=false",
]


@pytest.fixture()
def hierarchy_checkpoint(workspace):
    """(cfg, checkpoint dir) of a two-instrument joint hierarchy (specialists + meta) with
    seeded random weights, saved like an RLlib checkpoint (no training, no Ray)."""
    import torch

    from envs import HierarchicalTradingEnv
    from policies import module_spec
    from rl_trading.config import load_config
    from rl_trading.evaluation.selection import select_bars

    cfg = load_config(overrides=HIERARCHY_SETS)
    _, train, _ = select_bars(cfg, None, "test")
    env = HierarchicalTradingEnv(cfg, bars=train, mode="joint", eval_mode=True)
    root = workspace / "ckpt"
    torch.manual_seed(3)
    for agent in env.possible_agents:
        module = module_spec(cfg, agent, env.observation_space(agent), env.action_space(agent))
        module = module.build()
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.3)
        module.save_to_path(root / "learner_group" / "learner" / "rl_module" / agent)
    return cfg, root
