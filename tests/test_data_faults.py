"""Issue 17, data and CLI input: nothing silently wrong, nothing lost, no secret shown.

Each test reproduces one case of the hostile-user probe (items 3-7, 10, 11, 13, 14) and fails
on the code before the fix.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from rl_trading.cli.main import main
from rl_trading.config import AppConfig, load_config, save_config
from rl_trading.data import (
    load_market,
    read_bars,
    repair_bars,
    synthetic_bars,
    write_bars,
)
from rl_trading.data.schema import read_raw
from rl_trading.data.store import BarStore
from rl_trading.errors import ConfigError, ConnectionFailure, DataError, RLTradingError

RUNNER = CliRunner()
HEADER = "timestamp,open,high,low,close,volume"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001
    """Exit code and stdout+stderr of the real entry point (one-line error handling)."""
    code = main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def _assert_one_line_error(code: int, text: str, want_code: int, needle: str) -> None:
    assert code == want_code, text
    assert "internal error" not in text and "Traceback" not in text, text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    assert needle in lines[0], text


def _bars_file(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def _good_rows(n: int = 5, freq: str = "1min") -> list[str]:
    idx = pd.date_range("2024-01-02", periods=n, freq=freq, tz="UTC")
    return [f"{t.strftime('%Y-%m-%dT%H:%M:%SZ')},10,11,9,10.5,100" for t in idx]


# -- 3: credentials in URLs --------------------------------------------------------------------

PASSWORDS = ["Sx9q/Kp#Wm", "Sx9q?Kp@Wm", "Sx9q@Kp/Wm#Zr?Tt", "Sx9q#Kp?Wm/Zr", "Sx9q/Kp#W m@Zr:Tt"]


def _fragments(password: str) -> list[str]:
    import re

    return [p for p in re.split(r"[/#?@]", password) if p]


def _assert_hidden(password: str, text: str) -> None:
    for frag in _fragments(password):
        assert frag not in text, (frag, text)


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_with_url_delimiters_never_shown(password, workspace, capsys, caplog) -> None:
    from rl_trading.tracking import check_tracking, redact

    port = _closed_port()
    db_url = f"postgresql+psycopg2://trader:{password}@127.0.0.1:{port}/bars"
    tracking = f"http://trader:{password}@127.0.0.1:{port}/mlflow"
    for url in (db_url, tracking):
        shown = redact(url)
        _assert_hidden(password, shown)
        assert shown.startswith(url.split(":", 1)[0]) and "trader:***@127.0.0.1" in shown
    if "@" in password:  # SQLAlchemy would take what follows the '@' as the host: refused
        with pytest.raises(ConfigError, match="percent-encode it as %40"):
            BarStore(db_url)
    else:
        _assert_hidden(password, BarStore(db_url).safe_url)
    with caplog.at_level(logging.DEBUG):
        code, text = _run(["data", "info", "--db", db_url], capsys)
        assert code == (2 if "@" in password else 5), text
        _assert_hidden(password, text)
        code, text = _run(["models", "list", "--tracking-uri", tracking], capsys)
        assert code == 5 and "unreachable" in text
        _assert_hidden(password, text)
        with pytest.raises(ConnectionFailure) as err:
            check_tracking(tracking)
        _assert_hidden(password, str(err.value))
        cfg = AppConfig.model_validate(
            {"data": {"db_url": db_url, "source": "sql"}, "tracking": {"tracking_uri": tracking}}
        )
        with pytest.raises(RLTradingError) as err:
            load_market(cfg)
        _assert_hidden(password, str(err.value))
    _assert_hidden(password, caplog.text)
    # the run dir's config.yaml
    saved = save_config(cfg, workspace / "run" / "config.yaml").read_text()
    _assert_hidden(password, saved)
    assert "trader:***@127.0.0.1" in saved


def test_ray_address_and_verify_rows_hide_passwords() -> None:
    from rl_trading.ray_utils import check_address
    from rl_trading.verify import _guard

    password = PASSWORDS[3]
    address = f"ray://u:{password}@127.0.0.1:{_closed_port()}"
    with pytest.raises(ConnectionFailure, match="Ray cluster unreachable") as err:
        check_address(address)
    _assert_hidden(password, str(err.value))

    def boom() -> str:
        url = f"postgresql://u:{password}@h/db"
        raise RuntimeError(f"driver said: cannot reach {url} " + "x" * 5000)

    row = _guard("data", boom)
    assert not row.ok and len(row.detail) <= 600
    _assert_hidden(password, row.detail)


def test_mlflow_params_and_tags_hide_passwords(workspace) -> None:
    import mlflow

    from rl_trading.tracking import mlflow_run

    password = PASSWORDS[2]
    db_url = f"postgresql+psycopg2://trader:{password}@db.internal/bars"
    cfg = AppConfig.model_validate({"data": {"db_url": db_url}})
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    with mlflow_run("leak", "r", params=cfg.flat(), tags={"db": db_url}, tracking_uri=uri) as run:
        run_id = run.info.run_id
    data = mlflow.MlflowClient(uri).get_run(run_id).data
    _assert_hidden(password, repr(data.params) + repr(data.tags))
    assert data.params["data.db_url"] == "postgresql+psycopg2://trader:***@db.internal/bars"


def test_env_reference_kept_when_saving_config(workspace) -> None:
    cfg = AppConfig.model_validate({"data": {"db_url": "postgresql://u:${PGPW}@h/db"}})
    saved = save_config(cfg, workspace / "c.yaml")
    assert load_config(saved).data.db_url == "postgresql://u:${PGPW}@h/db"


# -- 4: non-finite / absurd prices, --replace, delete -----------------------------------------


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("2024-01-02T00:02:00Z,10,inf,9,10.5,100", "non_finite"),
        ("2024-01-02T00:02:00Z,10,1e308,9,10.5,100", "absurd_value"),
        ("2024-01-02T00:02:00Z,10,11,9,10.5,inf", "non_finite"),
    ],
)
def test_non_finite_and_absurd_values_refused(workspace, capsys, line, rule) -> None:
    rows = _good_rows()
    rows[2] = line
    path = _bars_file(workspace / "bad.csv", rows)
    with pytest.raises(DataError, match=f"row 3.*{rule}"):
        read_bars(path)
    code, text = _run(["data", "import", str(path), "--symbol", "X", "--timeframe", "1m"], capsys)
    _assert_one_line_error(code, text, 3, rule)
    assert not (workspace / "rl_trading.db").exists()


def test_price_ceiling_is_configurable(workspace, capsys) -> None:
    rows = [r.replace(",10,11,9,10.5,", ",2e9,2.1e9,1.9e9,2e9,") for r in _good_rows()]
    path = _bars_file(workspace / "big.csv", rows)
    code, text = _run(["data", "validate", str(path)], capsys)
    _assert_one_line_error(code, text, 3, "absurd_value")
    code, text = _run(["data", "validate", str(path), "--max-price", "1e10"], capsys)
    assert code == 0, text
    cfg = load_config(
        None, ["data.source=files", "data.symbols=[BIG]", f"data.paths={{BIG: {path}}}"]
    )
    with pytest.raises(DataError, match="absurd_value"):
        load_market(cfg)
    ok = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_price": 1e10})})
    assert load_market(ok)["BIG"]["close"].iloc[0] == 2e9


def _replace_and_delete(url: str, capsys, folder: Path) -> None:
    symbol = "R" + uuid.uuid4().hex[:8].upper()
    rows = _good_rows(300)
    wrong = [r.replace(",10,11,9,10.5,", ",10,11,9,10.25,") for r in rows]
    _bars_file(folder / "wrong.csv", wrong)
    _bars_file(folder / "right.csv", rows)
    args = ["--symbol", symbol, "--timeframe", "1m", "--db", url]
    code, text = _run(["data", "import", str(folder / "wrong.csv"), *args], capsys)
    assert code == 0 and "300 new" in text, text
    code, text = _run(["data", "import", str(folder / "right.csv"), *args], capsys)
    assert code == 0 and "0 new of 300" in text, text  # plain re-import keeps what is stored
    store = BarStore(url)
    assert (store.read(symbol, "1m")["close"] == 10.25).all()
    code, text = _run(["data", "import", str(folder / "right.csv"), *args, "--replace"], capsys)
    assert code == 0 and "0 new, 300 replaced of 300" in text, text
    assert (store.read(symbol, "1m")["close"] == 10.5).all()
    code, text = _run(
        ["data", "delete", "--symbol", symbol, "--timeframe", "1m", "--db", url], capsys
    )
    assert code == 0 and "deleted 300" in text, text
    assert store.read(symbol, "1m").empty
    code, text = _run(
        ["data", "delete", "--symbol", symbol, "--timeframe", "1m", "--db", url], capsys
    )
    _assert_one_line_error(code, text, 3, "nothing deleted")
    store.close()


def test_import_replace_and_delete_sqlite(workspace, capsys) -> None:
    _replace_and_delete(f"sqlite:///{workspace / 'bars.db'}", capsys, workspace)


def test_import_replace_and_delete_postgres(pg_url, workspace, capsys) -> None:
    _replace_and_delete(pg_url, capsys, workspace)


def test_store_refuses_infinite_values(workspace) -> None:
    bars = synthetic_bars("X", n_bars=10)
    bars.iloc[3, 1] = float("inf")
    with pytest.raises(DataError, match="infinite"):
        BarStore().write(bars, "X", "1m")


# -- 5: no silent synthetic bars ----------------------------------------------------------------


def test_auto_source_never_substitutes_synthetic_bars(market_dir) -> None:
    from rl_trading.data import synthetic_symbols

    path = market_dir / "eurusd_1h.csv.gz"
    base = ["data.source=auto", "data.timeframe=1h"]
    typo = load_config(
        None, [*base, "data.symbols=[EURUSD, MSFTT]", f"data.paths={{EURUSD: {path}}}"]
    )
    with pytest.raises(DataError, match="no data for MSFTT"):
        load_market(typo)
    with pytest.raises(ConfigError, match="'eurusd' \\(did you mean 'EURUSD'\\?\\)"):
        load_config(None, [*base, "data.symbols=[EURUSD]", f"data.paths={{eurusd: {path}}}"])
    with pytest.raises(ConfigError, match="not in data.symbols: 'GBPUSD'"):
        load_config(None, [*base, "data.symbols=[EURUSD]", f"data.paths={{GBPUSD: {path}}}"])
    with pytest.raises(ConfigError, match="ignores it"):
        load_config(None, ["data.source=synthetic", "data.symbols=[EURUSD]",
                           f"data.paths={{EURUSD: {path}}}"])  # fmt: skip
    opted = load_config(
        None,
        [*base, "data.symbols=[EURUSD, GBPUSD]", f"data.paths={{EURUSD: {path}}}",
         "data.synthetic_fallback=true"],
    )  # fmt: skip
    market = load_market(opted)
    assert synthetic_symbols(market) == ["GBPUSD"]
    assert market["GBPUSD"].index.equals(read_bars(path).index)


def test_synthetic_only_when_asked(workspace) -> None:
    from rl_trading.data import synthetic_symbols

    cfg = load_config(None, ["data.synthetic.n_bars=200", "data.symbols=[AAA, BBB]"])
    assert cfg.data.source == "synthetic" and not cfg.data.synthetic_fallback
    assert synthetic_symbols(load_market(cfg)) == ["AAA", "BBB"]
    for name in ("default.yaml", "quickstart.yaml"):
        loaded = load_config(Path(__file__).resolve().parent.parent / "configs" / name)
        assert loaded.data.source in ("synthetic", "sample")
    bars = synthetic_bars("X", n_bars=300, seed=1)
    BarStore().write(bars, "X", "1m")
    sql = ["data.source=sql", "data.symbols=[X, Y]"]
    with pytest.raises(DataError, match="no 1m bars for Y"):
        load_market(load_config(None, sql))
    market = load_market(load_config(None, [*sql, "data.synthetic_fallback=true"]))
    assert synthetic_symbols(market) == ["Y"]


# -- 6: repair swaps inverted high/low ---------------------------------------------------------


def test_repair_swaps_high_and_low_or_refuses(workspace, capsys) -> None:
    rows = _good_rows()
    rows[1] = "2024-01-02T00:01:00Z,100.3,90,110,100.8,100"  # high 90 < low 110
    path = _bars_file(workspace / "inv.csv", rows)
    fixed, changes = repair_bars(read_raw(path))
    assert fixed["high"].iloc[1] == 110 and fixed["low"].iloc[1] == 90
    assert changes == ["swapped high and low on 1 rows: 2024-01-02T00:01:00Z high 90 <-> low 110"]
    code, text = _run(["data", "validate", str(path), "--repair", "--out", "fixed.csv"], capsys)
    assert code == 0 and "swapped high and low" in text and "widened" not in text, text
    assert read_bars(workspace / "fixed.csv")["high"].iloc[1] == 110
    rows[1] = "2024-01-02T00:01:00Z,120,90,110,100.8,100"  # open 120 outside even when swapped
    path = _bars_file(workspace / "stuck.csv", rows)
    code, text = _run(["data", "validate", str(path), "--repair", "--out", "no.csv"], capsys)
    _assert_one_line_error(code, text, 3, "cannot repair")
    assert not (workspace / "no.csv").exists()


# -- 7: the declared timeframe is checked ------------------------------------------------------


def test_timeframe_checked_on_import_and_load(workspace, market_dir, capsys) -> None:
    daily = market_dir / "msft_1d.csv.gz"
    if not daily.exists():
        daily = sorted(market_dir.glob("*_1d.csv.gz"))[0]
    code, text = _run(["data", "import", str(daily), "--symbol", "D", "--timeframe", "1m"], capsys)
    _assert_one_line_error(code, text, 3, "typically 1d apart, not the declared timeframe 1m")
    code, text = _run(["data", "import", str(daily), "--symbol", "D", "--timeframe", "1d"], capsys)
    assert code == 0, text  # weekends and holidays are fine
    BarStore().write(read_bars(daily), "W", "1h")  # stored under the wrong timeframe
    with pytest.raises(DataError, match="typically 1d apart, not the declared timeframe 1h"):
        load_market(load_config(None, ["data.source=sql", "data.symbols=[W]", "data.timeframe=1h"]))


# -- 10: CLI input is a one-line error, never `internal error` --------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["backtest", "--model", "m", "--seeds", "a,b"], 2, "--seeds: 'a' is not an integer"),
        (["backtest", "--model", "m", "--seeds", "1,,2"], 2, "comma-separated integers"),
        (["data", "synth", "--out", "x.csv", "--bars", "0"], 3, "--bars must be between 1"),
        (["data", "synth", "--out", "x.csv", "--bars", "-5"], 3, "--bars must be between 1"),
        (["data", "synth", "--out", "x.csv", "--start", "notadate"], 3, "cannot parse 'notadate'"),
        (["data", "synth", "--out", "x.csv", "--timeframe", "7q"], 3, "unknown timeframe"),
        (["models", "promote", "m", "--alias", "bad alias!"], 6, "invalid alias 'bad alias!'"),
        (["models", "list", "--tracking-uri", "foo://x"], 2, "unknown MLflow tracking URI scheme"),
        (["tune", "pbt", "--population", "0"], 2, "--population must be at least 2"),
        (["models", "register", "--checkpoint", "/nonexistent/ckpt"], 4,
         "checkpoint path does not exist: /nonexistent/ckpt"),
    ],
    ids=["seeds-letters", "seeds-empty-item", "synth-bars-0", "synth-bars-neg", "synth-start",
         "synth-timeframe", "promote-alias", "list-tracking-scheme", "pbt-population-0",
         "register-missing-checkpoint"],
)  # fmt: skip
def test_bad_cli_input_is_a_one_line_error(workspace, capsys, args, code, needle) -> None:
    got, text = _run(args, capsys)
    _assert_one_line_error(got, text, code, needle)
    assert not (workspace / "x.csv").exists() and not (workspace / "mlflow.db").exists()


# -- 11: names, paths, empty files, devices, message length -------------------------------------


def test_symbols_follow_one_pattern(workspace, capsys) -> None:
    out = workspace / "D"
    code, text = _run(["data", "synth", "--symbols", "../../evil,B", "--out", str(out)], capsys)
    _assert_one_line_error(code, text, 3, "invalid symbol '../../evil'")
    assert not out.exists() and not list(workspace.parent.parent.glob("evil*"))
    store = BarStore()
    bars = synthetic_bars("X", n_bars=5)
    for bad in ("", "A" * 5000, "a/b", "..", "x y"):
        with pytest.raises(DataError, match="invalid symbol"):
            store.write(bars, bad, "1m")
    with pytest.raises(ConfigError, match="invalid symbol"):
        load_config(None, ["data.symbols=[../x]"])
    for good in ("9988.HK", "BRK-B", "ES=F", "^GSPC", "EURUSD"):
        assert store.write(bars, good, "1m") == 5


def test_header_only_and_non_regular_files_refused(workspace, capsys) -> None:
    path = _bars_file(workspace / "empty.csv", [])
    code, text = _run(["data", "validate", str(path)], capsys)
    _assert_one_line_error(code, text, 3, "no_rows")
    start = time.monotonic()
    code, text = _run(["data", "validate", "/dev/zero"], capsys)
    _assert_one_line_error(code, text, 3, "not a regular file")
    assert time.monotonic() - start < 5
    (workspace / "notes.md").write_text("hello")
    code, text = _run(["data", "validate", str(workspace / "notes.md")], capsys)
    _assert_one_line_error(code, text, 3, "not a bars file")


def test_error_messages_are_capped(workspace, capsys) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 8):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    lines.append("data: {symbols: *h}")
    (workspace / "bomb.yaml").write_text("\n".join(lines) + "\n")
    code, text = _run(["data", "summary", "-c", "bomb.yaml"], capsys)
    assert code == 2 and "internal error" not in text, text[:300]
    assert len(text) < 1000, len(text)


# -- 13: honest database errors -----------------------------------------------------------------


def test_info_on_missing_or_corrupt_sqlite(workspace, capsys) -> None:
    missing = workspace / "nope.db"
    code, text = _run(["data", "info", "--db", f"sqlite:///{missing}"], capsys)
    _assert_one_line_error(code, text, 3, "no database file")
    assert not missing.exists()
    corrupt = workspace / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite at all " * 200)
    code, text = _run(["data", "info", "--db", f"sqlite:///{corrupt}"], capsys)
    _assert_one_line_error(code, text, 3, "not a valid database")
    assert "unreachable" not in text
    empty = workspace / "empty.db"
    sqlite3.connect(empty).close()  # a real database without our table: empty, not modified
    size = empty.stat().st_size
    code, text = _run(["data", "info", "--db", f"sqlite:///{empty}"], capsys)
    assert code == 0 and "no bars stored" in text and empty.stat().st_size == size


def test_db_errors_name_their_cause() -> None:
    """Credentials refused, a corrupt file and an unreachable server are told apart."""
    store = BarStore("postgresql+psycopg2://trader:pw@127.0.0.1:1/bars")

    class Fake(Exception):
        pass

    cases = [
        ('FATAL:  password authentication failed for user "trader"', ConnectionFailure,
         "refused the credentials"),
        ("file is not a database", DataError, "not a valid database"),
        ("connection to server at 127.0.0.1, port 1 failed: Connection refused",
         ConnectionFailure, "database unreachable"),
    ]  # fmt: skip
    for reason, kind, needle in cases:
        err = store._connect_error(Fake(reason))
        assert type(err) is kind and needle in str(err), str(err)


# -- 14: exchange-local timestamps --------------------------------------------------------------


def _ny_rows(offset: str) -> list[str]:
    days = ["2024-01-03", "2024-01-04", "2024-07-02", "2024-07-03"]
    return [f"{d}T09:30:00{offset},10,11,9,10.5,100" for d in days]


def test_fixed_offset_across_dst_warns_and_tz_reads_wall_clock(workspace, capsys, caplog) -> None:
    fixed = _bars_file(workspace / "ny_fixed.csv", _ny_rows("-05:00"))
    with caplog.at_level(logging.WARNING):
        bars = read_bars(fixed)
    assert "fixed offset -05:00" in caplog.text and "--tz America/New_York" in caplog.text
    assert bars.index[2] == pd.Timestamp("2024-07-02 14:30", tz="UTC")  # as written: 1h off
    want = pd.DatetimeIndex(
        ["2024-01-03 14:30", "2024-01-04 14:30", "2024-07-02 13:30", "2024-07-03 13:30"], tz="UTC"
    )
    for name, rows in (("ny_naive.csv", _ny_rows("")), ("ny_fixed2.csv", _ny_rows("-05:00"))):
        path = _bars_file(workspace / name, rows)
        assert read_bars(path, tz="America/New_York").index.equals(want.rename("timestamp"))
        code, text = _run(["data", "validate", str(path), "--tz", "America/New_York"], capsys)
        assert code == 0, text
    code, text = _run(["data", "validate", str(fixed), "--tz", "Mars/Olympus"], capsys)
    _assert_one_line_error(code, text, 3, "unknown time zone 'Mars/Olympus'")
    naive = workspace / "ny_naive.csv"
    cfg = load_config(
        None,
        ["data.source=files", "data.symbols=[NY]", f"data.paths={{NY: {naive}}}",
         "data.timeframe=1d", "data.tz=America/New_York"],
    )  # fmt: skip
    assert load_market(cfg)["NY"].index.equals(want.rename("timestamp"))
    with pytest.raises(ConfigError, match="unknown time zone"):
        load_config(None, ["data.tz=Nowhere/Land"])
    honest = _bars_file(workspace / "utc.csv", _ny_rows("+08:00"))  # no DST zone uses +08:00
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_bars(honest)
    assert "fixed offset" not in caplog.text


@pytest.mark.parametrize("mark", ["Z", " UTC", "+00:00", "+08:00"])
def test_tz_keeps_explicit_utc_and_foreign_offsets(workspace, capsys, mark) -> None:
    """data.tz reads wall-clock times; a written UTC marker (or an offset the zone never uses)
    is an instant and is kept as written, as tz-aware Parquet is (it was dropped: 16:00Z under
    America/New_York became 20:00Z)."""
    path = _bars_file(workspace / "marked.csv", _ny_rows(mark))
    as_written = read_bars(path)
    bars = read_bars(path, tz="America/New_York")
    assert bars.index.equals(as_written.index)
    if mark != "+08:00":
        assert bars.index[2] == pd.Timestamp("2024-07-02 09:30", tz="UTC")
    parquet = write_bars(as_written, workspace / "marked.parquet")
    assert read_bars(parquet, tz="America/New_York").index.equals(bars.index)
    code, text = _run(["data", "validate", str(path), "--tz", "America/New_York"], capsys)
    assert code == 0, text


def test_tz_wall_clock_and_utc_rows_in_one_file(workspace) -> None:
    """Each row by its own marker: naive and zone-offset rows wall-clock, Z rows as written."""
    rows = [
        "2024-01-03T09:30:00,10,11,9,10.5,100",
        "2024-01-04T09:30:00-05:00,10,11,9,10.5,100",
        "2024-07-02T13:30:00Z,10,11,9,10.5,100",
        "2024-07-03T09:30:00-05:00,10,11,9,10.5,100",
    ]
    bars = read_bars(_bars_file(workspace / "rows.csv", rows), tz="America/New_York")
    want = ["2024-01-03 14:30", "2024-01-04 14:30", "2024-07-02 13:30", "2024-07-03 13:30"]
    assert bars.index.equals(pd.DatetimeIndex(want, tz="UTC", name="timestamp"))


def test_write_bars_roundtrip_still_fine(workspace) -> None:
    bars = synthetic_bars("X", n_bars=50)
    bars.index.freq = None
    pd.testing.assert_frame_equal(read_bars(write_bars(bars, workspace / "x.csv.gz")), bars)


def test_synthetic_marks_survive_signals_and_splits() -> None:
    from rl_trading.data import split_by_time, synthetic_symbols
    from rl_trading.supervised.signals import observed_market

    cfg = load_config(
        None,
        ["data.synthetic.n_bars=3000", "data.symbols=[A, B]", "supervised.signals_enabled=true"],
    )
    bars = observed_market(cfg)
    assert synthetic_symbols(bars) == ["A", "B"]
    assert synthetic_symbols(split_by_time(bars, 0.7, 0.15, 5).train) == ["A", "B"]
