"""`models ensemble`: compatible members only; an ensemble of copies acts like the model."""

from __future__ import annotations

import json

import pytest
import torch

from rl_trading.cli.main import main
from rl_trading.config import load_config

SETS = [
    "data.source=sample",
    "data.symbols=[MSFT]",
    "data.timeframe=1d",
    "data.embargo_bars=5",
    "train.window_size=8",
    "policy.hidden_sizes=[16]",
    "evaluation.seeds=[0]",
]
CLI_SETS = [x for s in SETS for x in ("--set", s)]


def _register(reg, cfg, ws, tag, seed, window=8, scaler_bars=None, sym="MSFT", config=None):
    """Register a random single-instrument policy with the scaler of the training split
    (and `config` as its stored training config)."""
    from envs.trading_env import TradingEnv
    from policies import module_spec
    from rl_trading.evaluation.selection import select_bars

    _, train, _ = select_bars(cfg, None, "val")
    bars = scaler_bars if scaler_bars is not None else train[sym]
    env = TradingEnv(cfg, bars=bars, eval_mode=True, window_size=window)
    m = module_spec(cfg, "default_policy", env.observation_space, env.action_space).build()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    path = ws / tag / "default_policy"
    m.save_to_path(path)
    rec = reg.register(
        path,
        model_type=f"ppo_{tag}",
        metrics={"sharpe": 1.0, "max_drawdown": 0.1},
        preprocessing={"scaler": env.scaler.to_dict(), "symbols": [sym]},
        config=config,
    )
    return rec.name


@pytest.fixture()
def members(workspace):
    from rl_trading.registry import ModelRegistry

    cfg = load_config(overrides=SETS)
    reg = ModelRegistry(cfg=cfg)
    return workspace, cfg, reg, _register(reg, cfg, workspace, "a", 0)


def test_ensemble_of_copies_backtests_like_the_model(members, capsys):
    ws, cfg, reg, name = members
    # the same weights registered a second time: a copy under another name
    copy = reg.register(
        ws / "a" / "default_policy",
        model_type="ppo_copy",
        metrics={"sharpe": 1.0, "max_drawdown": 0.1},
        preprocessing=reg.load_preprocessing(name),
    ).name
    code = main(["models", "ensemble", f"{name},{copy}", "--json", *CLI_SETS])
    out = capsys.readouterr()
    assert code == 0, out.err
    made = json.loads(out.out)
    assert made["model"]["kind"] == "ensemble" and made["model"]["type"] == "ensemble"
    assert made["model"]["lineage"]["members"] == [name, copy]
    strategies = made["strategies"]
    assert {"policy", name, copy, "buy_and_hold"} <= set(strategies)
    ens_row = {k: v for k, v in strategies["policy"].items() if k != "dsr"}  # the policy's own
    assert ens_row == strategies[name] == strategies[copy]
    assert 0.0 <= strategies["policy"]["dsr"] <= 1.0
    assert strategies["policy"] != strategies["buy_and_hold"]

    # the registered ensemble backtests like any model, identically to its member
    runs = {}
    for model in (made["model"]["name"], name):
        code = main(
            ["backtest", "--model", model, "--split", "test", "--folds", "1", "--json"]
            + ["--out", str(ws / "reports" / model), *CLI_SETS]
        )
        out = capsys.readouterr()
        assert code == 0, out.err
        runs[model] = json.loads(out.out)["strategies"]["policy"]
    # the same trading; only the DSR differs: the ensemble is deflated by its members' trials
    ens, member = runs[made["model"]["name"]], runs[name]
    assert {k: v for k, v in ens.items() if k != "dsr"} == {
        k: v for k, v in member.items() if k != "dsr"
    }
    assert ens["dsr"] <= member["dsr"]

    # models info / benchmark accept it; ONNX export refuses it in one line
    assert main(["models", "info", made["model"]["name"], "--json", *CLI_SETS]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["integrity"] == "all sha256 match" and info["kind"] == "ensemble"
    code = main(["models", "benchmark", "--models", made["model"]["name"], "--json", *CLI_SETS])
    assert code == 0
    bench = json.loads(capsys.readouterr().out)
    row = bench["metrics"][made["model"]["name"]]  # its DSR counts the models compared there
    assert {k: v for k, v in row.items() if k != "dsr"} == {
        k: v for k, v in ens.items() if k != "dsr"
    }
    code = main(["export", "onnx", "--model", made["model"]["name"], "--out", "e.onnx", *CLI_SETS])
    err = capsys.readouterr().err
    assert code != 0 and "is an ensemble" in err and len(err.strip().splitlines()) == 1


def test_incompatible_members_are_refused(members, capsys):
    from rl_trading.errors import CheckpointError
    from rl_trading.evaluation.ensemble import Ensemble
    from rl_trading.evaluation.selection import select_bars

    ws, cfg, reg, name = members
    wider = _register(reg, cfg, ws, "w", 1, window=12)  # another observation space
    with pytest.raises(CheckpointError, match="observation space"):
        Ensemble([name, wider], cfg=cfg)
    # same spaces, but a scaler fit on other bars: the members would see other observations
    _, train, _ = select_bars(cfg, None, "val")
    other = _register(reg, cfg, ws, "s", 2, scaler_bars=train["MSFT"].iloc[:400])
    with pytest.raises(CheckpointError, match="preprocessing 'scaler'"):
        Ensemble([name, other], cfg=cfg)
    code = main(["models", "ensemble", f"{name},{wider}", *CLI_SETS])
    err = capsys.readouterr().err
    assert code != 0 and "incompatible" in err and len(err.strip().splitlines()) == 1
    assert main(["models", "ensemble", name, *CLI_SETS]) != 0
    assert "at least two" in capsys.readouterr().err
    assert main(["models", "ensemble", f"{name},{other}", "--weights", "1", *CLI_SETS]) != 0
    assert "--weights has 1 values for 2 members" in capsys.readouterr().err


def test_ensemble_uses_stored_configs_and_refuses_duplicates(members, capsys):
    """Members registered with their training config: `models ensemble` evaluates on it (no
    --set needed), refuses a member given twice (also as NAME and NAME/VERSION) and members
    trained on other instruments, each error on one line, printed once."""
    from rl_trading.registry import ModelRegistry

    ws, _, _, _ = members
    names = {}
    for tag, sym, seed in (("x", "MSFT", 3), ("y", "MSFT", 4), ("g", "GOOGL", 5)):
        cfg = load_config(overrides=[*SETS, f"data.symbols=[{sym}]"])
        rec_name = _register(ModelRegistry(cfg=cfg), cfg, ws, tag, seed, sym=sym, config=cfg)
        names[tag] = rec_name
    for bad, want in (
        (f"{names['x']},{names['x']}", "given twice"),
        ("ppo_x,ppo_x/1", "are the same model"),
        (f"{names['x']},{names['g']}", "members trained on other data"),
    ):
        assert main(["models", "ensemble", bad]) != 0
        err = capsys.readouterr().err
        assert want in err and len(err.strip().splitlines()) == 1, err
    code = main(["models", "ensemble", "ppo_x,ppo_y", "--json"])  # no --set: stored config
    out = capsys.readouterr()
    assert code == 0, out.err
    made = json.loads(out.out)
    assert made["model"]["name"] == "ensemble/1"
    assert made["model"]["lineage"]["members"] == ["ppo_x/1", "ppo_y/1"]


def test_members_must_observe_the_same_columns():
    """Members whose stored configs differ in what they observe (trend windows of the same
    count, cross-sectional columns) would silently read each other's columns: refused."""
    from rl_trading.errors import ConfigError
    from rl_trading.evaluation.ensemble import check_member_configs

    base = {"data": {"symbols": ["A"], "timeframe": "1d"}, "train": {"window_size": 1}}

    class Stored:
        def __init__(self, env: dict) -> None:
            self.configs = {"a": {**base, "env": {"trend_windows": [20, 60]}}, "b": env}

        def load_training_config(self, name: str) -> dict:
            return self.configs[name] if name == "a" else {**base, "env": self.configs["b"]}

    check_member_configs(["a", "b"], Stored({"trend_windows": [20, 60]}))
    with pytest.raises(ConfigError, match=r"env.trend_windows=\[20, 60\], b has \[60, 250\]"):
        check_member_configs(["a", "b"], Stored({"trend_windows": [60, 250]}))
    with pytest.raises(ConfigError, match="env.cross_sectional"):
        check_member_configs(["a", "b"], Stored({"trend_windows": [20, 60], "cross_sectional": 1}))
