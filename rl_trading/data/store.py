"""SQL bar store (SQLAlchemy 2 Core): table `historical_bars`, idempotent imports.

SQLite in the workspace by default (`rl_trading.db`), PostgreSQL via a URL. Re-importing the
same bars inserts nothing (ON CONFLICT DO NOTHING on the unique (symbol, timeframe, timestamp)).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from rl_trading.data.schema import BAR_COLUMNS, INDEX_NAME, as_bars, empty_bars
from rl_trading.errors import ConnectionFailure, DataError
from rl_trading.tracking import expand_env_vars, redact, workspace

DEFAULT_DB_NAME = "rl_trading.db"
BATCH_ROWS = 5000


def default_db_url() -> str:
    """RL_TRADING_DB_URL if set (keeps credentials out of configs), else the embedded SQLite
    store in the workspace (the current directory)."""
    return os.environ.get("RL_TRADING_DB_URL") or f"sqlite:///{workspace() / DEFAULT_DB_NAME}"


@dataclass(frozen=True)
class SeriesInfo:
    """One stored series: symbol, timeframe, number of rows and time range."""

    symbol: str
    timeframe: str
    rows: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None


def _utc(value: Any) -> pd.Timestamp | None:
    """A stored timestamp as UTC (SQLite returns naive UTC, PostgreSQL aware values)."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


class BarStore:
    """Bars in a SQL table keyed by (symbol, timeframe, timestamp)."""

    def __init__(self, url: str | None = None, table: str = "historical_bars") -> None:
        self.url = expand_env_vars(url or default_db_url())  # `${VAR}` filled at use time
        self.safe_url = redact(self.url)
        try:
            parsed = sa.engine.make_url(self.url)
            connect_args: dict[str, Any] = {}
            if parsed.get_backend_name() == "postgresql":
                connect_args["connect_timeout"] = 5
            self.engine = sa.create_engine(self.url, connect_args=connect_args, future=True)
        except (ArgumentError, NoSuchModuleError, ModuleNotFoundError, ValueError) as exc:
            raise ConnectionFailure(
                f"cannot use database URL {self.safe_url} ({_reason(exc)})"
            ) from None
        self.dialect = self.engine.dialect.name
        meta = sa.MetaData()
        self.table = sa.Table(
            table,
            meta,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
            sa.Column("symbol", sa.String(64), nullable=False),
            sa.Column("timeframe", sa.String(16), nullable=False),
            sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
            *(sa.Column(c, sa.Double, nullable=False) for c in BAR_COLUMNS),
            sa.UniqueConstraint("symbol", "timeframe", "timestamp", name=f"uq_{table}_key"),
        )
        self._meta = meta
        self._ready = False

    def _connect_error(self, exc: BaseException) -> ConnectionFailure:
        return ConnectionFailure(f"database unreachable at {self.safe_url} ({_reason(exc)})")

    def _ensure(self) -> None:
        if self._ready:
            return
        try:
            self._meta.create_all(self.engine, checkfirst=True)
        except (OperationalError, DBAPIError) as exc:
            raise self._connect_error(exc) from None
        self._ready = True

    def _ts(self, stamps: pd.DatetimeIndex) -> list[Any]:
        utc = stamps.tz_convert("UTC")
        if self.dialect == "sqlite":  # SQLite has no time zones: store naive UTC
            return list(utc.tz_localize(None).to_pydatetime())
        return list(utc.to_pydatetime())

    def _count(self, conn: sa.Connection, symbol: str, timeframe: str) -> int:
        t = self.table
        query = sa.select(sa.func.count()).where(t.c.symbol == symbol, t.c.timeframe == timeframe)
        return int(conn.execute(query).scalar_one())

    def write(self, bars: pd.DataFrame, symbol: str, timeframe: str) -> int:
        """Insert bars; rows already stored are skipped. Returns the number of new rows."""
        frame = as_bars(bars)
        if frame[BAR_COLUMNS].isna().any().any():
            raise DataError(f"refusing to store bars with NaN values for {symbol}")
        self._ensure()
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - other dialects: plain insert after filtering known keys
            insert = None
        stamps = self._ts(frame.index)
        values = frame.to_numpy(dtype="float64").tolist()
        rows = [
            {
                "symbol": symbol,
                "timeframe": timeframe,
                "timestamp": ts,
                **dict(zip(BAR_COLUMNS, v, strict=True)),
            }
            for ts, v in zip(stamps, values, strict=True)
        ]
        try:
            with self.engine.begin() as conn:
                before = self._count(conn, symbol, timeframe)
                for start in range(0, len(rows), BATCH_ROWS):
                    batch = rows[start : start + BATCH_ROWS]
                    if insert is not None:
                        stmt = insert(self.table).on_conflict_do_nothing(
                            index_elements=["symbol", "timeframe", "timestamp"]
                        )
                    else:  # pragma: no cover
                        stmt = sa.insert(self.table)
                    conn.execute(stmt, batch)
                after = self._count(conn, symbol, timeframe)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise self._connect_error(exc) from None
            raise DataError(f"cannot store bars for {symbol}: {_reason(exc)}") from None
        return after - before

    def read(
        self,
        symbol: str,
        timeframe: str,
        start: str | pd.Timestamp | None = None,
        end: str | pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Stored bars of one series (inclusive `start`/`end`), in the canonical bars schema."""
        self._ensure()
        t = self.table
        query = sa.select(t.c.timestamp, *(t.c[c] for c in BAR_COLUMNS)).where(
            t.c.symbol == symbol, t.c.timeframe == timeframe
        )
        for bound, op in ((start, "ge"), (end, "le")):
            if bound is None:
                continue
            ts = pd.Timestamp(bound)
            ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
            value = self._ts(pd.DatetimeIndex([ts]))[0]
            query = query.where(t.c.timestamp >= value if op == "ge" else t.c.timestamp <= value)
        query = query.order_by(t.c.timestamp)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except (OperationalError, DBAPIError) as exc:
            raise self._connect_error(exc) from None
        if not rows:
            return empty_bars()
        frame = pd.DataFrame(rows, columns=[INDEX_NAME, *BAR_COLUMNS])
        frame[INDEX_NAME] = pd.to_datetime(frame[INDEX_NAME], utc=True)
        return as_bars(frame.set_index(INDEX_NAME))

    def info(self) -> list[SeriesInfo]:
        """Every stored series with its row count and first/last timestamp."""
        self._ensure()
        t = self.table
        query = (
            sa.select(
                t.c.symbol,
                t.c.timeframe,
                sa.func.count(),
                sa.func.min(t.c.timestamp),
                sa.func.max(t.c.timestamp),
            )
            .group_by(t.c.symbol, t.c.timeframe)
            .order_by(t.c.symbol, t.c.timeframe)
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except (OperationalError, DBAPIError) as exc:
            raise self._connect_error(exc) from None
        return [SeriesInfo(s, tf, int(n), _utc(a), _utc(b)) for s, tf, n, a, b in rows]

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()
