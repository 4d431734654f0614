"""SQL bar store: exact round trip, idempotent re-import, info, unreachable DB (SQLite + PG)."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest

from rl_trading.data import read_bars, synthetic_bars
from rl_trading.data.store import BarStore
from rl_trading.errors import ConnectionFailure, DataError


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


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"low": 0.0}, "non_positive_price"),
        ({"open": -1.0, "low": -2.0}, "non_positive_price"),
        ({"high": 1.0, "low": 2.0}, "high_below_low"),
        ({"open": 5e9, "high": 5e9}, "absurd_value"),
    ],
    ids=["zero", "negative", "high-below-low", "above-ceiling"],
)
def test_sql_bars_pass_the_file_row_rules(workspace, change, rule) -> None:
    """Rows another tool wrote into historical_bars are checked like a file's rows on every
    read path (loader, paper SqlFeed); write refuses them before storing anything."""
    import sqlalchemy as sa

    from rl_trading.config import load_config
    from rl_trading.data import load_market
    from rl_trading.paper.feeds import SqlFeed

    bars = _bars(50)
    bad = bars.copy()
    for col, value in change.items():
        bad.iloc[10, bad.columns.get_loc(col)] = value
    store = BarStore()
    with pytest.raises(DataError, match=rf"refusing to store X 1m: row 11 .*{rule}"):
        store.write(bad, "X", "1m")
    assert not (workspace / "rl_trading.db").exists()  # refused before anything is written
    store.write(bars, "X", "1m")
    with store.engine.begin() as conn:  # as another tool would
        t = store.table
        stamp = bars.index[10].tz_localize(None).to_pydatetime()
        conn.execute(sa.update(t).where(t.c.timestamp == stamp).values(**change))
    want = rf"stored X 1m in table historical_bars at .*: row 11 \(.*\): {rule}"
    cfg = load_config(None, ["data.source=sql", "data.symbols=[X]", "data.timeframe=1m"])
    for read in (
        lambda: store.read("X", "1m"),
        lambda: load_market(cfg),
        lambda: SqlFeed(None, ["X"], "1m").poll(None),
    ):
        with pytest.raises(DataError, match=want) as info:
            read()
        assert "\n" not in str(info.value)


def test_sql_read_uses_the_configured_price_ceiling(workspace) -> None:
    """data.max_price applies to SQL bars as to files (it was ignored on the SQL path)."""
    from rl_trading.config import load_config
    from rl_trading.data import load_market

    bars = _bars(50) * 1000  # prices around 1e5; volume x1000 is fine
    BarStore().write(bars, "X", "1m")
    sql = ["data.source=sql", "data.symbols=[X]", "data.timeframe=1m"]
    assert len(load_market(load_config(None, sql))["X"]) == 50
    with pytest.raises(DataError, match="absurd_value"):
        load_market(load_config(None, [*sql, "data.max_price=1000"]))
    with pytest.raises(DataError, match="absurd_value"):
        BarStore().write(bars, "Y", "1m", max_price=1000)
