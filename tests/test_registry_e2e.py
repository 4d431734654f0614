"""Quickstart-sized end to end: phase 1 tiny -> register -> backtest -> models list/benchmark,
export, all through the CLI in one workspace."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rl_trading.cli.main import main
from rl_trading.config import CONFIG_DIR, load_config

pytestmark = pytest.mark.rllib

TINY = [
    "ppo.train_batch_size=128",
    "ppo.minibatch_size=64",
    "ppo.num_epochs=1",
    "policy.hidden_sizes=[16,16]",
    "resources.num_env_runners=0",
    "phases.phase1_timesteps=256",
    "phases.eval_interval=1",
    "phases.checkpoint_interval=1",
    "tracking.system_metrics=false",
    "evaluation.seeds=[0,1]",
]


def test_phase1_register_backtest_list_benchmark(ray_session, workspace, capsys):
    from rl_trading.evaluation.registration import register_policy
    from rl_trading.registry import ModelRegistry
    from rl_trading.training.session import train

    cfg_path = CONFIG_DIR / "quickstart.yaml"
    cfg = load_config(cfg_path, TINY)
    run_dir, results = train(cfg, (1,), run_dir=workspace / "run")
    p1 = results["phase1"]
    rec_best, res = register_policy(p1.best_checkpoint, cfg, "hierarchical_ppo", split="val")
    rec_last, _ = register_policy(p1.last_checkpoint, cfg, "hierarchical_ppo", split="val")
    assert rec_best.version == "1.0.0"
    assert rec_last.version == "1.0.1"  # same signature, data and config -> patch
    assert rec_best.lineage["phase1"] == p1.best_checkpoint
    assert rec_best.data_fingerprint
    # Trials: every validation pass that chose the checkpoint; graded on val -> at most C.
    state = json.loads((run_dir / "state.json").read_text())
    passes = len(state["phases"]["phase1"]["val_sharpes"])
    assert passes == p1.iterations and rec_best.metrics["n_trials"] == passes
    assert rec_best.tags["rl_trading.graded_split"] == "val"
    assert rec_best.grade in ("C", "D", "F")
    pm = res.metrics["policy"]
    assert rec_best.metrics["sharpe"] == pytest.approx(pm["sharpe_ratio"])
    assert res.meta["env"] == "hierarchical" and res.runs["policy"].extra["mode"] == "specialists"

    # Load from the registry -> same observations -> same actions as the raw checkpoint.
    from rl_trading.evaluation.backtest import load_policy

    reg = ModelRegistry(cfg=cfg)
    pre = reg.load_preprocessing(rec_best.name)
    assert set(pre["scalers"]) == {"MSFT", "GOOGL", "SP500"}
    raw = load_policy(p1.best_checkpoint, cfg)
    stored = load_policy(rec_best.name, cfg)
    obs = np.random.default_rng(0).normal(
        size=(64, *raw.modules["specialist_MSFT"].observation_space.shape)
    )
    np.testing.assert_array_equal(
        raw.act("specialist_MSFT", obs.astype(np.float32)),
        stored.act("specialist_MSFT", obs.astype(np.float32)),
    )

    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["models", "list", "-c", str(cfg_path), *sets]) == 0
    out = capsys.readouterr().out
    assert (rec_best.name, rec_last.name) == ("hierarchical_ppo/1", "hierarchical_ppo/2")
    assert "hierarchical_ppo (rl, 2 versions)" in out
    assert rec_best.name in out and rec_last.name in out

    rep = workspace / "bt"
    code = main(
        [
            "backtest",
            "--model",
            rec_best.name,
            "--split",
            "test",
            "-c",
            str(cfg_path),
            *sets,
            "--out",
            str(rep),
            "--folds",
            "2",
            "--seeds",
            "0,1",
        ]
    )
    assert code == 0
    report = json.loads((rep / "report.json").read_text())
    assert report["meta"]["scaler_origin"] == "policy preprocessing"
    assert report["walk_forward"]["n_runs"] == 4
    assert {"policy", "buy_and_hold", "flat", "random"} <= set(report["strategies"])
    assert (rep / "equity.png").stat().st_size > 1000

    # no -c: the model's stored training config (the quickstart's 3 sample symbols, not the
    # defaults' 8 synthetic ones) and its scalers
    rep2 = workspace / "bt_stored"
    args = ["--split", "test", "--out", str(rep2), "--folds", "1", "--seeds", "0"]
    assert main(["backtest", "--model", rec_best.name, *args]) == 0
    meta = json.loads((rep2 / "report.json").read_text())["meta"]
    assert meta["symbols"] == ["MSFT", "GOOGL", "SP500"]
    assert meta["config"] == "training config stored with the policy"
    assert meta["scaler_origin"] == "policy preprocessing"
    bench_stored = workspace / "bench_stored.json"
    args = ["--models", rec_best.name, "--split", "test", "--out", str(bench_stored)]
    assert main(["models", "benchmark", *args]) == 0
    assert rec_best.name in json.loads(bench_stored.read_text())["metrics"]

    bench = workspace / "bench.json"
    code = main(
        [
            "models",
            "benchmark",
            "--models",
            f"{rec_best.name},{rec_last.name}",
            "--split",
            "test",
            "-c",
            str(cfg_path),
            *sets,
            "--out",
            str(bench),
        ]
    )
    assert code == 0
    table = json.loads(bench.read_text())
    assert rec_best.name in table["metrics"] and rec_last.name in table["metrics"]
    assert len(set(map(tuple, table["spans"].values()))) == 1  # same bars for both

    onnx = workspace / "spec.onnx"
    code = main(
        [
            "export",
            "onnx",
            "--model",
            rec_best.name,
            "--policy",
            "specialist_MSFT",
            "--out",
            str(onnx),
            "-c",
            str(cfg_path),
            *sets,
        ]
    )
    assert code == 0 and onnx.stat().st_size > 0
    assert main(["models", "info", "no_such_model", "-c", str(cfg_path), *sets]) == 6
    assert "unknown model" in capsys.readouterr().err
