"""rl_trading.analysis on hand-made Tune output: PBT results per trial, exploits in the lineage
figure, drawdowns; `make_pbt_dir` is also used by the notebook test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rl_trading import analysis


def make_pbt_dir(root: Path, trials: int = 2, iters: int = 4) -> Path:
    """A PBT run folder as `rl-trading tune pbt` leaves it: best.json, trial progress.csv files
    and PBT's `pbt_global.txt` with one exploit (trial 1 takes trial 0's weights at iter 2)."""
    pbt = root / "pbt_phase1"
    exp = pbt / "tune"
    for t in range(trials):
        trial_id = f"a1b2c_{t:05d}"
        folder = exp / f"PhaseTrainable_{trial_id}_{t}_lr=0.001"
        folder.mkdir(parents=True)
        lr = [1e-3 * (t + 1)] * iters
        if t == 1:
            lr[2:] = [1.2e-3] * (iters - 2)  # perturbed after the exploit
        pd.DataFrame(
            {
                "training_iteration": range(1, iters + 1),
                "trial_id": trial_id,
                "val_sharpe": np.linspace(0.1, 0.5, iters) * (1 + t),
                "hp/lr": lr,
                "hp/gamma": [0.99] * iters,
            }
        ).to_csv(folder / "progress.csv", index=False)
    exploit = ["1_lr=0.002", "0_lr=0.001", 2, 2, {"lr": 1e-3}, {"lr": 1.2e-3}]
    (exp / "pbt_global.txt").write_text(json.dumps(exploit) + "\n")
    (pbt / "best.json").write_text(json.dumps({"metric": "val_sharpe", "best_trial": "x"}))
    return pbt


def test_tune_results_and_lineage_figure(tmp_path):
    pbt = make_pbt_dir(tmp_path / "run")
    assert analysis.find_pbt_runs(tmp_path / "run") == [pbt]
    rows = analysis.tune_results(pbt)
    assert sorted(rows["trial"].unique()) == [0, 1] and len(rows) == 8
    fig = analysis.plot_pbt_lineage(pbt)
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["val_sharpe", "lr", "gamma"]
    assert "1 exploits" in fig._suptitle.get_text()
    # trial lines on every panel plus one exploit marker per panel (trial 1, iteration 3)
    markers = [ln for ln in axes[1].lines if ln.get_marker() == "o"]
    assert len(markers) == 1 and markers[0].get_xdata()[0] == 3
    assert markers[0].get_ydata()[0] == 1.2e-3
    assert axes[1].get_yscale() == "log"


def test_drawdown_frame_is_fraction_below_running_peak():
    eq = pd.DataFrame({"policy": [1.0, 1.2, 0.9, 1.3], "flat": [1.0, 1.0, 1.0, 1.0]})
    dd = analysis.drawdown_frame(eq)
    np.testing.assert_allclose(dd["policy"], [0.0, 0.0, 0.9 / 1.2 - 1.0, 0.0])
    assert (dd["flat"] == 0).all()


def test_run_config_with_a_masked_password_reloads(tmp_path, monkeypatch):
    """config.yaml masks a literal DB password; reloading it must not use `***` as one."""
    from rl_trading.config import AppConfig, save_config

    cfg = AppConfig()
    cfg.data.db_url = "postgresql://bob:pa/ss#word@db.example/bars"
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "pa/ss" not in text and "***" in text
    loaded = analysis.load_run_config(tmp_path)
    assert loaded.data.db_url is None  # the data layer then takes RL_TRADING_DB_URL
    assert loaded.seed == cfg.seed


def test_dashboard_screenshot_script_without_a_browser_says_so(capsys):
    """scripts/dashboard_screenshot.py: no browser is one line and exit status 3 (CI skips)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from dashboard_screenshot import main

    assert main(["http://127.0.0.1:9", "--browser", "/no/such/browser"]) == 3
    assert "no headless browser found" in capsys.readouterr().out
