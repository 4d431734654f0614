"""SQL bar store (SQLAlchemy 2 Core): table `historical_bars`, idempotent imports.

SQLite in the workspace by default (`rl_trading.db`), PostgreSQL via a URL. Re-importing the
same bars inserts nothing (ON CONFLICT DO NOTHING on the unique (symbol, timeframe, timestamp));
`replace=True` overwrites stored rows instead (ON CONFLICT DO UPDATE), `delete` drops a series.
Reading never creates anything: a missing SQLite file is an error, a missing table is empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from rl_trading.config import check_symbol
from rl_trading.data.schema import BAR_COLUMNS, INDEX_NAME, as_bars, empty_bars
from rl_trading.data.validation import DEFAULT_MAX_PRICE, check_bars
from rl_trading.errors import ConfigError, ConnectionFailure, DataError, RLTradingError
from rl_trading.tracking import (
    expand_env_vars,
    redact,
    scrub_secret,
    split_url,
    sqlalchemy_url,
    workspace,
)

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


_AUTH_WORDS = ("authentication failed", "access denied", "password", "no pg_hba.conf entry")
_CORRUPT_WORDS = ("file is not a database", "malformed", "not a database", "file is encrypted")


@dataclass(frozen=True)
class WriteResult:
    """What `BarStore.write` did: rows inserted, stored rows overwritten (replace), total."""

    new: int
    replaced: int
    total: int


class BarStore:
    """Bars in a SQL table keyed by (symbol, timeframe, timestamp)."""

    def __init__(self, url: str | None = None, table: str = "historical_bars") -> None:
        self.url = expand_env_vars(url or default_db_url())  # `${VAR}` filled at use time
        self.safe_url = redact(self.url)
        parts = split_url(self.url)
        self._password = parts[2] if parts else None
        if self._password is not None and "@" in self._password:  # checked before parsing:
            raise ConfigError(  # SQLAlchemy would show the rest of the password as the host
                f"cannot use database URL {self.safe_url}: its password holds a raw '@' "
                "(percent-encode it as %40, or put it in an environment variable and "
                "write ${VAR})"
            )
        try:
            parsed = sa.engine.make_url(sqlalchemy_url(self.url))  # plain postgresql: driver
            if self._password is not None and parsed.password != unquote(self._password):
                raise ConfigError(
                    f"cannot use database URL {self.safe_url}: its password is not read as "
                    "written (percent-encode it, or put it in an environment variable and "
                    "write ${VAR})"
                )
            connect_args: dict[str, Any] = {}
            if parsed.get_backend_name() == "postgresql":
                connect_args["connect_timeout"] = 5
            self.engine = sa.create_engine(parsed, connect_args=connect_args, future=True)
        except (ArgumentError, NoSuchModuleError, ModuleNotFoundError, ValueError) as exc:
            hint = ""
            if isinstance(exc, ModuleNotFoundError) and "psycopg" in str(exc):
                hint = "; install the PostgreSQL driver: pip install 'rl-trading[postgres]'"
            raise ConnectionFailure(
                f"cannot use database URL {self.safe_url} ({self._scrub(_reason(exc))}{hint})"
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
        self.last_write: WriteResult | None = None

    def _connect_error(self, exc: BaseException) -> RLTradingError:
        """A one-line error that says what went wrong: credentials, a corrupt file, or the
        server really being unreachable (they need different fixes)."""
        reason = self._scrub(_reason(exc))
        low = reason.lower()
        if any(w in low for w in _CORRUPT_WORDS):
            return DataError(f"{self.safe_url} is not a valid database (corrupt?): {reason}")
        if any(w in low for w in _AUTH_WORDS):
            return ConnectionFailure(
                f"database at {self.safe_url} refused the credentials ({reason})"
            )
        return ConnectionFailure(f"database unreachable at {self.safe_url} ({reason})")

    def _scrub(self, text: str) -> str:
        """`text` with URLs redacted and no piece of the password left."""
        return scrub_secret(text, self._password)

    def _sqlite_path(self) -> str | None:
        """The SQLite file of this store, or None (PostgreSQL, in-memory)."""
        if self.dialect != "sqlite":
            return None
        name = self.engine.url.database
        return None if not name or name == ":memory:" or name.startswith("file:") else name

    def _ensure(self, create: bool = True) -> bool:
        """Make sure the table exists (`create`), or only check it does; False if it does not.

        Without `create`, a missing SQLite file is a DataError and nothing is written."""
        if self._ready:
            return True
        path = self._sqlite_path()
        if not create and path is not None and not os.path.exists(path):
            raise DataError(
                f"no database file at {path} (nothing imported yet: "
                "`rl-trading data import` creates it)"
            )
        try:
            if create:
                self._meta.create_all(self.engine, checkfirst=True)
            else:
                with self.engine.connect() as conn:
                    if not sa.inspect(conn).has_table(self.table.name):
                        return False
        except (OperationalError, DBAPIError) as exc:
            raise self._connect_error(exc) from None
        self._ready = True
        return True

    def _ts(self, stamps: pd.DatetimeIndex) -> list[Any]:
        utc = stamps.tz_convert("UTC")
        if self.dialect == "sqlite":  # SQLite has no time zones: store naive UTC
            return list(utc.tz_localize(None).to_pydatetime())
        return list(utc.to_pydatetime())

    def _count(self, conn: sa.Connection, symbol: str, timeframe: str) -> int:
        t = self.table
        query = sa.select(sa.func.count()).where(t.c.symbol == symbol, t.c.timeframe == timeframe)
        return int(conn.execute(query).scalar_one())

    def write(
        self,
        bars: pd.DataFrame,
        symbol: str,
        timeframe: str,
        replace: bool = False,
        max_price: float = DEFAULT_MAX_PRICE,
    ) -> int:
        """Insert bars; rows already stored are skipped (or overwritten with `replace`).

        Bars breaking a row rule of the file loader (price <= 0, high < low, above
        `max_price` ...) are refused before anything is written. Returns the number of new
        rows; `last_write` has the full `WriteResult`."""
        check_symbol(symbol)
        frame = as_bars(bars)
        values_arr = frame[BAR_COLUMNS].to_numpy(dtype="float64")
        if not np.isfinite(values_arr).all():
            raise DataError(f"refusing to store bars with NaN or infinite values for {symbol}")
        check_bars(frame, source=f"refusing to store {symbol} {timeframe}", max_price=max_price)
        self._ensure()
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert  # heavy: sqlalchemy
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert  # heavy: sqlalchemy
        else:  # pragma: no cover - other dialects: plain insert after filtering known keys
            insert = None
        stamps = self._ts(frame.index)
        rows = [
            {
                "symbol": symbol,
                "timeframe": timeframe,
                "timestamp": ts,
                **dict(zip(BAR_COLUMNS, v, strict=True)),
            }
            for ts, v in zip(stamps, values_arr.tolist(), strict=True)
        ]
        keys = ["symbol", "timeframe", "timestamp"]
        try:
            with self.engine.begin() as conn:
                before = self._count(conn, symbol, timeframe)
                for start in range(0, len(rows), BATCH_ROWS):
                    batch = rows[start : start + BATCH_ROWS]
                    if insert is None:  # pragma: no cover
                        stmt = sa.insert(self.table)
                    elif replace:
                        stmt = insert(self.table)
                        stmt = stmt.on_conflict_do_update(
                            index_elements=keys,
                            set_={c: stmt.excluded[c] for c in BAR_COLUMNS},
                        )
                    else:
                        stmt = insert(self.table).on_conflict_do_nothing(index_elements=keys)
                    conn.execute(stmt, batch)
                after = self._count(conn, symbol, timeframe)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise self._connect_error(exc) from None
            raise DataError(f"cannot store bars for {symbol}: {_reason(exc)}") from None
        new = after - before
        self.last_write = WriteResult(new, len(rows) - new if replace else 0, len(rows))
        return new

    def delete(self, symbol: str, timeframe: str) -> int:
        """Remove one stored series; returns the number of rows deleted (0: nothing stored)."""
        check_symbol(symbol)
        if not self._ensure(create=False):
            return 0
        t = self.table
        query = sa.delete(t).where(t.c.symbol == symbol, t.c.timeframe == timeframe)
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(query).rowcount or 0)
        except (OperationalError, DBAPIError) as exc:
            raise self._connect_error(exc) from None

    def read(
        self,
        symbol: str,
        timeframe: str,
        start: str | pd.Timestamp | None = None,
        end: str | pd.Timestamp | None = None,
        max_price: float = DEFAULT_MAX_PRICE,
    ) -> pd.DataFrame:
        """Stored bars of one series (inclusive `start`/`end`), in the canonical bars schema.

        They pass the file loader's row rules (`max_price`: the price ceiling) or DataError
        naming the table, series and row: another tool may have written the table."""
        check_symbol(symbol)
        if not self._ensure(create=False):
            return empty_bars()
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
        bars = as_bars(frame.set_index(INDEX_NAME))
        self._check_finite(bars, symbol, timeframe)
        where = f"stored {symbol} {timeframe} in table {self.table.name} at {self.safe_url}"
        return check_bars(bars, source=where, max_price=max_price)

    def _check_finite(self, bars: pd.DataFrame, symbol: str, timeframe: str) -> None:
        """DataError naming the rows when stored bars hold NaN or inf (written by another tool
        or an older version: `write` refuses them), as an import of them would be refused."""
        bad = ~np.isfinite(bars[BAR_COLUMNS].to_numpy(dtype="float64"))
        rows = np.flatnonzero(bad.any(axis=1))
        if not rows.size:
            return
        cols = np.asarray(BAR_COLUMNS)
        shown = ", ".join(f"{bars.index[i]} ({', '.join(cols[bad[i]])})" for i in rows[:3])
        more = f" and {rows.size - 3} more" if rows.size > 3 else ""
        raise DataError(
            f"{rows.size} stored {symbol} {timeframe} bar(s) in table {self.table.name} at "
            f"{self.safe_url} hold NaN or infinite values: {shown}{more}; delete the series "
            f"(rl-trading data delete --symbol {symbol} --timeframe {timeframe}), import it again"
        )

    def info(self) -> list[SeriesInfo]:
        """Every stored series with its row count and first/last timestamp."""
        if not self._ensure(create=False):
            return []
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
