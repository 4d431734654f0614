"""`rl-trading tune pbt`: argument errors are one-line messages, before any Ray work starts."""

from __future__ import annotations

from rl_trading.cli.main import main
from rl_trading.config import CONFIG_DIR

QUICK = str(CONFIG_DIR / "quickstart.yaml")


def test_tune_pbt_help_lists_options(capsys):
    assert main(["tune", "pbt", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--phase", "--population", "--iterations", "--resume", "--run-dir", "--set"):
        assert option in out


def test_resume_needs_run_dir(workspace, capsys):
    assert main(["tune", "pbt", "-c", QUICK, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume needs --run-dir" in err and "Traceback" not in err


def test_bad_phase_and_missing_start_checkpoint(workspace, capsys):
    assert main(["tune", "pbt", "-c", QUICK, "--phase", "4"]) == 2
    assert "--phase must be 1, 2 or 3" in capsys.readouterr().err
    assert main(["tune", "pbt", "-c", QUICK, "--phase", "2", "--run-dir", "r"]) == 2
    assert "needs the phase-1 checkpoint" in capsys.readouterr().err


def test_resume_of_missing_run_is_a_checkpoint_error(workspace, capsys):
    code = main(["tune", "pbt", "-c", QUICK, "--resume", "--run-dir", str(workspace / "nope")])
    assert code == 4
    assert "no resumable PBT run" in capsys.readouterr().err


def test_bad_override_is_a_config_error(workspace, capsys):
    assert main(["tune", "pbt", "-c", QUICK, "--set", "tuning.gamma=[0.9,1.5]"]) == 2
    assert "tuning range for 'gamma'" in capsys.readouterr().err


def test_pbt_trains_on_the_observed_market_with_val_history(workspace, capsys, monkeypatch):
    """`tune pbt` sees what training sees: `observed_market` (sig_* columns included), split
    like training (validation keeps its first bars)."""
    import tuning.pbt as pbt
    from rl_trading.data import synthetic_market
    from rl_trading.errors import RLTradingError

    bars = synthetic_market(["AAA"], n_bars=1500, seed=1, timeframe="1h")
    bars["AAA"]["sig_analyst_1h"] = 0.5
    seen = {}
    monkeypatch.setattr("rl_trading.cli.tune.observed_market", lambda cfg, raw=None: bars)

    def fake_run_pbt(cfg, phase, train, val, **kwargs):
        seen["train"], seen["val"] = train, val
        raise RLTradingError("stop here")

    monkeypatch.setattr(pbt, "run_pbt", fake_run_pbt)
    assert main(["tune", "pbt", "-c", QUICK, "--set", "data.symbols=[AAA]"]) != 0
    assert "stop here" in capsys.readouterr().err
    assert "sig_analyst_1h" in seen["train"]["AAA"] and "sig_analyst_1h" in seen["val"]["AAA"]
    from rl_trading.config import load_config
    from rl_trading.data import split_for_env

    want = split_for_env(bars, load_config(QUICK, ["data.symbols=[AAA]"]))
    assert seen["val"]["AAA"].index.equals(want.val["AAA"].index)
    assert seen["train"]["AAA"].index.equals(want.train["AAA"].index)
