"""One Sharpe everywhere: validation, the env summary, backtest reports, the registry name,
`models info` and `DistributedTrainer.evaluate` give the same number for the same split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rl_trading.config import load_config, resolve_calendar
from rl_trading.data import synthetic_market
from tests.conftest import HIERARCHY_SETS

SYMS = ["AAA", "BBB"]
SETS = HIERARCHY_SETS


def _random_hierarchy(cfg, bars, root):
    """A joint-mode policy with seeded random weights saved like an RLlib checkpoint."""
    from envs import HierarchicalTradingEnv
    from policies import module_spec

    env = HierarchicalTradingEnv(cfg, bars=bars, mode="joint", eval_mode=True)
    mod_root = root / "learner_group" / "learner" / "rl_module"
    torch.manual_seed(3)
    for agent in env.possible_agents:
        module = module_spec(
            cfg, agent, env.observation_space(agent), env.action_space(agent)
        ).build()
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.3)
        module.save_to_path(mod_root / agent)
    return root


def test_one_equity_curve_through_every_path(monkeypatch):
    """The env's episode summary, validation (checkpoint selection, PBT objective,
    DistributedTrainer.evaluate) and backtest metrics (reports, registry, notebook) of one
    equity curve are identical."""
    from envs import HierarchicalTradingEnv
    from rl_trading.evaluation.backtest import strategy_metrics
    from rl_trading.evaluation.baselines import StrategyRun
    from rl_trading.training import validation
    from rl_trading.training.env_bridge import EnvFactory

    cfg = load_config(overrides=SETS)
    bars = synthetic_market(SYMS, n_bars=400, seed=1, timeframe="1h", annual_vol=0.3)
    pinned = resolve_calendar(cfg, bars)
    ppy = pinned.data.periods_per_year
    env = HierarchicalTradingEnv(pinned, bars=bars, mode="joint", eval_mode=True)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    while env.agents:
        acts = {a: env.action_space(a).sample() * 0 + rng.uniform(0, 1) for a in env.agents}
        _, _, terms, truncs, _ = env.step(acts)
        if any(terms.values()) or all(truncs.values()):
            break
    summary = env.episode_summary()
    equity = np.asarray(summary["equity"])
    assert equity.std() > 0

    factory = EnvFactory("x", lambda mode: {}, lambda mode: {}, periods_per_year=ppy)
    monkeypatch.setattr(
        validation, "run_policies", lambda *a, **k: {"equity": equity, "steps": len(equity)}
    )
    val = validation.validate(factory, "joint", {})
    run = StrategyRun(
        "policy",
        summary["timestamps"],
        SYMS,
        equity,
        np.asarray(summary["exposures"]),
        np.zeros(len(equity)),
    )
    rep = strategy_metrics(run, pinned)
    env_m = summary["metrics"]
    for key_val, key in (
        ("val_sharpe", "sharpe_ratio"),
        ("val_sortino", "sortino_ratio"),
        ("val_max_drawdown", "max_drawdown"),
        ("val_psr", "psr"),
    ):
        assert val[key_val] == rep[key] == env_m[key], key


def test_registered_name_info_report_and_trainer_evaluate_agree(workspace):
    """Register on the test split, then the name, `models info`, the report written for that
    split and DistributedTrainer.evaluate on the same split show the same Sharpe."""
    from rl_trading.evaluation.backtest import backtest, load_policy
    from rl_trading.evaluation.registration import register_policy
    from rl_trading.evaluation.report import write_report
    from rl_trading.evaluation.selection import select_bars
    from rl_trading.registry import ModelRegistry, format_metric
    from rl_trading.training.trainer import DistributedTrainer

    cfg = load_config(overrides=SETS)
    test, train, _ = select_bars(cfg, None, "test")
    ckpt = _random_hierarchy(cfg, train, workspace / "ckpt")
    rec, res = register_policy(ckpt, cfg, split="test")
    sharpe = res.metrics["policy"]["sharpe_ratio"]
    assert rec.metrics["sharpe"] == pytest.approx(sharpe, rel=1e-12)
    assert rec.name == "hierarchical_ppo/1"
    assert rec.tags["rl_trading.metric_value"] == repr(rec.metrics["sharpe"])
    assert format_metric(sharpe) == format_metric(rec.metric_value)
    info = ModelRegistry(cfg=cfg).info(rec.name)
    assert info.metrics["sharpe"] == pytest.approx(sharpe, rel=1e-12)
    assert info.tags["rl_trading.graded_split"] == "test"
    assert rec.metrics["n_trials"] >= 1 and 0.0 <= rec.metrics["dsr"] <= 1.0

    report = backtest(rec.name, test, cfg, seed=cfg.seed, scaler_bars=train)
    paths = write_report(report, workspace / "report", cfg)
    meta = json.loads(paths["report"].read_text())["meta"]
    reported = json.loads(paths["report"].read_text())["strategies"]["policy"]["sharpe_ratio"]
    assert reported == pytest.approx(sharpe, rel=1e-9)
    assert meta["periods_per_year"] == rec.metrics["periods_per_year"]
    assert meta["risk_free_rate"] == 0.0
    assert meta["start"] == res.meta["start"] and meta["end"] == res.meta["end"]

    trainer = DistributedTrainer(cfg, run_dir=workspace / "run")
    trainer.create_env(train, test)
    modules = load_policy(ckpt, cfg).modules
    evaluated = trainer.evaluate(agent=modules)
    # Same bars, scalers, seed and calendar; validation acts through the stacked actor, so the
    # equity agrees to float32 rounding (~1e-6) and the Sharpe to well within the name's
    # two decimals for any realistic Sharpe (this random policy's is extreme, about -90).
    assert evaluated["val_steps"] == len(res.runs["policy"].equity) - 1
    assert evaluated["val_sharpe"] == pytest.approx(sharpe, rel=1e-3)
    assert evaluated["val_max_drawdown"] == pytest.approx(
        res.metrics["policy"]["max_drawdown"], rel=1e-4
    )
