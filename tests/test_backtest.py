"""Backtests: baselines on synthetic bars, walk-forward CIs, reports, a restored policy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rl_trading.artifacts import write_manifest
from rl_trading.config import load_config
from rl_trading.data import read_bars, synthetic_market
from rl_trading.errors import CheckpointError, DataError
from rl_trading.evaluation.backtest import backtest, check_targets
from rl_trading.evaluation.baselines import (
    VOL_TARGET,
    cost_rate,
    policy_gross_limit,
    random_targets,
    run_baselines,
    simulate_weights,
    trailing_vol_targets,
    vol_matched,
)
from rl_trading.evaluation.report import report_dict, write_report
from rl_trading.evaluation.selection import select_bars
from rl_trading.evaluation.walk_forward import mean_ci, walk_forward

SYMS = ["AAA", "BBB"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(
        overrides=[
            "data.timeframe=1h",
            "env.transaction_cost=0.001",
            "env.slippage_bps=2",
            "env.spread_bps=2",
            "env.risk_window=20",
            "evaluation.seeds=[0,1]",
            "train.window_size=8",
        ]
    )


@pytest.fixture(scope="module")
def bars():
    return synthetic_market(SYMS, n_bars=600, seed=3, timeframe="1h", annual_vol=0.3)


def test_flat_is_zero_and_buy_and_hold_is_price_path_minus_costs(cfg, bars):
    runs = run_baselines(bars, cfg, seed=0, include_supervised=False)
    assert set(runs) == {"buy_and_hold", "equal_weight", "flat", "random", VOL_TARGET}
    flat = runs["flat"]
    assert np.all(flat.equity == cfg.env.initial_capital)
    assert flat.costs.sum() == 0.0

    one = {"AAA": bars["AAA"]}
    bh = run_baselines(one, cfg, seed=0, include_supervised=False)["buy_and_hold"]
    rate = cost_rate(cfg)
    assert rate == pytest.approx(0.001 + 3e-4)
    cap = cfg.env.initial_capital
    close, open1 = bars["AAA"]["close"].to_numpy(), bars["AAA"]["open"].iloc[1]
    expected = cap * close[1:] / open1 - cap * rate  # bought at bar 1's open, one fee
    np.testing.assert_allclose(bh.equity[1:], expected, rtol=1e-12)
    assert bh.equity[0] == cap
    assert bh.costs.sum() == pytest.approx(cap * rate)
    assert np.allclose(bh.weights[1:, 0], 1.0, atol=0.01)


def test_no_look_ahead_and_costs_in_simulation(cfg, bars):
    one = {"AAA": bars["AAA"]}
    n = len(bars["AAA"])
    # A target set at bar t only affects equity from bar t+1 on.
    targets = np.full((n, 1), np.nan)
    targets[100] = 1.0
    run = simulate_weights("x", one, targets, 1000.0, 0.0)
    assert np.all(run.equity[:101] == 1000.0)
    assert run.equity[101] != 1000.0
    # Random baseline is seeded and respects its bounds.
    a = random_targets(n, 2, seed=5, max_weight=0.3, allow_short=False)
    b = random_targets(n, 2, seed=5, max_weight=0.3, allow_short=False)
    assert np.array_equal(a, b, equal_nan=True)
    assert np.nanmin(a) >= 0.0 and np.nanmax(a) <= 0.3
    # Churning costs money: a strategy flipping every bar with costs loses vs no costs.
    flip = np.tile([[1.0], [-1.0]], (n // 2, 1))
    free = simulate_weights("f", one, flip, 1000.0, 0.0).equity[-1]
    paid = simulate_weights("p", one, flip, 1000.0, 0.01).equity[-1]
    assert paid < free * 0.5


def test_targets_pass_fail(cfg):
    good = {"sharpe_ratio": 2.5, "max_drawdown": 0.05, "win_rate": 0.6, "var_compliance": 0.97}
    bad = {"sharpe_ratio": 0.1, "max_drawdown": 0.4, "win_rate": 0.4, "var_compliance": 0.9}
    assert all(c["pass"] for c in check_targets(good, cfg).values())
    assert not any(c["pass"] for c in check_targets(bad, cfg).values())


def test_mean_ci():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert ci["mean"] == pytest.approx(2.5)
    # t(0.975, 3) = 3.182; std = 1.291 -> half width 2.054
    assert ci["ci_high"] - ci["mean"] == pytest.approx(3.1824 * 1.29099 / 2.0, rel=1e-3)
    assert mean_ci([5.0])["ci_low"] == 5.0
    assert mean_ci([])["n"] == 0


def test_walk_forward_folds_x_seeds_and_report(cfg, bars, tmp_path):
    walk = walk_forward(
        None, bars, cfg, n_folds=3, seeds=[0, 1], embargo=5, include_supervised=False
    )
    assert walk.n_runs == 3 * 2
    assert len(walk.folds) == 3
    rnd = walk.summary["random"]["sharpe_ratio"]
    # the interval is over the 3 sub-periods (seeds averaged), never 3 x 2 copies
    assert rnd["n"] == 3 and rnd["ci_low"] <= rnd["mean"] <= rnd["ci_high"]
    per_fold = [
        np.mean(
            [r["sharpe_ratio"] for r in walk.rows if r["strategy"] == "random" and r["fold"] == f]
        )
        for f in range(3)
    ]
    assert rnd["mean"] == pytest.approx(np.mean(per_fold))
    assert walk.meta["retrained"] is False and "not retrained" in walk.meta["label"]
    assert rnd["ci_high"] > rnd["ci_low"]  # seeds and folds really differ
    flat = walk.summary["flat"]["total_return"]
    assert flat["mean"] == 0.0 and flat["ci_high"] == 0.0
    paths = write_report(walk.last, tmp_path / "rep", cfg, walk=walk)
    for key in ("equity", "drawdown", "positions", "walk_forward", "report"):
        assert paths[key].is_file() and paths[key].stat().st_size > 1000, key
    data = json.loads(paths["report"].read_text())
    assert {"meta", "targets", "strategies", "target_checks", "walk_forward"} <= set(data)
    assert data["walk_forward"]["retrained"] is False
    assert "sub-periods" in data["walk_forward"]["label"]
    assert data["targets"]["sharpe_ratio"]["target"] == cfg.reward.sharpe_target
    assert len(data["walk_forward"]["rows"]) == 3 * 2 * 5  # 4 baselines + vol-targeted
    for name in ("buy_and_hold", "equal_weight", "flat", "random"):
        assert {
            "sharpe_ratio",
            "max_drawdown",
            "win_rate",
            "var_compliance",
            "value_at_risk",
            "turnover",
        } <= set(data["strategies"][name])


def _policy_dir(cfg, bars, tmp_path):
    from envs.trading_env import TradingEnv
    from policies import module_spec

    env = TradingEnv(cfg, bars=bars["AAA"], eval_mode=True)
    spec = module_spec(cfg, "default_policy", env.observation_space, env.action_space)
    module = spec.build()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    module.save_to_path(tmp_path / "default_policy")
    scaler = env.scaler.to_dict()
    (tmp_path / "default_policy" / "preprocessing.json").write_text(json.dumps({"scaler": scaler}))
    write_manifest(tmp_path / "default_policy")  # project metadata needs its manifest
    return tmp_path / "default_policy", module


def test_policy_backtest_single_instrument(cfg, bars, tmp_path):
    path, module = _policy_dir(cfg, bars, tmp_path)
    one = {"AAA": bars["AAA"]}
    res = backtest(path, one, cfg, seed=0, include_supervised=False)
    pol = res.runs["policy"]
    assert res.meta["scaler_origin"] == "policy preprocessing"
    assert set(res.runs) == {
        "policy",
        "buy_and_hold",
        "equal_weight",
        "flat",
        "random",
        "buy_and_hold_vol_matched",
        "equal_weight_vol_matched",
        VOL_TARGET,
    }
    # Risk-matched baselines: same realised volatility as the policy (within the gross limit)
    pol_vol = res.metrics["policy"]["volatility"]
    for name in ("buy_and_hold_vol_matched", "equal_weight_vol_matched"):
        matched = res.runs[name]
        if not matched.extra["limit_bound"]:
            assert res.metrics[name]["volatility"] == pytest.approx(pol_vol, rel=0.02)
        assert res.metrics[name]["exposure"] <= cfg.env.max_position_size * 1.1
    assert res.metrics["policy"]["exposure"] > 0 and "dsr" in res.metrics["policy"]
    assert res.meta["risk_free_rate"] == 0.0 and res.meta["periods_per_year"] > 0
    # Baselines cover exactly the policy's bars with the same starting capital.
    for name, run in res.runs.items():
        assert len(run.equity) == len(pol.equity), name
        assert run.index[0] == pol.index[0]
        assert run.equity[0] == pol.equity[0]
    assert res.metrics["flat"]["total_return"] == 0.0
    assert np.abs(pol.weights).max() <= cfg.env.max_position_size * 1.05  # + price drift
    assert pol.weights.std() > 0  # the policy really traded
    # Deterministic: the in-memory module, another seed, the scaler refit on the same bars
    # (the stored one was fit on them too) -> the very same equity curve.
    again = backtest(module, one, cfg, seed=1, include_supervised=False)
    assert again.meta["scaler_origin"].startswith("evaluated bars")
    np.testing.assert_allclose(again.runs["policy"].equity, pol.equity, rtol=1e-12)
    out = report_dict(res, cfg)
    assert "policy_vs_baselines" in out and "buy_and_hold" in out["policy_vs_baselines"]


def test_policy_backtest_hierarchy(cfg, bars, tmp_path):
    from envs import HierarchicalTradingEnv
    from policies import module_spec

    env = HierarchicalTradingEnv(cfg, bars=bars, mode="joint", eval_mode=True)
    root = tmp_path / "ckpt" / "learner_group" / "learner" / "rl_module"
    torch.manual_seed(1)
    for agent in env.possible_agents:
        module = module_spec(
            cfg, agent, env.observation_space(agent), env.action_space(agent)
        ).build()
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.3)
        module.save_to_path(root / agent)
    res = backtest(tmp_path / "ckpt", bars, cfg, seed=0, include_supervised=False)
    pol = res.runs["policy"]
    assert res.meta["env"] == "hierarchical"
    assert pol.weights.shape == (len(pol.equity), 2)
    assert pol.extra["mode"] == "joint"
    assert 0.0 <= res.metrics["policy"]["risk_limit_compliance"] <= 1.0
    assert res.runs["buy_and_hold"].equity[0] == pol.equity[0] == cfg.env.initial_capital
    assert len(res.runs["equal_weight"].equity) == len(pol.equity)
    # the policy's warm-up feeds the vol-targeted baseline's volatility (as the env's sizes):
    # it holds its position from the first evaluated bar, not after 10 bars of cash
    assert len(res.runs[VOL_TARGET].equity) == len(pol.equity)
    assert np.abs(res.runs[VOL_TARGET].weights[1]).sum() > 0
    # a config that observes more (trend columns) than the model was built for: one line
    wider = cfg.model_copy(deep=True)
    wider.env.trend_windows = [5]
    with pytest.raises(CheckpointError, match=r"policy 'specialist_AAA' observes \d+ values"):
        backtest(tmp_path / "ckpt", bars, wider, seed=0, include_supervised=False)
    # Phase-1 checkpoints (specialists only) run in "specialists" mode.
    (root / "meta").rename(tmp_path / "meta_aside")
    res1 = backtest(tmp_path / "ckpt", bars, cfg, seed=0, include_supervised=False)
    assert res1.runs["policy"].extra["mode"] == "specialists"


def test_sub_periods_trade_every_bar_of_each_block(cfg, bars, tmp_path):
    """A policy's sub-period blocks carry its warm-up in front (the bars before the block):
    it decides from each block's first bar, and the baselines trade the same bars."""
    path, _ = _policy_dir(cfg, bars, tmp_path)
    one = {"AAA": bars["AAA"]}
    walk = walk_forward(path, one, cfg, n_folds=3, seeds=[0], embargo=5, include_supervised=False)
    last, block = walk.last, walk.folds[-1]
    for run in last.runs.values():
        assert str(run.index[0]) == block["test_start"] and str(run.index[-1]) == block["test_end"]
        assert len(run.equity) == block["test_bars"]


def test_supervised_signal_baseline_when_a_model_exists(workspace):
    from rl_trading.supervised.dataset import prepare_timeframes
    from rl_trading.supervised.fitting import fit_and_score
    from rl_trading.supervised.models import default_params
    from rl_trading.supervised.storage import save_model

    cfg = load_config(
        overrides=["data.timeframe=1h", "supervised.models=[analyst]", "supervised.n_estimators=20"]
    )
    bars = synthetic_market(["AAA"], n_bars=1500, seed=9, timeframe="1h", signal_strength=0.5)
    train = {"AAA": bars["AAA"].iloc[:1000]}
    test = {"AAA": bars["AAA"].iloc[1000:]}
    none = run_baselines(test, cfg, seed=0)
    assert "supervised" not in none  # no saved model yet, and the runs say why
    assert "no saved model" in none["flat"].extra["supervised_baseline"]
    frames = prepare_timeframes(train, ["1h"], horizon=1, dead_zone=0.0)["1h"]
    fit = fit_and_score(
        "analyst",
        frames,
        default_params("analyst", cfg),
        test_size=0.2,
        cv_splits=2,
        horizon=1,
        seed=0,
        run_cv=False,
    )
    save_model(fit.model, "analyst", "1h", {**fit.info, "metrics": fit.metrics})
    # date check: the bars the model was fitted on are not a fair test of it
    overlap = run_baselines(train, cfg, seed=0)
    assert "supervised" not in overlap
    assert "overlap" in overlap["flat"].extra["supervised_baseline"]
    runs = run_baselines(test, cfg, seed=0)
    assert runs["flat"].extra["supervised_baseline"].startswith("analyst_1h")
    # a warm-up inside the fitted range is history, not evaluated: the model is still used
    warm = run_baselines(test, cfg, seed=0, warmup={"AAA": train["AAA"].iloc[-60:]})
    assert warm["flat"].extra["supervised_baseline"].startswith("analyst_1h")
    assert len(warm["supervised"].equity) == len(runs["supervised"].equity)
    sup = runs["supervised"]
    # traded as the policy trades a proposal 2 P(up) - 1: around the benchmark, vol-targeted,
    # within the position cap (drifting a little between orders)
    assert np.abs(sup.weights).max() > 0  # it traded on the signal
    assert np.abs(sup.weights).max() <= 1.1 * cfg.env.vol_target_max_leverage
    assert len(sup.equity) == len(runs["flat"].equity)


def test_baselines_wait_for_a_real_bar_like_the_envs(bars):
    """A target decided before a forward-filled bar fills at the next real bar's open."""
    one = {"AAA": bars["AAA"].copy()}
    n = len(one["AAA"])
    targets = np.full((n, 1), np.nan)
    targets[100] = 1.0
    filled = np.zeros(n, dtype=bool)
    filled[101:103] = True  # bars 101 and 102 are gap fills: no fill there
    one["AAA"]["filled"] = filled
    run = simulate_weights("x", one, targets, 1000.0, 0.01)
    assert np.all(run.equity[:103] == 1000.0) and run.costs[:103].sum() == 0.0
    assert run.costs[103] == pytest.approx(1000.0 * 0.01)  # filled at bar 103's open
    assert run.weights[103, 0] > 0.9  # and it is held from there on


def test_vol_targeted_buy_and_hold_is_causal_and_capped(cfg, bars):
    """Each bar's weight uses trailing volatility only: recomputed on the series cut at any
    bar, the weights up to the cut are the same; gross exposure stays within the limit."""
    closes = np.column_stack([bars[s]["close"].to_numpy() for s in SYMS])
    full = trailing_vol_targets(closes, 0.1, 252 * 24, 20, max_gross=0.8, rebalance_every=5)
    for cut in (15, 97, 333):
        part = trailing_vol_targets(closes[:cut], 0.1, 252 * 24, 20, 0.8, rebalance_every=5)
        np.testing.assert_array_equal(part, full[:cut])
    assert np.all(np.isnan(full[:10]))  # no position before 10 trailing returns
    gross = np.nansum(np.abs(full), axis=1)
    assert gross.max() <= 0.8 + 1e-12 and np.nanmax(full) > 0
    # a calm instrument gets more weight than a volatile one (same target volatility)
    calm = np.cumprod(1 + np.random.default_rng(0).normal(0, 0.001, (300, 1)), axis=0)
    wild = np.cumprod(1 + np.random.default_rng(1).normal(0, 0.02, (300, 1)), axis=0)
    w = trailing_vol_targets(np.hstack([calm, wild]), 0.1, 252, 20, max_gross=10.0)
    assert np.nanmean(w[:, 0]) > 5 * np.nanmean(w[:, 1])
    runs = run_baselines(bars, cfg, seed=0, include_supervised=False)
    assert runs[VOL_TARGET].weights.std() > 0


def test_baselines_size_from_the_policys_warm_up_and_trade_only_the_evaluated_bars(cfg, bars):
    """`warmup` (the bars before the evaluated ones) feeds the vol-targeted baseline's trailing
    volatility, as the env's sizes start on its warm-up: its schedule is the one computed on
    warm-up + bars, sliced, so it holds a position from the first evaluated bar (without it:
    cash for 10 bars); the baselines that do not size are unchanged."""
    closes = np.column_stack([bars[s]["close"].to_numpy() for s in SYMS])
    k = 80
    late = trailing_vol_targets(closes, 0.1, 252 * 24, 20, 0.8, rebalance_every=5, start=k)
    cold = trailing_vol_targets(closes[k:], 0.1, 252 * 24, 20, 0.8, rebalance_every=5)
    assert late.shape == cold.shape == (len(closes) - k, len(SYMS))
    assert np.all(np.isfinite(late[0])) and np.all(np.isnan(cold[:10]))
    # the weight at the first evaluated bar: from the 20 returns up to bar k, as by hand
    rets = closes[k - 20 : k + 1][1:] / closes[k - 20 : k + 1][:-1] - 1.0
    w = 0.1 / (rets.std(axis=0, ddof=1) * np.sqrt(252 * 24)) / len(SYMS)
    w = w * min(1.0, 0.8 / np.abs(w).sum())
    np.testing.assert_allclose(late[0], w, rtol=1e-9)
    rebalanced = np.flatnonzero(np.isfinite(late[:, 0]))
    assert rebalanced[:3].tolist() == [0, 5, 10]  # every 5 bars from the first evaluated one
    head = {s: f.iloc[:k] for s, f in bars.items()}
    tail = {s: f.iloc[k:] for s, f in bars.items()}
    warm = run_baselines(tail, cfg, seed=0, include_supervised=False, warmup=head)
    plain = run_baselines(tail, cfg, seed=0, include_supervised=False)
    np.testing.assert_array_equal(warm["buy_and_hold"].equity, plain["buy_and_hold"].equity)
    assert np.abs(warm[VOL_TARGET].weights[1]).sum() > 0  # held from the first bar
    assert np.abs(plain[VOL_TARGET].weights[1]).sum() == 0  # without: cash for 10 bars


def test_vol_matched_baselines_are_capped_at_the_policys_own_limit(cfg, bars):
    """Under vol targeting the policy may reach env.vol_target_max_leverage, not
    env.max_position_size: the matched baselines may too, and say when the limit bound them."""
    vt = cfg.model_copy(deep=True)
    vt.env.vol_target, vt.env.vol_target_max_leverage, vt.env.max_position_size = 0.1, 1.5, 0.1
    assert policy_gross_limit(vt) == 1.5 and policy_gross_limit(cfg) == cfg.env.max_position_size
    one = {"AAA": bars["AAA"]}
    bh = run_baselines(one, cfg, include_supervised=False)["buy_and_hold"]
    big = 2.0 * float(np.std(bh.returns, ddof=1))  # twice buy-and-hold's volatility
    runs = run_baselines(one, vt, include_supervised=False, target_vol=big)
    matched = runs["buy_and_hold_vol_matched"]
    assert matched.extra["limit_bound"] and matched.extra["vol_scale"] == pytest.approx(1.5)
    assert np.abs(matched.weights[1:]).max() > 1.0  # above max_position_size (0.1)
    small = runs["buy_and_hold_vol_matched"].extra
    low = vol_matched("x", one, np.where(np.arange(len(bh.equity))[:, None] == 0, 1.0, np.nan),
                      big / 8, 1.5, 1e5, cost_rate(cfg))  # fmt: skip
    assert not low.extra["limit_bound"] and small["limit_bound"]
    res = backtest(None, one, vt, include_supervised=False)
    assert VOL_TARGET in res.metrics


def test_backtest_data_folder_refuses_two_files_of_one_symbol_and_reads_with_the_config(
    market_dir, tmp_path
):
    """`backtest --data FOLDER` kept one of two files mapping to one symbol (silently) and
    read without data.tz / data.max_price; now both files are named and the config applies."""
    daily = read_bars(market_dir / "googl_1d.csv.gz").iloc[-300:]
    folder = tmp_path / "eval"
    folder.mkdir()
    naive = daily.copy()
    naive.index = (naive.index + pd.Timedelta(hours=16)).strftime("%Y-%m-%d %H:%M:%S")
    naive.index.name = "timestamp"
    naive.to_csv(folder / "googl_close.csv")  # New York wall-clock closes, no zone
    cfg = load_config(None, ["data.timeframe=1d", "data.tz=America/New_York"])
    bars, _, _ = select_bars(cfg, folder)
    local = (daily.index.tz_localize(None) + pd.Timedelta(hours=16)).tz_localize("America/New_York")
    assert bars["GOOGL"].index[0] == local.tz_convert("UTC")[0]
    with pytest.raises(DataError, match="absurd_value"):
        select_bars(load_config(None, ["data.timeframe=1d", "data.tz=America/New_York",
                                       "data.max_price=10"]), folder)  # fmt: skip
    daily.to_csv(folder / "googl_1d.csv")
    with pytest.raises(DataError, match=r"googl_1d\.csv and .*googl_close\.csv are both bars "
                       "of GOOGL") as info:  # fmt: skip
        select_bars(cfg, folder)
    assert "\n" not in str(info.value)
