"""One DSR everywhere and the trial ledger behind it: every path that reports a DSR (backtest,
registry, walk-forward, ensembles, `models benchmark`) deflates with one estimator and counts
the trials the ledger holds on the data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rl_trading import ledger, metrics
from rl_trading.cli.main import main
from rl_trading.config import AppConfig
from rl_trading.errors import ConfigError
from rl_trading.evaluation import walk_forward_retrain as wf


def _cfg() -> AppConfig:
    return AppConfig.model_validate(
        {
            "data": {
                "source": "synthetic",
                "symbols": ["AAA", "BBB"],
                "synthetic": {"n_bars": 2000, "seed": 5},
            },
            "env": {"sectors": {}, "max_sector_allocation": None},
        }
    )


def test_ledger_records_once_counts_and_lists(workspace):
    fp = "f" * 64
    assert ledger.count_trials(fp) == 0 and ledger.list_trials() == []  # nothing created
    assert not (workspace / "rl_trading.db").exists()
    assert ledger.record_trials(fp, "pbt", [{"member": m} for m in range(4)], "runs/pbt") == 4
    assert ledger.record_trials(fp, "pbt", [{"member": 0}], "runs/pbt") == 0  # a resume
    assert ledger.record_trials(fp, "ablation", ["cfg_a", "cfg_b"], "bench", [3, 2]) == 2
    assert ledger.record_trials("e" * 64, "benchmark", ["x"]) == 1
    assert ledger.count_trials(fp) == 4 + 5 and ledger.count_trials("e" * 64) == 1
    rows = {(r["kind"], r["trials"]) for r in ledger.summary("fff")}
    assert rows == {("pbt", 4), ("ablation", 5)}
    with pytest.raises(ConfigError, match="unknown kind"):
        ledger.record_trials(fp, "guess", ["x"])


def test_evaluate_trials_lists_the_ledger(workspace, capsys, monkeypatch):
    from rl_trading.cli.common import console

    monkeypatch.setattr(console, "_width", 80)
    fp = "ab" * 32
    ledger.record_trials(fp, "walk_forward", [{"fold": k} for k in range(3)], "wf", 4)
    ledger.record_trials(fp, "test_selection", [{"checkpoint": "x"}], "hierarchical_ppo")
    assert main(["evaluate", "trials", "--data", "abab"]) == 0
    out = capsys.readouterr().out
    assert "walk_forward" in out and f"{fp[:12]}: 13 trials" in out
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert main(["evaluate", "trials", "--data", "cdcd"]) == 0
    assert "no trials recorded" in capsys.readouterr().out


def test_ledger_export_and_import_carry_the_counts_to_another_workspace(
    workspace, tmp_path, capsys
):
    fp, other = "ab" * 32, "cd" * 32
    ledger.record_trials(fp, "walk_forward", [{"fold": k} for k in range(3)], "wf", 4)
    ledger.record_trials(fp, "ablation", ["cand"], "bench", 7)
    ledger.record_trials(other, "pbt", [{"member": 0}], "pbt", 2)
    path = tmp_path / "ledger.json"
    assert main(["evaluate", "trials", "--data", "abab", "--export", str(path)]) == 0
    assert "4 row(s), 19 trial(s) written" in capsys.readouterr().out
    # never overwritten silently
    assert main(["evaluate", "trials", "--export", str(path)]) != 0
    assert "exists" in capsys.readouterr().err
    assert [r.trials for r in ledger.read_export(path)] == [4, 4, 4, 7]
    # a fresh workspace counts the same trials after the import, and once after two imports
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert ledger.import_rows(path, url) == (4, 19)
    assert ledger.import_rows(path, url) == (0, 0)
    assert ledger.count_trials(fp, url) == ledger.count_trials(fp) == 19
    assert ledger.count_trials(other, url) == 0
    # the same rows: a walk-forward recording the same fold again adds nothing
    assert ledger.record_trials(fp, "walk_forward", [{"fold": 0}], "wf", 4, url=url) == 0


@pytest.mark.parametrize(
    "text, why",
    [
        ("{not json", "not JSON"),
        ('{"rows": []}', "not an exported ledger"),
        ('{"format": "rl-trading trial ledger 1", "rows": [{"kind": "pbt"}]}', "row 0"),
        (
            '{"format": "rl-trading trial ledger 1", "rows": [{"fingerprint": "f", "kind": '
            '"guess", "source": "", "config_key": "k", "trials": 1, "config": {}, '
            '"created": ""}]}',
            "bad kind",
        ),
    ],
)
def test_a_malformed_ledger_file_is_one_line_and_writes_nothing(workspace, tmp_path, text, why):
    good = {"fingerprint": "e" * 64, "kind": "pbt", "source": "s", "config_key": "k",
            "trials": 3, "config": {}, "created": ""}  # fmt: skip
    body = json.loads(text) if text.startswith('{"') else None
    if body and body.get("rows"):
        body["rows"].insert(0, good)  # a good row first: nothing of the file is written
        text = json.dumps(body)
        why = why.replace("row 0", "row 1")
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=why):
        ledger.import_rows(path)
    assert ledger.count_trials("e" * 64) == 0


def _run_from(returns: np.ndarray, index: pd.DatetimeIndex, symbols: list[str]):
    from rl_trading.evaluation.baselines import StrategyRun

    equity = 1e5 * np.concatenate([[1.0], np.cumprod(1.0 + returns)])
    n = len(equity)
    return StrategyRun(
        "policy", index[:n], symbols, equity, np.zeros((n, len(symbols))), np.zeros(n)
    )


def test_one_return_series_and_trial_count_give_one_dsr_on_every_path(workspace, monkeypatch):
    """The same returns and trial count through the backtest (registry, `backtest`, `models
    benchmark`: checkpoints' correlated Sharpes included), the walk-forward report and the
    ensemble's estimator: one number."""
    import rl_trading.evaluation.backtest as bt
    from rl_trading.data import load_market

    cfg = _cfg().model_copy(deep=True)
    cfg.data.periods_per_year = 252.0
    bars = load_market(cfg)
    index = next(iter(bars.values())).index
    rng = np.random.default_rng(11)
    r = rng.normal(0.0015, 0.01, len(index) - 1)
    n_trials = 30
    checkpoints = 0.08 + rng.normal(0, 1e-3, 12)  # one run's checkpoints: nearly equal
    want = metrics.deflated_sharpe_ratio(r, n_trials)

    class _Bundle:
        preprocessing = None
        hierarchical = True

    monkeypatch.setattr(bt, "load_policy", lambda source, cfg=None: _Bundle())
    monkeypatch.setattr(
        bt,
        "run_policy",
        lambda *a, **k: (_run_from(r, index, list(bars)), {"env": "hierarchical"}),
    )
    res = bt.backtest(
        "fake", bars, cfg, n_trials=n_trials, trial_sharpes=list(checkpoints),
        include_supervised=False,
    )  # fmt: skip
    assert res.metrics["policy"]["dsr"] == pytest.approx(want, abs=1e-12)

    # the walk-forward: the stitched returns are r, the ledger holds n_trials on the data
    results = []
    for k, part in enumerate(np.array_split(np.arange(len(r)), 3)):
        eq = 100.0 * np.concatenate([[1.0], np.cumprod(1.0 + r[part])])
        mets = dict.fromkeys(wf.METRICS, 0.0)
        results.append(
            {
                "fold": k,
                "seed": 0,
                "periods_per_year": 252.0,
                "index": [str(t) for t in index[part[0] : part[-1] + 2]],
                "phases": [{"phase": 1, "validation_passes": 2}],
                "validation_sharpes": {},
                "strategies": {"policy": {"metrics": mets, "equity": eq.tolist()}},
            }
        )
    report = wf.build_report(results, cfg, [], (1,), 1, ledger_trials=n_trials)
    assert report["n_trials"] == n_trials
    assert report["dsr"] == pytest.approx(want, abs=1e-12)
    # the ensemble's (no trial Sharpes) is the same estimator
    assert metrics.deflated_sharpe_ratio(r, n_trials, None) == want


def test_every_dsr_counts_the_ledger_without_a_flag(workspace, monkeypatch):
    """A PBT run and an ablation recorded on the market are counted by the next backtest's
    trial count, by `models benchmark` and by the walk-forward, with no --extra-trials."""
    from rl_trading.cli import models as models_cli
    from rl_trading.data import load_market
    from rl_trading.evaluation.selection import trial_count

    cfg = _cfg()
    fp = ledger.market_fingerprint(cfg)
    assert fp == ledger.market_fingerprint(cfg, load_market(cfg))
    ledger.record_trials(fp, "pbt", [{"member": m, "round": r} for m in range(4) for r in range(5)])
    ledger.record_trials(fp, "ablation", [f"config{i}" for i in range(8)], "real_bars_ablation")
    assert trial_count(None, cfg) == (28, None)  # an in-memory policy: no record of its own
    assert trial_count(None, cfg, extra_trials=2)[0] == 30
    gone = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": "files"})})
    assert trial_count(None, gone) == (1, None)  # no training market here: own record only

    seen = []

    def fake_backtest(name, bars, cfg, seed=0, scaler_bars=None, n_trials=1):
        seen.append(n_trials)
        raise SystemExit  # the count is all this test needs

    monkeypatch.setattr("rl_trading.evaluation.backtest.backtest", fake_backtest)
    with pytest.raises(SystemExit):
        models_cli.compare_models(["m1", "m2"], cfg, None, "val")
    assert seen == [28 + 2]  # the two compared models are recorded first
    assert ledger.count_trials(fp) == 30


def test_pbt_members_x_rounds_go_into_the_ledger(workspace, tmp_path):
    from tuning.pbt import PBTResult, record_in_ledger

    cfg = _cfg()
    result = PBTResult({}, None, pd.DataFrame(), None, tmp_path, "val_sharpe", 0.0, "t", {}, 12)
    assert record_in_ledger(result, cfg, "9" * 64, population=4) == 12
    assert record_in_ledger(result, cfg, "9" * 64, population=4) == 0  # --resume: same run
    assert ledger.count_trials("9" * 64) == 12


def test_walk_forward_report_records_its_trials_in_the_ledger(workspace, tmp_path):
    """Its own trials are recorded once (a resume adds nothing); other work on the same data
    raises its DSR's trial count."""
    cfg = _cfg()
    from rl_trading.data import load_market

    bars = load_market(cfg)
    plan = wf.WalkForwardPlan(cfg, bars, [], [], [0, 1], (1,), tmp_path)
    results = [
        {"fold": k, "seed": s, "phases": [{"phase": 1, "validation_passes": 3}]}
        for k in range(2)
        for s in (0, 1)
    ]
    assert wf.record_in_ledger(plan, results) == 4 * 3 + 2
    assert wf.record_in_ledger(plan, results) == 14
    fp = ledger.market_fingerprint(cfg, bars)
    ledger.record_trials(fp, "benchmark", ["other"], "elsewhere", 6)
    assert wf.record_in_ledger(plan, results) == 20
    rows = [r.config for r in ledger.list_trials(fp[:8])]
    assert sum(1 for c in rows if c.get("unit") == "seed") == 2 and len(rows) == 4 + 2 + 1
