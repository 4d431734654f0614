"""`rl-trading data ...` end to end in a temporary workspace (in-process)."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from rl_trading.cli.main import app, main
from rl_trading.data import read_bars, synthetic_bars

RUNNER = CliRunner()


def _ok(args: list[str]) -> str:
    result = RUNNER.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_synth_validate_import_info_summary(workspace) -> None:
    out = _ok(["data", "synth", "--out", "syn.csv.gz", "--bars", "400", "--seed", "3",
               "--signal-strength", "0.3"])  # fmt: skip
    assert "wrote syn.csv.gz" in out
    bars = read_bars(workspace / "syn.csv.gz")
    expected = synthetic_bars("SYN", n_bars=400, seed=3, signal_strength=0.3, start="2024-01-01")
    pd.testing.assert_frame_equal(bars, expected, check_freq=False, rtol=1e-9)
    _ok(["data", "synth", "--out", "many", "--bars", "100", "--symbols", "A,B"])
    assert sorted(p.name for p in (workspace / "many").iterdir()) == ["a_1m.csv.gz", "b_1m.csv.gz"]

    out = _ok(["data", "validate", "syn.csv.gz"])
    assert "valid" in out and "400" in out and "1m" in out
    out = _ok(["data", "import", "syn.csv.gz", "--symbol", "SYN", "--timeframe", "1m"])
    assert "400 new of 400" in out
    out = _ok(["data", "import", "syn.csv.gz", "--symbol", "SYN", "--timeframe", "1m"])
    assert "0 new of 400" in out
    out = _ok(["data", "info"])
    assert "SYN" in out and "400" in out and "2024-01-01" in out
    out = _ok(["data", "summary", "--set", "data.source=sql", "--set", "data.symbols=[SYN]"])
    assert "SYN" in out and "fingerprint" in out


def test_validate_repair_writes_fixed_file(workspace) -> None:
    path = workspace / "messy.csv"
    path.write_text(
        "Date,Open,High,Low,Close,Volume\n"
        "2024-01-02T00:01:00Z,10.5,11,10,10.8,120\n"
        "2024-01-02T00:00:00Z,10,10.2,9,10.5,100\n"
        "2024-01-02T00:01:00Z,10.5,11,10,10.8,120\n"
    )
    assert main(["data", "validate", str(path)]) == 3
    out = _ok(["data", "validate", str(path), "--repair", "--out", "fixed.csv"])
    assert "sorted" in out and "duplicate" in out and "widened" in out
    fixed = read_bars(workspace / "fixed.csv")
    assert len(fixed) == 2 and fixed["high"].iloc[0] == 10.5
    assert main(["data", "validate", str(path), "--repair"]) == 3  # --out missing
    assert main(["data", "import", str(path), "--symbol", "X", "--timeframe", "1m"]) == 3
    assert main(["data", "import", "fixed.csv", "--symbol", "X", "--timeframe", "7q"]) == 3


def test_outputs_never_overwritten_silently(workspace, capsys) -> None:
    """synth and validate --repair refused to write over an existing file (they replaced it,
    the input file included); --overwrite replaces, the input never; nothing half-written."""
    _ok(["data", "synth", "--out", "syn.csv", "--bars", "50"])
    before = (workspace / "syn.csv").read_bytes()
    assert main(["data", "synth", "--out", "syn.csv", "--bars", "60", "--seed", "9"]) == 3
    err = capsys.readouterr().err
    assert "syn.csv exists already (--overwrite replaces it)" in err and err.count("\n") == 1
    assert (workspace / "syn.csv").read_bytes() == before
    _ok(["data", "synth", "--out", "many", "--bars", "50", "--symbols", "A,B"])
    assert main(["data", "synth", "--out", "many", "--bars", "50", "--symbols", "C,B"]) == 3
    assert not (workspace / "many" / "c_1m.csv.gz").exists()  # refused before writing any
    _ok(["data", "synth", "--out", "syn.csv", "--bars", "60", "--overwrite"])
    assert len(read_bars(workspace / "syn.csv")) == 60

    messy = workspace / "messy.csv"
    messy.write_text(
        "timestamp,open,high,low,close,volume\n"
        "2024-01-02T00:01:00Z,10.5,11,10,10.8,120\n"
        "2024-01-02T00:00:00Z,10,10.2,9,10.5,100\n"
    )
    text = messy.read_text()
    for extra in ([], ["--overwrite"]):
        args = ["data", "validate", str(messy), "--repair", "--out", "./messy.csv", *extra]
        assert main(args) == 3
        assert "is the input file" in capsys.readouterr().err
        assert messy.read_text() == text
    assert main(["data", "validate", str(messy), "--repair", "--out", "syn.csv"]) == 3
    assert len(read_bars(workspace / "syn.csv")) == 60
    _ok(["data", "validate", str(messy), "--repair", "--out", "syn.csv", "--overwrite"])
    assert len(read_bars(workspace / "syn.csv")) == 2
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".tmp-")) == []
