"""`models` / `backtest` / `export` CLI round trip on registered single-instrument policies."""

from __future__ import annotations

import json

import pytest
import torch

from rl_trading.cli.main import main
from rl_trading.config import load_config
from rl_trading.data import synthetic_market, write_bars

SETS = [
    "--set",
    "data.timeframe=1h",
    "--set",
    "train.window_size=8",
    "--set",
    "evaluation.seeds=[0,1]",
]


@pytest.fixture()
def setup(workspace):
    from envs.trading_env import TradingEnv
    from policies import module_spec
    from rl_trading.registry import ModelRegistry

    cfg = load_config(overrides=[s for s in SETS if s != "--set"])
    bars = synthetic_market(["AAA"], n_bars=500, seed=4, timeframe="1h")["AAA"]
    write_bars(bars, workspace / "aaa_1h.csv.gz")
    env = TradingEnv(cfg, bars=bars, eval_mode=True)
    reg = ModelRegistry(cfg=cfg)
    names = []
    for seed, (sharpe, mdd) in enumerate([(1.3, 0.04), (2.2, 0.02)]):
        m = module_spec(cfg, "default_policy", env.observation_space, env.action_space).build()
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.3)
        m.save_to_path(workspace / f"m{seed}" / "default_policy")
        rec = reg.register(
            workspace / f"m{seed}" / "default_policy",
            model_type="ppo_single",
            metrics={"sharpe": sharpe, "max_drawdown": mdd, "dsr": 0.99},
            preprocessing={"scaler": env.scaler.to_dict()},
            untouched=True,
        )
        names.append(rec.name)
    return workspace, names


def test_models_cli_round_trip(setup, capsys, monkeypatch):
    ws, (n1, n2) = setup
    assert (n1, n2) == ("ppo_single/1", "ppo_single/2")
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["models", "promote", n2, "--alias", "challenger", *SETS]) == 0
    capsys.readouterr()
    assert main(["models", "list", *SETS]) == 0
    out = capsys.readouterr().out
    assert "ppo_single (rl, 2 versions) @challenger=2" in out
    assert n1 in out and n2 in out and "1.0.0" in out and "1.0.1" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert main(["models", "list", "--grade", "S", *SETS]) == 0
    out = capsys.readouterr().out
    assert n2 in out and n1 not in out
    assert main(["models", "info", n1, *SETS]) == 0
    out = capsys.readouterr().out
    assert "all sha256 match" in out and "Metrics" in out and '{"' not in out
    assert "sharpe" in out and "max_drawdown" in out
    assert main(["models", "promote", n1, *SETS]) == 0
    assert "ppo_single@champion" in capsys.readouterr().out
    assert main(["models", "info", "ppo_single@champion", *SETS]) == 0
    assert n1 in capsys.readouterr().out
    assert main(["models", "promote", n2, *SETS]) == 0
    assert main(["models", "rollback", "ppo_single", *SETS]) == 0
    assert "back on ppo_single/1" in capsys.readouterr().out
    assert main(["models", "info", "nope", *SETS]) == 6
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "Traceback" not in err

    rep = ws / "rep"
    code = main(
        [
            "backtest",
            "--model",
            n1,
            "--data",
            str(ws / "aaa_1h.csv.gz"),
            "--out",
            str(rep),
            "--folds",
            "2",
            *SETS,
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "buy_and_hold" in out and "Walk-forward" in out
    report = json.loads((rep / "report.json").read_text())
    assert report["walk_forward"]["n_runs"] == 2 * 2
    assert report["meta"]["scaler_origin"] == "policy preprocessing"
    assert report["meta"]["n_trials"] == 1 and report["meta"]["risk_free_rate"] == 0.0
    assert 0.0 <= report["strategies"]["policy"]["dsr"] <= 1.0
    assert "buy_and_hold_vol_matched" in report["strategies"]
    assert report["walk_forward"]["retrained"] is False
    for png in ("equity.png", "drawdown.png", "positions.png", "walk_forward.png"):
        assert (rep / png).stat().st_size > 1000

    bench = ws / "bench.json"
    code = main(
        [
            "models",
            "benchmark",
            "--models",
            f"{n1},{n2}",
            "--data",
            str(ws / "aaa_1h.csv.gz"),
            "--out",
            str(bench),
            *SETS,
        ]
    )
    assert code == 0
    table = json.loads(bench.read_text())
    assert {n1, n2, "buy_and_hold", "flat"} <= set(table["metrics"])
    assert table["spans"][n1] == table["spans"][n2]
    assert table["metrics"][n1]["sharpe_ratio"] != table["metrics"][n2]["sharpe_ratio"]
    assert table["n_trials"] == 2 and table["pbo"] is None  # PBO from 4 models compared
    assert "selection_on_test" not in table  # --data FILE: not the test split

    onnx = ws / "p.onnx"
    assert main(["export", "onnx", "--model", n1, "--out", str(onnx), *SETS]) == 0
    assert "parity" in capsys.readouterr().out and onnx.stat().st_size > 0
    code = main(
        [
            "export",
            "onnx",
            "--checkpoint",
            str(ws / "m0" / "default_policy"),
            "--out",
            str(ws / "q.onnx"),
            *SETS,
        ]
    )
    assert code == 0

    # Tamper with the stored weights: loading for a backtest now fails with one line.
    from rl_trading.registry import ModelRegistry

    stored = ModelRegistry().load_path(n1)
    state = next(stored.rglob("module_state*"))
    state.write_bytes(state.read_bytes() + b"x")
    code = main(
        [
            "backtest",
            "--model",
            n1,
            "--data",
            str(ws / "aaa_1h.csv.gz"),
            "--folds",
            "1",
            "--out",
            str(ws / "rep2"),
            *SETS,
        ]
    )
    assert code == 6
    assert "sha256 mismatch" in capsys.readouterr().err


def test_backtest_cli_needs_one_source(workspace, capsys):
    assert main(["backtest", *SETS]) == 2
    assert "exactly one" in capsys.readouterr().err
