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
