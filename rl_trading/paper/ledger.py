"""The paper-trading ledger: sessions, bars, decisions, orders, equity and events in SQL.

SQLAlchemy 2 Core on the bar store's database (SQLite in the workspace by default, PostgreSQL
with a URL). Everything one bar changes is written in ONE transaction (`Ledger.bar`), keyed
by (session, bar timestamp): a process killed at any moment leaves either the whole bar or
none of it, and the restarted session re-does exactly the missing bars, so no order is
doubled or lost. A session is owned by one process at a time (`acquire`): a second process
on a running session is refused.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError

from rl_trading.data.resample import FILLED_COLUMN
from rl_trading.data.schema import BAR_COLUMNS
from rl_trading.data.store import BarStore
from rl_trading.errors import DataError, RLTradingError

# a session whose owner has not written for this long (another host) counts as abandoned
HEARTBEAT_STALE_S = 120.0
# halting: a kill switch fired and its flat decision is recorded but not yet filled
HALTING = "halting"
STATES = ("new", "running", "stopped", HALTING, "halted", "finished")
KILL_SWITCH = "kill switch"  # the reason's prefix of a risk-limit halt


def halted_by_kill_switch(row: dict[str, Any]) -> bool:
    """The session halted on a risk limit (not on a stale feed or a stop)."""
    return row.get("state") == "halted" and str(row.get("reason") or "").startswith(KILL_SWITCH)


class SessionInUse(RLTradingError):
    """Another live process owns the paper session."""

    exit_code = 7


def _now() -> float:
    return time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sqlite_wal(dbapi_conn: Any, _record: Any) -> None:
    """SQLite in WAL mode with synchronous=NORMAL: a commit survives the process being killed
    at any moment (only an OS crash or power loss can drop the last commits, never half of
    one), readers (`paper status`) never block the writer, and a bar's commit costs no fsync."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Ledger:
    """The paper tables in one database (`url` None: the workspace's SQLite store)."""

    def __init__(self, url: str | None = None) -> None:
        store = BarStore(url)  # the same URL handling, credentials redaction and errors
        self.engine = store.engine
        self.safe_url = store.safe_url
        self._store = store
        self.dialect = store.dialect
        meta = sa.MetaData()
        ts = sa.DateTime(timezone=True)
        key = sa.String(128)
        self.sessions = sa.Table(
            "paper_sessions",
            meta,
            sa.Column("name", key, primary_key=True),
            sa.Column("model", sa.String(512), nullable=False),
            sa.Column("source", sa.String(32), nullable=False),
            sa.Column("symbols", sa.Text, nullable=False),
            sa.Column("timeframe", sa.String(16), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("reason", sa.Text, nullable=False, default=""),
            sa.Column("created", sa.Float, nullable=False),
            sa.Column("updated", sa.Float, nullable=False),
            sa.Column("last_bar", ts),
            sa.Column("bars_processed", sa.Integer, nullable=False, default=0),
            sa.Column("equity", sa.Double),
            sa.Column("cash", sa.Double),
            sa.Column("peak", sa.Double),
            sa.Column("day", sa.String(16)),
            sa.Column("day_start_equity", sa.Double),
            sa.Column("positions", sa.Text, nullable=False, default="{}"),
            sa.Column("owner_pid", sa.Integer),
            sa.Column("owner_host", sa.String(255)),
            sa.Column("heartbeat", sa.Float),
            sa.Column("stop_request", sa.String(16)),
        )
        self.bars = sa.Table(
            "paper_bars",
            meta,
            sa.Column("session", key, primary_key=True),
            sa.Column("ts", ts, primary_key=True),
            sa.Column("symbol", sa.String(64), primary_key=True),
            *(sa.Column(c, sa.Double, nullable=False) for c in BAR_COLUMNS),
            # align's forward-filled bar (nothing fills on it); NULL in older rows: real
            sa.Column(FILLED_COLUMN, sa.Boolean, nullable=True),
        )
        self.decisions = sa.Table(
            "paper_decisions",
            meta,
            sa.Column("session", key, primary_key=True),
            sa.Column("ts", ts, primary_key=True),
            sa.Column("actions", sa.Text, nullable=False),
        )
        self.orders = sa.Table(
            "paper_orders",
            meta,
            sa.Column("session", key, primary_key=True),
            sa.Column("fill_ts", ts, primary_key=True),
            sa.Column("symbol", sa.String(64), primary_key=True),
            sa.Column("decision_ts", ts, nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("units_before", sa.Double, nullable=False),
            sa.Column("units_after", sa.Double, nullable=False),
            sa.Column("price", sa.Double, nullable=False),
            sa.Column("target", sa.Double, nullable=False),
        )
        self.equity = sa.Table(
            "paper_equity",
            meta,
            sa.Column("session", key, primary_key=True),
            sa.Column("ts", ts, primary_key=True),
            sa.Column("equity", sa.Double, nullable=False),
            sa.Column("cash", sa.Double, nullable=False),
            sa.Column("drawdown", sa.Double, nullable=False),
            sa.Column("exposures", sa.Text, nullable=False),
            sa.Column("latency_ms", sa.Double, nullable=False),
            # notional bought + sold at the bar (NULL in rows written before it was kept)
            sa.Column("traded", sa.Double, nullable=True),
        )
        self.events = sa.Table(
            "paper_events",
            meta,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
            sa.Column("session", key, nullable=False),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("bar", ts),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("message", sa.Text, nullable=False),
        )
        self._meta = meta
        self._last_ts: tuple[Any, Any] | None = None
        # statements built once: a bar's writes bind parameters to them (the per-bar cost of
        # building and caching a statement is gone); SET columns come from the parameters
        self._update_session = self.sessions.update().where(
            self.sessions.c.name == sa.bindparam("_name")
        )
        self._stop_request = sa.select(self.sessions.c.stop_request).where(
            self.sessions.c.name == sa.bindparam("_name")
        )
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_wal)
        try:
            meta.create_all(self.engine, checkfirst=True)
            self._add_new_columns()
        except (OperationalError, DBAPIError) as exc:
            raise self._store._connect_error(exc) from None

    # ------------------------------------------------------------------------------ helpers
    def _add_new_columns(self) -> None:
        """Columns added to the paper tables since a ledger was created (nullable, so its
        rows stay as they were): ALTER TABLE ... ADD COLUMN, once."""
        inspector = sa.inspect(self.engine)
        for table in (self.equity, self.bars):
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for col in table.columns:
                if col.name not in have and col.nullable:
                    kind = col.type.compile(dialect=self.engine.dialect)
                    with self.engine.begin() as conn:
                        conn.execute(
                            sa.text(f"ALTER TABLE {table.name} ADD COLUMN {col.name} {kind}")
                        )

    def _ts(self, ts: pd.Timestamp) -> Any:
        """A timestamp as the store keeps it (naive UTC in SQLite, aware elsewhere); the last
        conversion is kept (a bar's writes convert its timestamp several times)."""
        last = self._last_ts
        if last is not None and last[0] is ts:
            return last[1]
        value = self._convert_ts(ts)
        self._last_ts = (ts, value)
        return value

    def _convert_ts(self, ts: pd.Timestamp) -> Any:
        ts = pd.Timestamp(ts)
        utc = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
        return (utc.tz_localize(None) if self.dialect == "sqlite" else utc).to_pydatetime()

    @staticmethod
    def _utc(value: Any) -> pd.Timestamp | None:
        if value is None:
            return None
        ts = pd.Timestamp(value)
        return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """One transaction (committed on exit, rolled back on an exception)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise self._store._connect_error(exc) from None

    # ----------------------------------------------------------------------------- sessions
    def session(self, name: str) -> dict[str, Any] | None:
        """The session row as a dict (None when unknown)."""
        with self.begin() as conn:
            row = conn.execute(sa.select(self.sessions).where(self.sessions.c.name == name))
            found = row.mappings().first()
        return dict(found) if found else None

    def list_sessions(self) -> list[dict[str, Any]]:
        """Every session row, oldest first."""
        with self.begin() as conn:
            rows = conn.execute(sa.select(self.sessions).order_by(self.sessions.c.created))
            return [dict(r) for r in rows.mappings()]

    def owner_alive(self, row: dict[str, Any]) -> bool:
        """Whether the process recorded as the session's owner still runs."""
        pid, host = row.get("owner_pid"), row.get("owner_host")
        if not pid:
            return False
        if host == socket.gethostname():
            return _pid_alive(int(pid)) and int(pid) != os.getpid()
        return (_now() - float(row.get("heartbeat") or 0.0)) < HEARTBEAT_STALE_S

    def acquire(
        self,
        name: str,
        model: str,
        source: str,
        symbols: list[str],
        timeframe: str,
        clear_halt: bool = False,
    ) -> dict[str, Any]:
        """Create or take over the session for this process; SessionInUse if another live
        process owns it, DataError if it exists for another model or symbols, or if a kill
        switch halted it (unless `clear_halt`: the user resumes it on purpose). A session
        whose kill switch fired before its flat fill keeps that state (`halting`): the run
        fills the flat decision, then halts again."""
        tbl = self.sessions
        with self.begin() as conn:
            row = conn.execute(sa.select(tbl).where(tbl.c.name == name)).mappings().first()
            now = _now()
            mine = {"owner_pid": os.getpid(), "owner_host": socket.gethostname()}
            if row is None:
                conn.execute(
                    tbl.insert().values(
                        name=name,
                        model=model,
                        source=source,
                        symbols=json.dumps(symbols),
                        timeframe=timeframe,
                        state="running",
                        reason="",
                        created=now,
                        updated=now,
                        bars_processed=0,
                        positions="{}",
                        heartbeat=now,
                        **mine,
                    )  # fmt: skip
                )
                return self.session_in(conn, name)
            row = dict(row)
            if self.owner_alive(row):
                raise SessionInUse(
                    f"paper session '{name}' is in use by process {row['owner_pid']} on "
                    f"{row['owner_host']} (stop it with `rl-trading paper stop --session {name}`)"
                )
            if row["model"] != model or json.loads(row["symbols"]) != symbols:
                raise DataError(
                    f"paper session '{name}' trades {row['model']} on {json.loads(row['symbols'])}"
                    f", not {model} on {symbols}: pick another --session"
                )
            if halted_by_kill_switch(row) and not clear_halt:
                raise DataError(
                    f"paper session '{name}' was halted by its {row['reason']}: pass "
                    "--clear-halt to trade it again"
                )
            state = {"state": HALTING, "reason": row["reason"]} if row["state"] == HALTING else {
                "state": "running", "reason": ""}  # fmt: skip
            # compare-and-set on the previous owner: of two processes racing, one wins
            free = tbl.c.owner_pid.is_(None) | (tbl.c.owner_pid == row["owner_pid"])
            res = conn.execute(
                tbl.update()
                .where(tbl.c.name == name, free)
                .values(**state, updated=now, heartbeat=now, stop_request=None, **mine)
            )  # fmt: skip
            if res.rowcount != 1:
                raise SessionInUse(f"paper session '{name}' was taken by another process")
            return self.session_in(conn, name)

    def session_in(self, conn: sa.Connection, name: str) -> dict[str, Any]:
        tbl = self.sessions
        return dict(conn.execute(sa.select(tbl).where(tbl.c.name == name)).mappings().one())

    def release(self, name: str, state: str, reason: str = "") -> None:
        """Give the session up (its owner exits) with its final state. A recorded kill switch
        (`halting`) stays unless the session halted: an error before the flat fill must not
        turn it back into a session that trades on."""
        tbl = self.sessions
        with self.begin() as conn:
            row = conn.execute(sa.select(tbl.c.state, tbl.c.reason).where(tbl.c.name == name))
            current = row.first()
            if current is not None and current.state == HALTING and state != "halted":
                state, reason = HALTING, current.reason
            conn.execute(
                tbl.update()
                .where(tbl.c.name == name, tbl.c.owner_pid == os.getpid())
                .values(state=state, reason=reason, owner_pid=None, owner_host=None, updated=_now())
            )

    def heartbeat(self, name: str) -> str | None:
        """Touch the owner's heartbeat; returns a pending stop request ('stop' / 'flatten')."""
        with self.begin() as conn:
            conn.execute(self._update_session, {"_name": name, "heartbeat": _now()})
            return conn.execute(self._stop_request, {"_name": name}).scalar_one_or_none()

    def request_stop(self, name: str, flatten: bool) -> dict[str, Any]:
        """Ask a running session to stop (its loop does it at the next poll); a session with
        no live owner is marked stopped at once. DataError for an unknown session."""
        row = self.session(name)
        if row is None:
            raise DataError(f"unknown paper session '{name}' (see `rl-trading paper list`)")
        tbl = self.sessions
        with self.begin() as conn:
            if self.owner_alive(row):
                value = "flatten" if flatten else "stop"
                conn.execute(tbl.update().where(tbl.c.name == name).values(stop_request=value))
            elif flatten:
                raise DataError(
                    f"paper session '{name}' is not running, so there is no next open to "
                    "flatten at: run it again and stop it with --flatten (nothing changed)"
                )
            elif row["state"] == HALTING or halted_by_kill_switch(row):
                pass  # a kill switch's halt stays: only `paper run --clear-halt` lifts it
            else:
                conn.execute(
                    tbl.update()
                    .where(tbl.c.name == name)
                    .values(state="stopped", reason="stopped by `paper stop` (not running)",
                            updated=_now())
                )  # fmt: skip
        return self.session(name) or {}

    # --------------------------------------------------------------------------------- bars
    def bar_rows(self, name: str) -> dict[str, pd.DataFrame]:
        """The bars the session processed, per symbol (the history a restart rebuilds and the
        report backtests), with align's `filled` flag when a bar of the session had it."""
        t = self.bars
        with self.begin() as conn:
            rows = conn.execute(
                sa.select(t.c.symbol, t.c.ts, *(t.c[c] for c in BAR_COLUMNS), t.c[FILLED_COLUMN])
                .where(t.c.session == name)
                .order_by(t.c.ts)
            ).all()
        frame = pd.DataFrame(rows, columns=["symbol", "timestamp", *BAR_COLUMNS, FILLED_COLUMN])
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
        filled = frame[FILLED_COLUMN].fillna(False).astype(bool)
        if filled.any():
            frame[FILLED_COLUMN] = filled
        else:
            frame = frame.drop(columns=FILLED_COLUMN)
        groups = {
            str(sym): g.drop(columns="symbol").set_index("timestamp")
            for sym, g in frame.groupby("symbol", sort=False)
        }
        row = self.session(name)
        order = json.loads(row["symbols"]) if row else sorted(groups)
        # the session's symbol order: the env's agents (and the meta's weights) follow it
        return {s: groups[s] for s in order if s in groups}

    def decisions_of(self, name: str) -> dict[pd.Timestamp, dict[str, list[float]]]:
        """Every stored decision (agent actions) by bar timestamp."""
        t = self.decisions
        with self.begin() as conn:
            rows = conn.execute(sa.select(t.c.ts, t.c.actions).where(t.c.session == name)).all()
        return {self._utc(ts): json.loads(a) for ts, a in rows}

    def orders_of(self, name: str) -> list[dict[str, Any]]:
        """Every order (fill) of the session, in time order."""
        t = self.orders
        with self.begin() as conn:
            rows = conn.execute(
                sa.select(t).where(t.c.session == name).order_by(t.c.fill_ts, t.c.symbol)
            ).mappings()
            out = []
            for r in rows:
                d = dict(r)
                d.pop("session")
                d["fill_ts"] = str(self._utc(d["fill_ts"]))
                d["decision_ts"] = str(self._utc(d["decision_ts"]))
                out.append(d)
        return out

    def equity_of(self, name: str) -> pd.DataFrame:
        """The session's equity rows (equity, cash, drawdown, exposures, latency_ms, traded)."""
        t = self.equity
        with self.begin() as conn:
            rows = conn.execute(sa.select(t).where(t.c.session == name).order_by(t.c.ts)).mappings()
            frame = pd.DataFrame([dict(r) for r in rows])
        if frame.empty:
            return frame
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        return frame.drop(columns="session").set_index("ts")

    def events_of(self, name: str) -> list[dict[str, Any]]:
        t = self.events
        with self.begin() as conn:
            rows = conn.execute(
                sa.select(t.c.at, t.c.bar, t.c.kind, t.c.message)
                .where(t.c.session == name)
                .order_by(t.c.id)
            ).mappings()
            return [dict(r) for r in rows]

    def event(self, conn: sa.Connection | None, name: str, kind: str, message: str,
              bar: pd.Timestamp | None = None) -> None:  # fmt: skip
        """Log an event (inside `conn`'s transaction, or its own)."""
        values = {
            "session": name, "at": _now(), "kind": kind, "message": message,
            "bar": self._ts(bar) if bar is not None else None,
        }  # fmt: skip
        if conn is None:
            with self.begin() as own:
                own.execute(self.events.insert(), values)
        else:
            conn.execute(self.events.insert(), values)

    def write_bar(self, conn: sa.Connection, name: str, ts: pd.Timestamp,
                  bars: dict[str, dict[str, Any]]) -> None:  # fmt: skip
        """The bar's rows of every symbol (first part of a bar's transaction)."""
        stamp = self._ts(ts)
        conn.execute(
            self.bars.insert(),
            [
                {"session": name, "ts": stamp, "symbol": sym,
                 **{c: float(row[c]) for c in BAR_COLUMNS},
                 FILLED_COLUMN: bool(row.get(FILLED_COLUMN, False))}
                for sym, row in bars.items()
            ],
        )  # fmt: skip

    def write_decision(self, conn: sa.Connection, name: str, ts: pd.Timestamp,
                       actions: dict[str, list[float]]) -> None:  # fmt: skip
        conn.execute(
            self.decisions.insert(),
            {"session": name, "ts": self._ts(ts), "actions": json.dumps(actions)},
        )

    def replace_decision(
        self, name: str, ts: pd.Timestamp, actions: dict[str, list[float]]
    ) -> None:
        """Overwrite a bar's decision not filled yet (a flatten request between bars)."""
        t = self.decisions
        with self.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.session == name, t.c.ts == self._ts(ts))
                .values(actions=json.dumps(actions))
            )

    def write_orders(self, conn: sa.Connection, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(
                self.orders.insert(),
                [
                    {**r, "session": name, "fill_ts": self._ts(r["fill_ts"]),
                     "decision_ts": self._ts(r["decision_ts"])}
                    for r in rows
                ],
            )  # fmt: skip

    def write_equity(self, conn: sa.Connection, name: str, ts: pd.Timestamp, equity: float,
                     cash: float, drawdown: float, exposures: list[float],
                     latency_ms: float, traded: float | None = None) -> None:  # fmt: skip
        conn.execute(
            self.equity.insert(),
            {"session": name, "ts": self._ts(ts), "equity": equity, "cash": cash,
             "drawdown": drawdown, "exposures": json.dumps(exposures),
             "latency_ms": latency_ms, "traded": traded},
        )  # fmt: skip

    def update_session(self, conn: sa.Connection, name: str, **values: Any) -> None:
        if "last_bar" in values and values["last_bar"] is not None:
            values["last_bar"] = self._ts(values["last_bar"])
        values["updated"] = values["heartbeat"] = _now()
        conn.execute(self._update_session, {"_name": name, **values})

    def status(self, name: str) -> dict[str, Any]:
        """The session as one JSON-able dict: equity, cash, positions, orders, bars, state."""
        row = self.session(name)
        if row is None:
            raise DataError(f"unknown paper session '{name}' (see `rl-trading paper list`)")
        running = self.owner_alive(row) or (
            row.get("owner_pid") == os.getpid() and row["state"] == "running"
        )
        state = row["state"] if running or row["state"] != "running" else "interrupted"
        return {
            "session": name,
            "model": row["model"],
            "source": row["source"],
            "symbols": json.loads(row["symbols"]),
            "timeframe": row["timeframe"],
            "state": state,
            "reason": row["reason"] or "",
            "equity": row["equity"],
            "cash": row["cash"],
            "positions": json.loads(row["positions"] or "{}"),
            "bars_processed": int(row["bars_processed"] or 0),
            "last_bar": str(self._utc(row["last_bar"])) if row["last_bar"] is not None else None,
            "orders": self.orders_of(name),
            "owner_pid": row["owner_pid"],
        }
