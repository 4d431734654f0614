"""Secrets come only from environment variables (`${VAR}` in URLs, RL_TRADING_DB_URL,
MLFLOW_TRACKING_TOKEN) and never reach MLflow params, tags, artifacts, run files or logs."""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path

import pytest
from training_standin import standin_factory

from rl_trading.config import AppConfig
from rl_trading.errors import ConfigError, ConnectionFailure


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _all_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


def test_db_url_password_from_env_is_used_but_never_recorded(workspace, monkeypatch):
    from rl_trading.data import load_market
    from rl_trading.data.store import BarStore

    password = "pw-" + secrets.token_hex(8)
    monkeypatch.setenv("RLT_TEST_DB_PASSWORD", password)
    url = f"postgresql+psycopg2://trader:${{RLT_TEST_DB_PASSWORD}}@127.0.0.1:{_closed_port()}/bars"
    cfg = AppConfig.model_validate({"data": {"source": "sql", "symbols": ["AAA"], "db_url": url}})
    assert password not in str(cfg.flat()) and password not in cfg.model_dump_json()
    store = BarStore(cfg.data.db_url)
    assert store.engine.url.password == password  # expanded where it is used...
    assert password not in store.safe_url  # ...and redacted where it is shown
    with pytest.raises(ConnectionFailure) as err:
        load_market(cfg)
    assert password not in str(err.value)
    monkeypatch.delenv("RLT_TEST_DB_PASSWORD")
    with pytest.raises(ConfigError, match="RLT_TEST_DB_PASSWORD is not set"):
        BarStore(cfg.data.db_url)
    # RL_TRADING_DB_URL keeps the whole URL (with its password) out of the config.
    monkeypatch.setenv(
        "RL_TRADING_DB_URL", f"postgresql+psycopg2://trader:{password}@127.0.0.1:1/bars"
    )
    assert BarStore().engine.url.password == password
    assert password not in str(AppConfig().flat())


@pytest.mark.rllib
def test_tracked_phase_leaks_no_secret(ray_session, workspace, monkeypatch, caplog, capfd):
    import mlflow

    from rl_trading.training.runner import run_phase

    password, token = "pw-" + secrets.token_hex(8), "tok-" + secrets.token_hex(8)
    monkeypatch.setenv("RLT_TEST_DB_PASSWORD", password)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)  # MLflow's own variable for servers
    cfg = AppConfig.model_validate(
        {
            "seed": 1,
            "data": {
                "db_url": "postgresql+psycopg2://trader:${RLT_TEST_DB_PASSWORD}@db.internal/bars"
            },
            "ppo": {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1},
            "policy": {"hidden_sizes": [8]},
            "resources": {"num_env_runners": 0},
            "phases": {"phase1_timesteps": 128, "eval_interval": 1, "checkpoint_interval": 1},
            "tracking": {"system_metrics": False},
        }
    )
    run_dir = workspace / "run"
    with caplog.at_level(logging.DEBUG):
        res = run_phase(cfg, 1, standin_factory(episode_length=16), run_dir)
    assert res.iterations == 2 and res.mlflow_run_id
    from rl_trading.tracking import resolve_tracking_uri

    # the phase ran in a Tune trial process: read the store it wrote (this workspace's), not
    # whatever tracking URI an earlier test left in this process's mlflow
    run = mlflow.MlflowClient(resolve_tracking_uri()).get_run(res.mlflow_run_id)
    params, tags = run.data.params, run.data.tags
    assert params["data.db_url"].startswith(
        "postgresql+psycopg2://trader:"
    )  # the URL is recorded...
    recorded = [str(params), str(tags), _all_text(workspace / "mlartifacts"), _all_text(run_dir)]
    assert (run_dir / "config.yaml").is_file() and list(
        (workspace / "mlartifacts").rglob("config.yaml")
    )
    assert "mlflow.db" in str(sorted(p.name for p in workspace.iterdir()))
    out, err = capfd.readouterr()
    recorded += [caplog.text, out, err]
    for secret in (password, token):
        for i, text in enumerate(recorded):
            assert secret not in text, f"secret leaked into record {i}"  # ...its secret is not
