"""The retraining walk-forward: fold construction, interval arithmetic, input errors, resume,
and the null test (no edge on a driftless market, a significant edge on a planted signal)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from envs.hierarchical_env import HierarchicalTradingEnv
from rl_trading.cli.main import main
from rl_trading.config import AppConfig, load_config
from rl_trading.data.synthetic import synthetic_market
from rl_trading.errors import ConfigError, DataError
from rl_trading.evaluation import walk_forward_retrain as wf
from rl_trading.registry import GRADES

# --------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_bars", "k", "embargo"), [(5000, 4, 10), (1200, 3, 0), (997, 2, 25)])
def test_folds_expand_never_overlap_and_keep_the_embargo(n_bars, k, embargo):
    plans = wf.plan_folds(n_bars, k, embargo, val_share=0.2, min_bars=20)
    assert [p.index for p in plans] == list(range(k))
    for p in plans:
        assert p.fit.start == 0  # expanding window
        assert p.fit.stop + embargo == p.val.start  # embargo between fit and validation
        assert p.val.stop + embargo == p.test.start  # and between training window and test
        assert p.val.stop - p.val.start == int((p.test.start - embargo) * 0.2)
    for a, b in zip(plans, plans[1:], strict=False):
        assert a.test.stop == b.test.start  # test blocks tile the history after the first block
        assert b.fit.stop > a.fit.stop
    assert plans[-1].test.stop == n_bars
    index = pd.date_range("2024-01-01", periods=n_bars, freq="1min", tz="UTC")
    infos = [p.describe(index) for p in plans]
    for a, b in zip(infos, infos[1:], strict=False):
        assert pd.Timestamp(a["test_end"]) < pd.Timestamp(b["test_start"])
    for info in infos:
        assert pd.Timestamp(info["train_end"]) < pd.Timestamp(info["test_start"])
        assert pd.Timestamp(info["fit_end"]) < pd.Timestamp(info["val_start"])


def test_too_little_data_and_bad_counts_are_input_errors():
    with pytest.raises(DataError, match="too little data for 8 walk-forward folds"):
        wf.plan_folds(600, 8, 10, val_share=0.2, min_bars=50)
    with pytest.raises(ConfigError, match="--folds"):
        wf.plan_folds(600, 0, 10, val_share=0.2, min_bars=50)
    # the fit part warms its env up on its own bars: it needs more than the blocks after it
    # (fold 0 of 2 on 600 bars: a 190-bar window, 142 fit bars before a 10-bar embargo)
    assert wf.plan_folds(600, 2, 10, val_share=0.2, min_bars=20, min_fit=142)
    with pytest.raises(DataError, match=r"fold 0 has 142 fit bars \(need >= 143"):
        wf.plan_folds(600, 2, 10, val_share=0.2, min_bars=20, min_fit=143)
    with pytest.raises(ConfigError, match="--seeds"):
        wf.seeds_for(AppConfig(), 0)
    assert wf.seeds_for(AppConfig.model_validate({"seed": 5}), 3) == [5, 6, 7]
    with pytest.raises(ConfigError, match="--phases"):
        wf.parse_phases("2,3")
    assert wf.parse_phases("1,2") == (1, 2)


def test_validation_passes_count_what_the_runner_validates():
    cfg = AppConfig.model_validate(
        {
            "ppo": {"train_batch_size": 1000},
            "phases": {"phase1_timesteps": 7000, "eval_interval": 3},
        }
    )
    # 7 iterations: validated at 3, 6 and the last (7)
    assert wf.validation_passes(cfg, 1) == 3


# --------------------------------------------------------------------------------------------
# Aggregation: intervals over folds, paired differences, stitched curves, trial count
# --------------------------------------------------------------------------------------------


def _fake_result(fold: int, seed: int, sharpe: dict[str, float], rets: dict[str, list[float]]):
    index = pd.date_range("2024-01-01", periods=5, freq="1min", tz="UTC") + pd.Timedelta(
        minutes=10 * fold
    )
    strategies = {}
    for name, s in sharpe.items():
        equity = 100.0 * np.concatenate([[1.0], np.cumprod(1.0 + np.asarray(rets[name]))])
        mets = dict.fromkeys(wf.METRICS, 0.0)
        mets.update(sharpe_ratio=s, total_return=float(equity[-1] / equity[0] - 1))
        strategies[name] = {"metrics": mets, "equity": equity.tolist()}
    return {
        "fold": fold,
        "seed": seed,
        "periods_per_year": 252.0,
        "index": [str(t) for t in index],
        "phases": [{"phase": 1, "validation_passes": 4}],
        "validation_sharpes": {"phase1": [0.0] * 4},
        "strategies": strategies,
    }


def test_interval_is_over_folds_with_seeds_averaged_and_differences_paired():
    policy = {(0, 0): 1.0, (0, 1): 3.0, (1, 0): 0.5, (1, 1): 0.5, (2, 0): -1.0, (2, 1): 2.0}
    bh = {0: 1.0, 1: 1.5, 2: 0.0}
    results = [
        _fake_result(
            k,
            s,
            {"policy": policy[(k, s)], "buy_and_hold": bh[k]},
            {"policy": [0.01 * (s + 1)] * 4, "buy_and_hold": [0.001] * 4},
        )
        for k in range(3)
        for s in range(2)
    ]
    agg = wf.aggregate(results, capital=100.0)
    fold_means = [2.0, 0.5, 0.5]
    assert agg["fold_values"]["policy"]["sharpe_ratio"] == pytest.approx(fold_means)
    summ = agg["summary"]["policy"]["sharpe_ratio"]
    assert summ["n"] == 3  # folds, not folds x seeds (6)
    half = stats.t.ppf(0.975, 2) * np.std(fold_means, ddof=1) / math.sqrt(3)
    assert summ["mean"] == pytest.approx(1.0)
    assert summ["ci95"] == pytest.approx([1.0 - half, 1.0 + half])
    diff = agg["paired"]["buy_and_hold"]["sharpe_ratio"]
    assert diff["per_fold"] == pytest.approx([1.0, -1.0, 0.5])
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(0.5 / 3)
    # stitched: the seeds as one book (mean per-bar return 0.015), 3 folds x 4 bars
    st = agg["stitched"]["policy"]
    assert st["n_periods"] == 12
    assert st["returns"] == pytest.approx([0.015] * 12)
    assert st["total_return"] == pytest.approx(1.015**12 - 1)
    assert wf.count_trials(results, 2) == {"validation_passes": 24, "seeds": 2, "n_trials": 26}


def test_report_counts_trials_and_deflates_the_stitched_sharpe(tmp_path):
    from rl_trading import metrics

    rng = np.random.default_rng(0)
    results = [
        _fake_result(
            k,
            s,
            {"policy": 1.0, "flat": 0.0},
            {"policy": rng.normal(0.001, 0.01, 4).tolist(), "flat": [0.0] * 4},
        )
        for k in range(3)
        for s in range(2)
    ]
    cfg = AppConfig.model_validate({"phases": {"phase1_timesteps": 4000}})
    plans = [{"fold": k} for k in range(3)]
    report = wf.build_report(results, cfg, plans, (1,), n_seeds=2)
    assert report["retrained"] is True and report["risk_free_rate"] == 0.0
    assert report["n_trials"] == 3 * 2 * 4 + 2
    stitched = wf.aggregate(results)["stitched"]["policy"]["returns"]
    assert report["dsr"] == pytest.approx(metrics.deflated_sharpe_ratio(stitched, 26))
    assert report["psr"] == pytest.approx(metrics.probabilistic_sharpe_ratio(stitched))
    assert report["dsr"] < report["psr"]  # 26 trials raise the bar
    png = wf.write_equity_plot(report, tmp_path / "eq.png")
    assert png.stat().st_size > 10_000


# --------------------------------------------------------------------------------------------
# CLI: input errors before Ray, no overwriting
# --------------------------------------------------------------------------------------------


def _no_ray(monkeypatch):
    import rl_trading.ray_utils as ru

    def boom(*_a, **_k):
        raise AssertionError("Ray must not start on bad input")

    monkeypatch.setattr(ru, "init_ray", boom)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folds", "0"], "--folds must be >= 1"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--folds", "40"], "for 40 walk-forward folds"),
        (["--folds", "12"], "too little data for 12 walk-forward folds"),
        (["--phases", "3"], "--phases must be"),
    ],
)
def test_cli_input_errors_are_one_line_before_ray(workspace, monkeypatch, capsys, args, message):
    _no_ray(monkeypatch)
    sets = ["--set", "data.source=synthetic", "--set", "data.synthetic.n_bars=2000"]
    rc = main(["evaluate", "walk-forward", *sets, "--out", str(workspace / "wf"), *args])
    err = capsys.readouterr().err
    assert rc != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err


def test_cli_refuses_to_overwrite_a_started_walk_forward(workspace, monkeypatch, capsys):
    _no_ray(monkeypatch)
    out = workspace / "wf"
    out.mkdir()
    (out / wf.PLAN_FILE).write_text("{}")
    sets = ["--set", "data.source=synthetic", "--set", "data.synthetic.n_bars=2000"]
    rc = main(["evaluate", "walk-forward", *sets, "--folds", "2", "--out", str(out)])
    assert rc != 0 and "use --resume" in capsys.readouterr().err
    assert (out / wf.PLAN_FILE).read_text() == "{}"  # nothing already saved is lost
    rc = main(["evaluate", "walk-forward", *sets, "--folds", "2", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert rc != 0 and "started with other protocol (version 1; " in err
    assert "), folds, seeds, phases, config" in err
    # the message names what differs: here only the seeds
    base = ["data.source=synthetic", "data.synthetic.n_bars=2000"]
    cfg = load_config(overrides=base)
    plan = wf.prepare(cfg, n_folds=2, n_seeds=1, out_dir=workspace / "wf2")
    with pytest.raises(ConfigError, match=r"started with other seeds; use another --out"):
        wf.prepare(cfg, n_folds=2, n_seeds=2, out_dir=plan.out_dir, resume=True)
    costly = load_config(overrides=[*base, "env.transaction_cost=0.002"])
    with pytest.raises(ConfigError, match=r"started with other config \(a setting"):
        wf.prepare(costly, n_folds=2, n_seeds=1, out_dir=plan.out_dir, resume=True)
    assert wf.prepare(cfg, n_folds=2, n_seeds=1, out_dir=plan.out_dir, resume=True).plans
    # a run started by a version that measured folds otherwise (no protocol recorded: 1)
    started = json.loads((plan.out_dir / wf.PLAN_FILE).read_text())
    del started["protocol"]
    (plan.out_dir / wf.PLAN_FILE).write_text(json.dumps(started))
    with pytest.raises(ConfigError, match=r"started with other protocol \(version 1; this"):
        wf.prepare(cfg, n_folds=2, n_seeds=1, out_dir=plan.out_dir, resume=True)


# --------------------------------------------------------------------------------------------
# The null test (RLlib, CI-sized)
# --------------------------------------------------------------------------------------------


def null_test_cfg(signal_strength: float) -> AppConfig:
    """Two synthetic 1m instruments, phase 1 only, 4k env steps per fold: deterministic.
    Zero costs (fee, slippage, spread): the null can only fail by luck, never by costs."""
    return AppConfig.model_validate(
        {
            "seed": 1,
            "data": {
                "source": "synthetic",
                "symbols": ["AAA", "BBB"],
                "embargo_bars": 10,
                "synthetic": {"n_bars": 5000, "seed": 3, "signal_strength": signal_strength},
            },
            "env": {
                "episode_length": 256,
                "transaction_cost": 0.0,
                "slippage_bps": 0.0,
                "spread_bps": 0.0,
                "max_position_size": 1.0,
                "sectors": {},
                "max_sector_allocation": None,
            },
            "ppo": {"train_batch_size": 1000, "minibatch_size": 250, "num_epochs": 6, "lr": 1e-3},
            "resources": {"num_env_runners": 0},
            "phases": {"phase1_timesteps": 4000, "eval_interval": 2, "checkpoint_interval": 100},
        }
    )


def _run(cfg: AppConfig, out, resume: bool = False) -> dict:
    plan = wf.prepare(cfg, n_folds=4, n_seeds=1, out_dir=out, phases="1", resume=resume)
    return wf.walk_forward_retrain(plan, verbose=0)


def _check_report(out, report: dict) -> None:
    saved = json.loads((out / wf.REPORT_FILE).read_text())
    assert saved["retrained"] is True
    assert saved["risk_free_rate"] == 0.0 and saved["periods_per_year"] > 0
    assert saved["n_folds"] == 4 and len(saved["folds"]) == 4
    for a, b in zip(saved["folds"], saved["folds"][1:], strict=False):
        assert pd.Timestamp(a["test_end"]) < pd.Timestamp(b["test_start"])
    for fold in saved["folds"]:
        assert pd.Timestamp(fold["train_end"]) < pd.Timestamp(fold["test_start"])
    # policy + every baseline, each with mean and interval over the 4 folds
    strategies = {"policy", "buy_and_hold", "equal_weight", "flat", "random", "supervised"}
    assert strategies <= set(saved["summary"])
    for mets in saved["summary"].values():
        assert mets["sharpe_ratio"]["n"] == 4 and len(mets["sharpe_ratio"]["ci95"]) == 2
    # 4 folds x 1 seed x 2 validation passes (iterations 2 and 4) + 1 seed
    assert saved["n_trials"] == saved["policy"]["n_trials"] == 9
    assert saved["dsr"] == pytest.approx(report["dsr"])
    assert (out / wf.PLOT_FILE).stat().st_size > 10_000


@pytest.mark.rllib
def test_null_market_is_not_significant_and_planted_signal_is(ray_session, workspace):
    """~2 min on an idle 2-core machine (8 phase-1 trainings of 4k steps, 2 trials at a time).

    Zero costs, so the null tests false discovery, not costs. Measured (2026-12-07): driftless
    market: fold Sharpes -54..72, PSR 0.80, DSR 0.25 (9 trials); planted signal (strength
    1.0): fold-level Sharpe 916, CI [563, 1269], DSR 1.0. The false-positive rate over many
    null markets: benchmarks/null_markets.py.
    """
    null_out = workspace / "null"
    null = _run(null_test_cfg(0.0), null_out)
    _check_report(null_out, null)
    assert null["dsr"] < 0.95
    assert GRADES.index(null["policy"]["grade"]) >= GRADES.index("C")

    out = workspace / "planted"
    planted = _run(null_test_cfg(1.0), out)
    _check_report(out, planted)
    assert planted["summary"]["policy"]["sharpe_ratio"]["ci95"][0] > 0
    assert planted["dsr"] >= 0.95
    diff = planted["paired_vs_policy"]["buy_and_hold"]["sharpe_ratio"]
    assert diff["n"] == 4 and len(diff["per_fold"]) == 4

    # resume: every fold x seed is on disk, so nothing is retrained and the report is the same
    stamps = {p: p.stat().st_mtime_ns for p in out.glob(f"trials/*/{wf.RESULT_FILE}")}
    assert len(stamps) == 4
    again = _run(null_test_cfg(1.0), out, resume=True)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["dsr"] == planted["dsr"]
    assert again["summary"]["policy"] == planted["summary"]["policy"]


def test_a_test_block_gets_its_warm_up_history_and_nothing_after_it():
    index = pd.date_range("2024-01-01", periods=300, freq="1D", tz="UTC")
    bars = {"AAA": pd.DataFrame({"close": np.arange(300.0)}, index=index)}
    plan = wf.plan_folds(300, 2, embargo=5, val_share=0.3, min_bars=20)[1]
    block = plan.take(bars, "test")["AAA"]
    warm = plan.take(bars, "test", history=40)["AAA"]
    assert len(warm) == len(block) + 40 and warm.index[-1] == block.index[-1]
    assert warm.index[40] == block.index[0]
    assert len(plan.take(bars, "test", history=10_000)["AAA"]) == plan.test.stop  # from bar 0


def test_a_fold_decides_from_the_first_bar_of_its_validation_and_test_blocks():
    """Checkpoints are selected on the whole validation block: its env's first decision is
    the block's first bar (the warm-up comes from the bars before it), as the test's is."""
    bars = synthetic_market(["AAA", "BBB"], n_bars=900, seed=3, start="2024-01-01")
    cfg = load_config(None)
    plan = wf.plan_folds(900, 2, embargo=5, val_share=0.3, min_bars=80)[0]
    fit, val, test = wf.fold_blocks(cfg, bars, plan)
    index = bars["AAA"].index
    assert fit["AAA"].index.equals(index[plan.fit])
    for block, part in ((val, plan.val), (test, plan.test)):
        env = HierarchicalTradingEnv(cfg, bars=block, mode="joint", eval_mode=True)
        assert env.index[env.first_bar] == index[part.start]
        assert block["AAA"].index[-1] == index[part.stop - 1]  # nothing after the block


def test_stitched_sharpe_uses_each_folds_own_calendar():
    """Fold 0 on a 252-bar year, fold 1 on a 365-bar year: the stitched series spans
    n0/252 + n1/365 years, so its bars per year are n / that, not fold 0's 252."""
    rng = np.random.default_rng(4)
    r0, r1 = rng.normal(0.001, 0.01, 4), rng.normal(0.002, 0.01, 4)
    a = _fake_result(0, 0, {"policy": 1.0}, {"policy": r0.tolist()})
    b = _fake_result(1, 0, {"policy": 1.0}, {"policy": r1.tolist()})
    b["periods_per_year"] = 365.0
    agg = wf.aggregate([a, b])
    ppy = 8 / (4 / 252 + 4 / 365)
    assert agg["periods_per_year"] == pytest.approx(ppy)
    assert agg["fold_periods_per_year"] == [252.0, 365.0]
    r = np.concatenate([r0, r1])
    want = r.mean() / r.std(ddof=1) * math.sqrt(ppy)
    assert agg["stitched"]["policy"]["sharpe_ratio"] == pytest.approx(want, rel=1e-9)


def test_trials_are_sized_from_the_cpus_ray_has():
    """A trial keeps its env runners when they fit, samples in its own process when they do
    not, and a trial that could never be placed is a one-line error (never a PENDING wait)."""
    from rl_trading.ray_utils import fit_trial_runners

    runners, line = fit_trial_runners({"CPU": 8.0}, 2, 1.0, n_trials=9, what="wf")
    assert runners == 2 and "2 of 9 at a time" in line
    runners, line = fit_trial_runners({"CPU": 2.0}, 2, 1.0, n_trials=9, what="wf")
    assert runners == 0 and "needs 3 CPUs, Ray has 2" in line and "2 of 9 at a time" in line
    runners, _ = fit_trial_runners({"CPU": 8.0}, 2, 1.0, custom={"worker_node": 1.0})
    assert runners == 0  # the runners' custom resource exists nowhere
    with pytest.raises(ConfigError, match="could never start"):
        fit_trial_runners({"CPU": 2.0}, 0, 1.0, trial_cpus=4.0, what="PBT members")
    cfg = AppConfig.model_validate({"resources": {"num_env_runners": 2}})
    fitted, _ = wf.fit_resources(cfg, {"CPU": 2.0}, 3)
    assert fitted.resources.num_env_runners == 0 and cfg.resources.num_env_runners == 2
    bundles = wf.trial_resources(fitted).bundles
    assert bundles == [{"CPU": 1.0}]


@pytest.mark.rllib
@pytest.mark.slow
def test_readme_walk_forward_runs_on_a_two_cpu_ray_with_the_shipped_resources(
    ray_session, workspace, monkeypatch, capsys
):
    """The README's command on configs/quickstart.yaml (resources.* as shipped: 2 env runners
    per trial) on the suite's 2-CPU Ray: each trial samples in its own process, the console
    shows our progress lines and an 80-column table, never Tune's status tables. Only the
    budget is shrunk (folds / seeds / phases options, one phase-1 iteration)."""
    from rl_trading.cli.common import console
    from rl_trading.config import CONFIG_DIR

    assert ray_session.cluster_resources().get("CPU") == 2
    monkeypatch.setattr(console, "_width", 80)
    out = workspace / "wf"
    args = ["evaluate", "walk-forward", "-c", str(CONFIG_DIR / "quickstart.yaml")]
    args += ["--folds", "2", "--seeds", "1", "--phases", "1", "--out", str(out)]
    rc = main([*args, "--set", "phases.phase1_timesteps=2000"])
    text = capsys.readouterr().out
    assert rc == 0, text[-3000:]
    assert "== Status ==" not in text and "Trial name" not in text
    assert "sampling in each trial's process" in text  # the chosen sizing, said once
    assert text.count("test Sharpe") == 2  # one progress line per fold x seed
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    saved = json.loads((out / wf.REPORT_FILE).read_text())
    assert saved["n_folds"] == 2 and math.isfinite(saved["dsr"])
    assert len(saved["fold_values"]["policy"]["sharpe_ratio"]) == 2  # per-fold values kept
    for fold in saved["folds"]:  # warm-up before each test block: traded from its first bar
        res = json.loads(
            (out / "trials" / wf.trial_name(fold["fold"], 42) / wf.RESULT_FILE).read_text()
        )
        assert pd.Timestamp(res["index"][0]) == pd.Timestamp(fold["test_start"])
        assert pd.Timestamp(res["index"][-1]) == pd.Timestamp(fold["test_end"])


def test_supervised_signals_are_out_of_sample_and_traded_as_a_proposal():
    """The walk-forward's supervised baseline: P(up) at bar t from models fitted on earlier
    bars only (recomputing on bars cut after t gives the same value), traded as a proposal."""
    from rl_trading.evaluation.baselines import signal_targets, simulate_weights

    cfg = AppConfig.model_validate({"data": {"timeframe": "1d", "embargo_bars": 2}})
    idx = pd.date_range("2015-01-01", periods=900, freq="B", tz="UTC")
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(idx))))
    frame = pd.DataFrame(
        {"open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
         "volume": 1e6}, index=idx,
    )  # fmt: skip
    full = wf.supervised_signals(cfg, {"AAA": frame})["AAA"]
    cut = wf.supervised_signals(cfg, {"AAA": frame.iloc[:700]})["AAA"]
    assert (full.iloc[600:700] != 0.5).any()  # models exist by then
    np.testing.assert_array_equal(full.iloc[:700].to_numpy(), cut.to_numpy())
    test = {"AAA": frame.iloc[600:700]}
    w, status = signal_targets(test, {"AAA": full}, cfg)
    p = full.iloc[600:700].to_numpy()
    size = cfg.env.max_position_size
    np.testing.assert_allclose(w.targets[:, 0], (2.0 * p - 1.0) * size)  # 2 P(up) - 1
    assert "out of sample" in status
    assert signal_targets(test, {}, cfg)[0] is None
    # traded as the policy trades: vol-targeted size and the no-trade band cut its orders
    sized = cfg.model_copy(deep=True)
    sized.env.vol_target, sized.env.risk_window = 0.1, 20
    banded = sized.model_copy(deep=True)
    banded.env.rebalance_band = 0.05
    ws, _ = signal_targets(test, {"AAA": full}, sized)  # re-sized every bar as its vol moves
    wb, _ = signal_targets(test, {"AAA": full}, banded)
    assert (ws.bands == 0).all() and (wb.bands > 0).all()  # 0.05 x the vol-targeted size
    fills = [int((simulate_weights("s", test, x, 1e5, 0.001).traded > 0).sum()) for x in (ws, wb)]
    assert 0 < fills[1] < fills[0]
    assert np.abs(wb.targets).max() <= banded.env.vol_target_max_leverage + 1e-12
