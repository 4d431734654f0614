"""SQL bar store: exact round trip, idempotent re-import, info, unreachable DB (SQLite + PG)."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest

from rl_trading.data import read_bars, synthetic_bars
from rl_trading.data.store import BarStore
from rl_trading.errors import ConnectionFailure


def _bars(n: int = 3000) -> pd.DataFrame:
    bars = synthetic_bars("X", n_bars=n, seed=3, timeframe="1m")
    bars.index.freq = None
    return bars


def _roundtrip(store: BarStore, symbol: str) -> None:
    bars = _bars(12_000)  # more than one insert batch
    assert store.write(bars, symbol, "1m") == len(bars)
    back = store.read(symbol, "1m")
    pd.testing.assert_frame_equal(back, bars)
    assert store.write(bars, symbol, "1m") == 0  # idempotent re-import
    extra = _bars(12_010).iloc[-20:]  # 10 overlapping + 10 new bars
    assert store.write(extra, symbol, "1m") == 10
    part = store.read(symbol, "1m", start=bars.index[100], end=bars.index[199])
    pd.testing.assert_frame_equal(part, bars.iloc[100:200])
    assert store.read(symbol, "5m").empty
    info = {(i.symbol, i.timeframe): i for i in store.info()}
    item = info[(symbol, "1m")]
    assert item.rows == 12_010 and item.first == bars.index[0]
    assert item.last == extra.index[-1]


def test_sqlite_default_in_workspace_roundtrip(workspace) -> None:
    store = BarStore()
    assert store.url == f"sqlite:///{workspace / 'rl_trading.db'}"
    _roundtrip(store, "SYN")
    assert (workspace / "rl_trading.db").is_file()


def test_sqlite_real_file_roundtrip(workspace, market_dir) -> None:
    bars = read_bars(market_dir / "9988_hk_1h.csv.gz")
    store = BarStore(f"sqlite:///{workspace / 'x.db'}")
    assert store.write(bars, "9988.HK", "1h") == len(bars)
    pd.testing.assert_frame_equal(store.read("9988.HK", "1h"), bars)


@pytest.mark.postgres
def test_postgres_roundtrip(pg_url) -> None:
    store = BarStore(pg_url)
    symbol = f"T{uuid.uuid4().hex[:8]}"
    _roundtrip(store, symbol)
    store.close()


def test_unreachable_database_redacts_password() -> None:
    url = "postgresql+psycopg2://trader:s3cret@127.0.0.1:1/nodb"
    store = BarStore(url)
    with pytest.raises(ConnectionFailure) as info:
        store.read("X", "1m")
    msg = str(info.value)
    assert "s3cret" not in msg and "trader:***@127.0.0.1" in msg and "\n" not in msg


def test_bad_url_is_a_connection_failure() -> None:
    with pytest.raises(ConnectionFailure, match="cannot use database URL"):
        BarStore("nosuchdb://x:pw@host/db")
