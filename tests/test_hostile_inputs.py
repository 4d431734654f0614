"""Hostile inputs that used to give a silently wrong number (issue 31): bars that do not fit
the model, warm-up bars counted as evaluated, bad fold counts. Each gives a one-line error or
the right answer; nothing here starts Ray."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rl_trading.config import load_config
from rl_trading.errors import DataError

TINY = [
    "data.source=synthetic",
    "data.symbols=[AAA, BBB]",
    "data.timeframe=1h",
    "data.embargo_bars=5",
    "data.synthetic.n_bars=800",
    "env.risk_window=20",
    "env.sectors={}",
]


def _bars_csv(path: Path, index: pd.DatetimeIndex, close: np.ndarray | None = None) -> Path:
    close = (
        100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, len(index))))
        if close is None
        else close
    )
    frame = pd.DataFrame(
        {
            "timestamp": index.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
            "open": close,
            "high": close * 1.01,
            "low": close * 0.99,
            "close": close,
            "volume": 1000.0,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


# --- backtest --data: the bars must be of the model's timeframe and calendar -----------------


def test_backtest_data_of_another_spacing_is_refused(tmp_path):
    """Weekly bars scored as daily overstated Sharpe ~2.2x (periods_per_year 251.6)."""
    from rl_trading.evaluation.selection import select_bars

    cfg = load_config(None, ["data.timeframe=1d", "data.periods_per_year=252"])
    weekly = pd.date_range("2020-01-06", periods=200, freq="7D", tz="UTC")
    path = _bars_csv(tmp_path / "MSFT_1w.csv", weekly)
    with pytest.raises(DataError, match=r"MSFT_1w.csv: bars are typically 7d apart.*1d bars"):
        select_bars(cfg, path)


def test_backtest_data_on_another_calendar_is_refused_unless_said(tmp_path):
    """Hourly bars of a 7-hour session scored on a 24/7 hourly calendar (8,760 a year)."""
    from rl_trading.evaluation.selection import select_bars

    cfg = load_config(None, ["data.timeframe=1h", "data.periods_per_year=8760"])
    hours = pd.date_range("2025-01-01", periods=2000, freq="1h", tz="UTC")
    session = hours[(hours.hour >= 9) & (hours.hour < 16) & (hours.day_of_week < 5)][:300]
    path = _bars_csv(tmp_path / "AAA_1h.csv", session)
    with pytest.raises(DataError, match=r"about [12],\d\d\d per year.*8,760.*periods_per_year="):
        select_bars(cfg, path)
    own = load_config(None, ["data.timeframe=1h", "data.periods_per_year=2000"])
    bars, _, _ = select_bars(own, path)  # said out loud: scored on their own calendar
    assert len(bars["AAA"]) == 300


def test_backtest_data_that_fits_the_model_is_read(tmp_path):
    from rl_trading.evaluation.selection import select_bars

    cfg = load_config(None, ["data.timeframe=1h", "data.periods_per_year=8760"])
    path = _bars_csv(tmp_path / "AAA_1h.csv", pd.date_range("2025-01-01", periods=300, freq="1h"))
    bars, train, _ = select_bars(cfg, path)
    assert len(bars["AAA"]) == 300 and train is None


# --- the overlap check counts evaluated bars, not the warm-up -------------------------------


def test_val_split_warmup_is_not_an_overlap_but_train_bars_are():
    """`backtest --split val` (what `train` suggests) was refused for every model: the warm-up
    bars `split_for_env` prepends to the split lie in the training range."""
    from envs import HierarchicalTradingEnv
    from rl_trading.data import split_for_env
    from rl_trading.evaluation.backtest import first_decision_bar, training_overlap
    from rl_trading.supervised.signals import observed_market

    cfg = load_config(None, TINY)
    parts = split_for_env(observed_market(cfg), cfg)
    train = next(iter(parts.train.values())).index
    pre = {"train_start": str(train[0]), "train_end": str(train[-1])}
    window = {"window_size": cfg.train.window_size}
    bundle = SimpleNamespace(preprocessing=window, hierarchical=True)
    warmup = first_decision_bar(bundle, cfg)
    # the env's first decision is that bar: everything before it is history, not evaluated
    env = HierarchicalTradingEnv(cfg, bars=parts.val, mode="joint", eval_mode=True)
    assert env.first_bar == warmup
    assert training_overlap(pre, parts.val, warmup) == ""
    assert "fall in the model's training range" in training_overlap(pre, parts.val, 0)
    # training bars are still refused
    overlap = training_overlap(pre, parts.train, warmup)
    assert overlap.startswith(f"{len(train) - warmup} of {len(train) - warmup} evaluated bars")


def test_backtest_folds_below_one_are_refused(workspace, capsys):
    from rl_trading.cli.main import main

    for folds in ("-3", "0"):
        rc = main(["backtest", "--checkpoint", "nowhere", "--folds", folds])
        err = capsys.readouterr().err
        assert rc == 2 and f"--folds must be at least 1 (1: no walk-forward), not {folds}" in err


# --- database URLs: plain postgresql:// works, an unused one is no obstacle -------------------


@pytest.mark.parametrize(
    ("installed", "driver"),
    [({"psycopg2"}, "postgresql+psycopg2"), ({"psycopg", "psycopg2"}, None), (set(), None)],
    ids=["psycopg2-only", "psycopg3", "no-driver"],
)
def test_plain_postgresql_url_gets_the_installed_driver(monkeypatch, installed, driver):
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the `postgres` extra installs
    psycopg2, so a plain URL failed with "No module named 'psycopg'"."""
    import importlib.util

    from rl_trading.tracking import sqlalchemy_url

    real = importlib.util.find_spec

    def find_spec(name, *args):  # noqa: ANN001, ANN202 - importlib's signature
        if name.startswith("psycopg"):
            return object() if name in installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for scheme in ("postgresql", "postgres"):
        url = f"{scheme}://u:secret@127.0.0.1:5999/db"
        want = f"{driver}://u:secret@127.0.0.1:5999/db" if driver else url
        assert sqlalchemy_url(url) == want
    explicit = "postgresql+psycopg2://u:secret@127.0.0.1:5999/db"
    assert sqlalchemy_url(explicit) == explicit
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"


def test_plain_postgresql_url_reaches_the_server(workspace, capsys):
    """With the installed driver the URL is used: the closed port is what fails, not a module."""
    import socket

    from rl_trading.cli.main import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rc = main(["data", "info", "--db", f"postgresql://trader:Kp9Wm3@127.0.0.1:{port}/bars"])
    err = capsys.readouterr().err
    assert rc == 5 and "database unreachable" in err and "psycopg" not in err, err
    assert "Kp9Wm3" not in err


def test_postgresql_tracking_store_unreachable_is_one_line_at_once(workspace, capsys):
    """A plain postgresql:// MLflow store used to fail with "No module named 'psycopg'", and
    with the driver, after MLflow's minutes of retries, as an internal OperationalError."""
    import socket
    import time

    from rl_trading.cli.main import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"postgresql://trader:Kp9/Wm#3x@127.0.0.1:{port}/mlflow"
    t0 = time.monotonic()
    rc = main(["models", "list", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 5 and time.monotonic() - t0 < 30, err
    assert (
        f"MLflow tracking database unreachable at postgresql://trader:***@127.0.0.1:{port}" in err
    )
    for piece in ("Kp9", "Wm", "3x", "psycopg'"):
        assert piece not in err, err


def test_database_url_unused_by_the_source_is_not_in_the_data_reference(monkeypatch):
    """`--set data.db_url=postgresql://...` with `source: sample` was refused by the env
    runners ("database URL is redacted"), though the bars never come from the database."""
    from envs.registration import load_reference
    from rl_trading.training.env_bridge import hierarchical_factory
    from rl_trading.training.session import load_splits

    monkeypatch.delenv("RL_TRADING_DB_URL", raising=False)
    cfg = load_config(None, [*TINY, "data.db_url=postgresql://trader:Kp9Wm3@127.0.0.1:5999/bars"])
    train, val, _ = load_splits(cfg)
    factory = hierarchical_factory(cfg, train, val, source=cfg)
    ref = factory.metadata["data_ref"]
    assert ref["cfg"]["data"]["db_url"] is None
    assert set(load_reference(ref)) == {"AAA", "BBB"}  # what an env runner does


# --- stored bars are checked on read, as on import ---------------------------------------------


def test_non_finite_stored_bars_are_refused_on_read_naming_the_rows(workspace):
    import sqlalchemy as sa

    from rl_trading.data import load_market, synthetic_market
    from rl_trading.data.store import BarStore

    store = BarStore()
    store.write(synthetic_market(["MSFT"], n_bars=50, seed=1, timeframe="1d")["MSFT"], "MSFT", "1d")
    with store.engine.begin() as conn:  # as another tool (or an old version) left them
        t = store.table
        conn.execute(sa.update(t).where(t.c.id == 5).values(close=float("inf")))
        conn.execute(sa.update(t).where(t.c.id == 9).values(volume=float("-inf")))
    with pytest.raises(DataError, match=r"2 stored MSFT 1d bar\(s\).*\(close\).*\(volume\)"):
        store.read("MSFT", "1d")
    cfg = load_config(None, ["data.source=sql", "data.symbols=[MSFT]", "data.timeframe=1d"])
    with pytest.raises(DataError, match="hold NaN or infinite values"):
        load_market(cfg)  # `data summary` and training read through here


# --- bars files: outliers and naive Parquet timestamps -----------------------------------------


def _spiky(tmp_path: Path) -> Path:
    idx = pd.date_range("2025-01-01", periods=300, freq="1D", tz="UTC")
    close = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 300)))
    close[150] *= 100  # a close x100 spike: every row rule still holds
    return _bars_csv(tmp_path / "SPIKE_1d.csv", idx, close)


def test_data_validate_warns_on_a_spike_and_strict_refuses_it(tmp_path, capsys):
    from rl_trading.cli.main import main

    path = _spiky(tmp_path)
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid, 2 warning(s)" in out
    assert "2 outlier return(s)" in out and "2025-05-31" in out
    assert main(["data", "validate", str(path), "--strict"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error:") and "outlier return(s)" in err and "(--strict)" in err


def test_real_sample_bars_raise_no_outlier_warning():
    """Real moves (earnings gaps, session opens, crypto swings) stay below the threshold."""
    from rl_trading.data.loader import sample_files
    from rl_trading.data.validation import outlier_returns, read_bars

    for path in sample_files().values():
        assert outlier_returns(read_bars(path)) == [], path


def test_naive_parquet_timestamps_are_refused_like_naive_csv(tmp_path):
    from rl_trading.data.validation import read_bars

    days = pd.date_range("2025-01-01", periods=30, freq="1D")  # naive, midnight
    close = np.linspace(100.0, 110.0, 30)
    frame = pd.DataFrame(
        {"open": close, "high": close + 1, "low": close - 1, "close": close, "volume": 1.0}
    )
    frame.set_index(days.rename("timestamp")).to_parquet(tmp_path / "naive.parquet")
    frame.assign(timestamp=days.strftime("%Y-%m-%d %H:%M:%S")).to_csv(tmp_path / "naive.csv")
    for name in ("naive.parquet", "naive.csv"):
        with pytest.raises(DataError, match="no time zone.*--assume-utc"):
            read_bars(tmp_path / name)
    read = read_bars(tmp_path / "naive.parquet", assume_utc=True)
    assert str(read.index.tz) == "UTC" and read.index[0] == pd.Timestamp("2025-01-01", tz="UTC")
    # plain dates (a Parquet date column, like date-only CSV text) are UTC days
    frame.assign(timestamp=days.date).to_parquet(tmp_path / "dates.parquet")
    assert read_bars(tmp_path / "dates.parquet").index[0] == pd.Timestamp("2025-01-01", tz="UTC")


# --- a corrupt MLflow store: one line naming the file, before Ray -----------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_mlflow_store_is_one_line_before_ray(workspace, capsys, monkeypatch, damage):
    import sqlite3

    from rl_trading.cli.main import main

    db = workspace / "mlflow.db"
    if damage == "garbage":
        db.write_bytes(np.random.default_rng(0).bytes(5000))
    else:  # a real SQLite file cut short
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE t (x TEXT)")
        con.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
        con.commit()
        con.close()
        db.write_bytes(db.read_bytes()[:6000])
    before = db.read_bytes()

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the corrupt store was refused")

    monkeypatch.setattr("rl_trading.ray_utils.init_ray", no_ray)
    (workspace / "tiny.yaml").write_text("data: {source: synthetic, symbols: [AAA]}\n")
    for args in (["models", "list"], ["train", "phase1", "-c", "tiny.yaml", "--run-dir", "r"]):
        assert main(args) == 5, args
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and f"MLflow store {db} is corrupt" in lines[0], err
        assert "\x1b[" not in err
    assert db.read_bytes() == before  # left as it was, for the user to inspect
