"""Output a person can read: 80-column tables with nothing cut, no library log lines on the
console (they go to the run's library log), and plots with titles, labelled axes and legends."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from rl_trading.config import load_config
from rl_trading.data import synthetic_market, write_bars

CLI = [sys.executable, "-m", "rl_trading"]
SETS = [
    "--set",
    "data.timeframe=1h",
    "--set",
    "train.window_size=8",
    "--set",
    "evaluation.seeds=[0]",
]
# what Ray, RLlib, Tune and MLflow print when left alone
LIBRARY_MARKERS = (
    "rl_module.py",
    "DeprecationWarning",
    "core_worker",
    "Token authentication",
    "View detailed results",
    "TensorBoard",
    "Creating initial MLflow database tables",
    "INFO ",
    "WARNING ",
    "UserWarning",
)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["COLUMNS"] = "80"  # as in a CI log or `> log`
    env.pop("RL_TRADING_VERBOSE", None)
    env.pop("RL_TRADING_DEBUG", None)
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _assert_readable(text: str) -> None:
    assert "…" not in text, f"a cell was cut:\n{text}"
    assert max((len(line) for line in text.splitlines()), default=0) <= 80, text
    for marker in LIBRARY_MARKERS:
        assert marker not in text, f"library output {marker!r} on the console:\n{text}"


@pytest.fixture()
def policy_dir(workspace):
    from envs.trading_env import TradingEnv
    from policies import module_spec

    cfg = load_config(overrides=[s for s in SETS if s != "--set"])
    bars = synthetic_market(["VERYLONGSYMBOL"], n_bars=400, seed=4, timeframe="1h")
    frame = bars["VERYLONGSYMBOL"]
    write_bars(frame, workspace / "verylongsymbol_1h.csv.gz")
    env = TradingEnv(cfg, bars=frame, eval_mode=True)
    module = module_spec(cfg, "default_policy", env.observation_space, env.action_space).build()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    module.save_to_path(workspace / "pol" / "default_policy")
    return workspace


def test_cli_output_is_readable_at_80_columns_without_library_lines(policy_dir):
    ws = policy_dir
    args = ["backtest", "--checkpoint", str(ws / "pol" / "default_policy")]
    args += ["--data", str(ws / "verylongsymbol_1h.csv.gz"), "--folds", "2", "--out", "rep", *SETS]
    done = _cli(args, ws)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    _assert_readable(out)
    _assert_readable(done.stderr)
    # every strategy and metric is there in full, and the closing lines say where to look
    for name in ("policy", "buy_and_hold", "equal_weight", "flat", "random"):
        assert name in out
    for metric in ("sharpe ratio", "max drawdown", "total return", "win rate", "targets passed"):
        assert metric in out
    assert "report" in out and "next" in out and "rep/report.json" in out
    # the library output went to the report folder's library log instead
    log = ws / "rep" / "logs" / "library.log"
    assert log.is_file()
    logged = log.read_text()

    # --verbose lets the libraries talk: what went to the log reaches the console instead
    done = _cli(["--verbose", *args], ws)
    assert done.returncode == 0
    if any(m in logged for m in LIBRARY_MARKERS):
        assert any(m in done.stderr for m in LIBRARY_MARKERS), done.stderr


def test_json_output_is_the_report_and_nothing_else(policy_dir, capsys):
    from rl_trading.cli.main import main

    ws = policy_dir
    args = ["backtest", "--checkpoint", str(ws / "pol" / "default_policy"), "--json"]
    args += ["--data", str(ws / "verylongsymbol_1h.csv.gz"), "--folds", "2", "--out", "rep", *SETS]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"policy", "buy_and_hold"} <= set(report["strategies"])
    assert report["walk_forward"]["n_runs"] == 2
    assert report["files"]["report"].endswith("report.json")
    assert main(["models", "list", "--json", *SETS]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_tables_split_to_fit_and_never_cut():
    from rich.console import Console

    from rl_trading.evaluation.report import metrics_grid

    long = "a_strategy_with_a_rather_long_name"
    mets = {n: {"sharpe_ratio": 1234.5678, "total_costs": 98765.4321, "extra_metric": 0.5}
            for n in ("policy", "buy_and_hold", long, "equal_weight", "random")}  # fmt: skip
    for width in (60, 80, 200):
        buf = io.StringIO()
        Console(file=buf, width=width).print(metrics_grid(mets, "Backtest"))
        text = buf.getvalue()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
        for name in mets:
            assert name in text
        assert "1234.568" in text and "98,765.43" in text and "extra metric" in text
    narrow = metrics_grid(mets, "Backtest").groups(80)
    assert len(narrow) > 1 and sorted(i for g in narrow for i in g) == list(range(len(mets)))
    assert len(metrics_grid(mets, "Backtest").groups(400)) == 1


def _result():
    """Policy and baseline runs on the same bars (the policy: equal weight at half size)."""
    from rl_trading.evaluation.backtest import backtest, evaluate_runs
    from rl_trading.evaluation.baselines import StrategyRun

    cfg = load_config(overrides=["data.timeframe=1h"])
    bars = synthetic_market(["AAA", "BBB"], n_bars=300, seed=1, timeframe="1h")
    base = backtest(None, bars, cfg, include_supervised=False)
    ew = base.runs["equal_weight"]
    eq = ew.equity[0] + 0.5 * (np.asarray(ew.equity) - ew.equity[0])
    pol = StrategyRun("policy", ew.index, ew.symbols, eq, 0.5 * ew.weights, ew.costs, {})
    return evaluate_runs({"policy": pol, **base.runs}, cfg, start=str(ew.index[0]),
                         end=str(ew.index[-1])), cfg  # fmt: skip


def _check_axes(ax, policy_and_baselines=True):
    assert ax.get_title() or ax.figure._suptitle is not None
    assert ax.get_ylabel(), "y axis without a label"
    legend = ax.get_legend()
    assert legend is not None, "no legend"
    labels = [t.get_text() for t in legend.get_texts()]
    if policy_and_baselines:
        assert "policy" in labels and {"buy_and_hold", "equal_weight", "flat"} <= set(labels)
    return labels


def test_every_plot_has_title_labelled_axes_legend_and_baselines(tmp_path):
    import matplotlib.pyplot as plt

    from rl_trading.evaluation import report
    from rl_trading.evaluation.walk_forward import WalkForwardResult, mean_ci
    from tuning.lineage import lineage_figure

    result, cfg = _result()
    for make, unit in ((report.equity_figure, "(x)"), (report.drawdown_figure, "%")):
        fig = make(result)
        (ax,) = fig.axes
        _check_axes(ax)
        assert unit in ax.get_ylabel() and ax.get_xlabel() == "date (UTC)"
        plt.close(fig)
    fig = report.positions_figure(result)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("policy") for t in titles) and any("buy_and_hold" in t for t in titles)
    for ax in fig.axes:
        assert "% of equity" in ax.get_ylabel() and ax.get_legend() is not None
    assert fig.axes[-1].get_xlabel() == "date (UTC)" and fig._suptitle.get_text()
    plt.close(fig)

    names = ["policy", "buy_and_hold", "equal_weight", "flat"]
    summary = {n: {"sharpe_ratio": mean_ci([0.1 * i, 0.2 * i + 0.1])} for i, n in enumerate(names)}
    walk = WalkForwardResult([], summary, [], [0, 1], meta={"n_folds": 2})
    fig = report.walk_forward_figure(walk)
    (ax,) = fig.axes
    labels = _check_axes(ax, policy_and_baselines=False)
    assert {"policy", "baselines", "95% CI"} <= set(labels)
    assert "Sharpe" in ax.get_ylabel() and ax.get_xlabel() == "strategy"
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    plt.close(fig)

    hist = pd.DataFrame(
        {
            "training_iteration": [1, 2, 3],
            "hp/lr": [1e-3, 1e-3, 5e-4],
            "val_sharpe": [0.1, 0.3, 0.5],
        }
    )
    trials = [
        SimpleNamespace(metrics_dataframe=hist, metrics={"trial_id": f"t_0000{i}"}, path=f"t{i}")
        for i in range(2)
    ]
    fig = lineage_figure(trials, pd.DataFrame(), "val_sharpe")
    assert fig._suptitle.get_text().startswith("PBT lineage")
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "learning rate (log scale)",
        "val_sharpe (objective)",
    ]
    assert fig.axes[-1].get_xlabel() == "training iteration"
    obj = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert "start (population mean)" in obj
    plt.close(fig)

    # the PNGs as written: real images of a readable size
    walk.last = result
    paths = report.write_report(result, tmp_path, cfg, walk=walk)
    from matplotlib.image import imread

    for key in ("equity", "drawdown", "positions", "walk_forward"):
        img = imread(paths[key])
        assert paths[key].stat().st_size > 10_000
        assert img.shape[0] >= 300 and img.shape[1] >= 600, (key, img.shape)


def test_library_log_catches_fd2_and_moves_into_the_run_dir(tmp_path, monkeypatch, capsys):
    """C-level writes to fd 2 and Python stderr land in the log, our own lines do not."""
    from rl_trading.cli import logs
    from rl_trading.cli.common import err_console

    monkeypatch.delenv("RL_TRADING_VERBOSE", raising=False)
    monkeypatch.delenv("RL_TRADING_DEBUG", raising=False)
    logs.start()
    try:
        assert logs.routed()
        os.write(2, b"core_worker.cc:123 constructor arguments in the object store\n")
        print("WARNING rl_module.py -- deprecated", file=sys.stderr)
        err_console.print("error: ours")
        path = logs.attach_run_dir(tmp_path / "run")
        os.write(2, b"after attach\n")
    finally:
        kept = logs.stop()
    assert not logs.routed() and kept == path.resolve()
    text = path.read_text()
    assert "core_worker.cc" in text and "rl_module.py" in text and "after attach" in text
    assert "ours" not in text and "ours" in capsys.readouterr().err
    # with --verbose nothing is routed
    monkeypatch.setenv("RL_TRADING_VERBOSE", "1")
    logs.start()
    assert not logs.routed() and logs.stop() is None


def test_pbt_trials_table_fits_80_columns():
    from rich.console import Console

    from tuning.results import render_table

    table = pd.DataFrame(
        {
            "trial": [1, 0],
            "trial_id": ["a", "b"],
            "val_sharpe": [1.234, 0.5],
            "best_val_sharpe": [1.5, 0.7],
            "iterations": [12, 12],
            "lr": [1e-4, 3e-4],
            "gamma": [0.99, 0.98],
            "clip_param": [0.2, 0.3],
            "lambda": [0.95, 0.9],
            "entropy_coeff": [0.0, 1e-3],
            "exploits": [2, 0],
        }
    )
    buf = io.StringIO()
    Console(file=buf, width=80).print(render_table(table, "val_sharpe"))
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for cell in ("best_val_sharpe", "exploited", "entropy", "1.00e-03", "0.950", "1.234"):
        assert cell in text
