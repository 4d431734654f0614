"""The paper-trading loop: bars arrive one at a time, the registered policy acts, the
simulated broker fills with the env's own rules, the ledger records each bar atomically.

Per new whole bar t (feeds.complete_bars), in order:

1. the bar joins the broker's env (features causal, the model's stored scalers and window;
   on a live feed streamed in O(1) into the env's next placeholder row, see
   `SimulatedBroker`);
2. the decision of bar t-1 fills at t's open and is marked at t's close (envs.engine via the
   env's step), unless t is the first decision bar (the book opens flat there);
3. the policy acts on the observation of bar t, built by the env exactly as in training
   (evaluation.backtest.hierarchy_actions, the backtest's own acting code); the decision goes
   to the broker, to fill at bar t+1;
4. one transaction writes the bar, its fills, its decision, its equity and the session row.

An injected broker (`broker=`: any `Broker`) gets each decision too; the simulated broker
stays the shadow book that builds the observations and fills by the env's rules.

A restart reads the ledger, feeds the recorded bars through the same path and re-applies
the recorded decisions (no policy call, no write, nothing to an injected broker), checks it
lands on the recorded equity, and goes on with the first bar after the last recorded one: a
bar is in the ledger whole or not at all, so nothing is doubled or lost.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from envs import HierarchicalTradingEnv
from envs.common import prepare_instrument
from envs.hierarchical_env import META
from rl_trading.data.features import FEATURE_COLUMNS, WARMUP_BARS
from rl_trading.errors import ConfigError, DataError, RLTradingError
from rl_trading.evaluation.backtest import hierarchy_actions, scalers_from
from rl_trading.evaluation.selection import select_bars
from rl_trading.paper.broker import (
    FLATTEN,
    Broker,
    OrderBatch,
    SimulatedBroker,
    first_decision_bar,
    make_broker,
)
from rl_trading.paper.drift import DriftMonitor, action_matrix
from rl_trading.paper.feeds import (
    Feed,
    FileFeed,
    ReplayFeed,
    SqlFeed,
    check_timeframe,
    complete_bars,
    is_gap,
)
from rl_trading.paper.ledger import HALTING, KILL_SWITCH, Ledger
from rl_trading.paper.model import ResolvedModel, acting_bundle
from rl_trading.supervised.signals import observed_market

log = logging.getLogger("rl_trading.paper")


class StaleFeed(RLTradingError):
    """The feed produced no new bar within the limit: trading halted."""

    exit_code = 8


class LedgerMismatch(RLTradingError):
    """The recorded session does not replay to its recorded equity (ledger edited?)."""

    exit_code = 9


@dataclass
class PaperOptions:
    """How one `paper run` behaves (the CLI's flags; limits default to cfg.paper)."""

    session: str
    poll_s: float | None = None
    stale_after_s: float | None = None
    max_daily_loss: float | None = None
    max_drawdown: float | None = None
    max_bars: int | None = None  # stop after processing this many new bars (tests, demos)
    prebuild: bool = True  # a replay builds its env once (identical rows, tested)
    clear_halt: bool = False  # trade a session its kill switch halted again (on purpose)


@dataclass
class SessionResult:
    """What a run did: the final status, bars processed in this run, per-bar latencies."""

    status: dict[str, Any]
    new_bars: int
    latencies_ms: list[float] = field(default_factory=list)
    rebuilds: int = 0


def _to_lists(actions: dict[str, Any]) -> dict[str, list[float]]:
    """Actions as JSON-exact float lists (what the ledger stores and the env is given)."""
    return {
        a: [float(x) for x in np.asarray(v, dtype=np.float64).reshape(-1)]
        for a, v in actions.items()
    }  # noqa: E501


class PaperSession:
    """One paper session: a resolved model, a feed, the broker and the ledger."""

    def __init__(
        self,
        model: ResolvedModel,
        feed: Feed,
        ledger: Ledger,
        options: PaperOptions,
        on_bar: Callable[[dict[str, Any]], None] | None = None,
        broker: Broker | Callable[[SimulatedBroker], Broker] | None = None,
    ) -> None:
        self.model, self.feed, self.ledger, self.opts = model, feed, ledger, options
        pc = model.cfg.paper
        self.poll_s = options.poll_s if options.poll_s is not None else pc.poll_s
        self.stale_after_s = (
            options.stale_after_s if options.stale_after_s is not None else pc.stale_after_s
        )
        self.max_daily_loss = options.max_daily_loss or pc.max_daily_loss
        self.max_drawdown = options.max_drawdown or pc.max_drawdown
        self.on_bar = on_bar
        self.symbols = model.symbols
        self.name = options.session
        mode = "joint" if META in model.bundle.modules else "specialists"
        scalers = scalers_from(model.bundle.preprocessing)
        if not scalers:
            raise DataError(
                f"model '{model.name}' has no stored feature scalers: paper trading needs the "
                "training scalers (register it with `rl-trading models register`)"
            )
        scalers = {s: scalers.get(s) or scalers.get("*") for s in self.symbols}
        # the simulated book always runs: it builds the observations and fills by the env's
        # rules; an injected broker gets the same decisions (docs/paper_trading.md)
        self.sim = SimulatedBroker(model.cfg, mode, scalers, self.symbols)
        self.broker: Broker = self.sim if broker is None else make_broker(broker, self.sim)
        self.policy = acting_bundle(model.bundle)
        self.stamps: list[pd.Timestamp] = []
        self.state = "running"
        self.peak = self.day_start = float(model.cfg.env.initial_capital)
        self.day: str | None = None
        self.halt_after_fill: str | None = None  # reason: flatten, then halt / stop
        # decisions for an injected broker, sent once their bar has committed
        self._outbox: list[OrderBatch] = []
        # drift: live samples since the last check, and the monitors (built at the first)
        self._live_features: list[np.ndarray] = []  # (n, features) seen live, per bar
        self._live_actions: list[dict[str, list[float]]] = []  # the policy's decisions
        self._feature_drift: DriftMonitor | None = None
        self._action_drift: DriftMonitor | None = None
        self._drift_off: set[str] = set()
        self._decisions = 0

    # ------------------------------------------------------------------------ validation
    def check_feed(self) -> None:
        """One-line errors before anything trades: missing instruments, wrong timeframe."""
        check = getattr(self.feed, "check", None)
        if check is not None:
            check()
        frames = (
            self.feed.poll(None) if not isinstance(self.feed, ReplayFeed) else (self.feed.history)
        )
        missing = [s for s in self.symbols if s not in frames or frames[s].empty]
        if missing and not isinstance(self.feed, ReplayFeed):
            raise DataError(
                f"the {self.feed.name} feed has no bars for {missing}: the model trades "
                f"{self.symbols}"
            )
        check_timeframe({s: f for s, f in frames.items() if s in self.symbols},
                        self.model.timeframe, f"the {self.feed.name} feed")  # fmt: skip

    # -------------------------------------------------------------------------- history
    @property
    def _prebuilt(self) -> bool:
        return isinstance(self.feed, ReplayFeed) and self.opts.prebuild

    def _grow(self) -> None:
        if self._prebuilt:
            self.sim.ensure(self.feed.history, full=True)
        else:
            self.sim.ensure_live()

    def _act(self, obs: dict[str, np.ndarray], ts: pd.Timestamp) -> OrderBatch:
        if self.halt_after_fill is not None:
            actions = self.sim.flat_actions()
        else:
            raw = hierarchy_actions(self.policy, self.sim.env.possible_agents, obs)
            actions = _to_lists(raw)
        return OrderBatch(ts, actions)

    def _advance(
        self,
        ts: pd.Timestamp,
        row: dict[str, dict[str, Any]],
        decision: dict[str, list[float]] | None,
    ) -> tuple[list, OrderBatch | None]:
        """Steps 1-3 of the module docstring for one bar; `decision` given: re-apply it
        (restart) instead of asking the policy."""
        k = len(self.stamps)
        self.stamps.append(ts)
        if not self._prebuilt:
            self.sim.add_bar(ts, row)
        first = self.sim.first_bar
        if k < first:
            return [], None
        self._grow()
        if k != self.sim.env.first_bar and first != self.sim.env.first_bar:
            raise DataError("internal: first decision bar disagrees with the env")
        if k == first:
            obs, fills = self.sim.start(), []
        else:
            obs, fills = self.sim.execute(ts)
        if not self.sim.env.agents:  # the end of a whole replay: nothing left to fill
            return fills, None
        if decision is not None:  # a restart: the broker had this decision already
            batch = OrderBatch(ts, decision)
            self.sim.submit(batch)
        else:
            batch = self._act(obs, ts)
            self._submit(batch)
        self._observe(obs, batch)
        return fills, batch

    def _observe(self, obs: dict[str, np.ndarray], batch: OrderBatch) -> None:
        """Keep the bar's scaled features (the last row of each specialist's window, as the
        policy saw them) and the policy's decision (not a flat one) for the drift checks."""
        layout = self.sim.env.obs_layout()
        lo = (layout["window_size"] - 1) * layout["n_features"]
        n_feat = len(FEATURE_COLUMNS)
        self._live_features.append(
            np.stack([obs[a][lo : lo + n_feat] for a in self.sim.env.specialists])
        )
        if FLATTEN not in batch.actions:
            self._live_actions.append(batch.actions)

    def _submit(self, batch: OrderBatch) -> None:
        """The decision to the simulated book now and, when one is injected, to the broker
        once it is recorded (:meth:`_send`)."""
        self.sim.submit(batch)
        if self.broker is not self.sim:
            self._outbox.append(batch)

    def _send(self) -> None:
        """The recorded decisions to the injected broker: a decision reaches it only after
        its bar committed, so a process that dies in between sends it never rather than
        twice (a restart re-applies recorded decisions to the shadow only)."""
        while self._outbox:
            self.broker.submit(self._outbox.pop(0))

    # --------------------------------------------------------------------------- restart
    def restore(self) -> int:
        """Replay the ledger's bars and decisions into the broker; returns bars restored.
        LedgerMismatch when that does not reproduce the recorded equity. The session's peak,
        day and day-start equity come back from its row; a kill switch that fired before the
        process died is armed again (its flat decision is recorded: it fills, then the session
        halts)."""
        session = self.ledger.session(self.name) or {}
        bars = self.ledger.bar_rows(self.name)
        if not bars:
            return 0
        decisions = self.ledger.decisions_of(self.name)
        stamps = next(iter(bars.values())).index
        if isinstance(self.feed, ReplayFeed) and self.opts.prebuild:
            replay = next(iter(self.feed.history.values())).index
            if len(stamps) > len(replay) or not replay[: len(stamps)].equals(stamps):
                raise DataError(
                    f"paper session '{self.name}' recorded bars this replay does not have "
                    f"({stamps[0]} .. {stamps[-1]}): replay the same split or dates, or use "
                    "another --session"
                )
        records = {s: bars[s].loc[stamps].to_dict("records") for s in self.symbols}
        for i, ts in enumerate(stamps):
            row = {s: records[s][i] for s in self.symbols}
            _, batch = self._advance(ts, row, decisions.get(ts))
            if batch is not None and ts not in decisions:
                raise LedgerMismatch(f"paper session '{self.name}': no decision recorded at {ts}")
        recorded = session.get("equity")
        if recorded is not None and not math.isclose(self.sim.equity(), recorded, rel_tol=1e-9):
            raise LedgerMismatch(
                f"paper session '{self.name}': the recorded bars replay to equity "
                f"{self.sim.equity():.6f}, the ledger says {recorded:.6f}"
            )
        self.peak = float(session.get("peak") or self.peak)
        self.day = session.get("day")
        self.day_start = float(session.get("day_start_equity") or self.day_start)
        self._last_equity = self.sim.equity()
        if session.get("state") == HALTING:  # the kill switch fired; its flat fill is pending
            self.halt_after_fill = str(session.get("reason") or KILL_SWITCH)
            self.final_state = "halted"
        return len(stamps)

    # ----------------------------------------------------------------------------- a bar
    def process(self, ts: pd.Timestamp, row: dict[str, dict[str, Any]]) -> float:
        """One new bar, committed as one transaction; returns its latency in ms (features,
        fills, inference and the commit; the ledger's equity row has it without the commit)."""
        t0 = time.perf_counter()
        prev = self.stamps[-1] if self.stamps else None
        fills, batch = self._advance(ts, row, None)
        k = len(self.stamps) - 1
        started = k >= self.sim.first_bar
        equity = self.sim.equity()
        events: list[tuple[str, str]] = []
        if prev is not None and is_gap(prev, ts, self.model.timeframe):
            events.append(("gap", f"gap: {prev} -> {ts}; processed as the next bar"))
        if started:
            self.peak = max(self.peak, equity)
            day = str(ts.date())
            if day != self.day:
                self.day, self.day_start = day, equity if self.day is None else self._last_equity
            events += self._risk_checks(equity, ts)
            self._decisions += 1
            if self._decisions % self.model.cfg.paper.drift_every == 0:
                events += self._drift_check()
        self._last_equity = equity
        if self.halt_after_fill is not None and batch is not None:
            batch = self.sim.pending  # the flat decision that replaced the policy's
        latency = (time.perf_counter() - t0) * 1e3
        with self.ledger.begin() as conn:
            lg = self.ledger
            lg.write_bar(conn, self.name, ts, row)
            lg.write_orders(conn, self.name, fills)
            if batch is not None:
                lg.write_decision(conn, self.name, ts, batch.actions)
            drawdown = 1.0 - equity / self.peak if self.peak > 0 else 0.0
            if started:
                lg.write_equity(conn, self.name, ts, equity, self.sim.cash(), drawdown,
                                self.sim.exposures(), latency, self.sim.traded())  # fmt: skip
            for kind, message in events:
                lg.event(conn, self.name, kind, message, ts)
            # a kill switch is kept with the bar it fired on: a restart fills its flat
            # decision and halts, whenever the process dies
            halting = (
                {"state": HALTING, "reason": self.halt_after_fill}
                if any(kind == "kill_switch" for kind, _ in events)
                else {}
            )
            lg.update_session(
                conn, self.name, last_bar=ts, bars_processed=len(self.stamps), equity=equity,
                cash=self.broker.cash(), peak=self.peak, day=self.day,
                day_start_equity=self.day_start, positions=_json(self.broker.positions()),
                **halting,
            )  # fmt: skip
        latency = (time.perf_counter() - t0) * 1e3  # + the ledger commit
        self._send()
        for _kind, message in events:
            log.warning("%s: %s", self.name, message)
        if self.on_bar is not None:
            self.on_bar({"ts": ts, "equity": equity, "fills": fills, "latency_ms": latency})
        return latency

    _last_equity = 0.0

    def _risk_checks(self, equity: float, ts: pd.Timestamp) -> list[tuple[str, str]]:
        """Kill switch: past the daily loss or drawdown limit the book goes flat at the next
        open and the session halts."""
        if self.halt_after_fill is not None:
            return []
        reason = None
        loss = 1.0 - equity / self.day_start if self.day_start > 0 else 0.0
        dd = 1.0 - equity / self.peak if self.peak > 0 else 0.0
        if self.max_daily_loss is not None and loss > self.max_daily_loss:
            reason = f"{KILL_SWITCH}: daily loss {loss:.2%} > {self.max_daily_loss:.2%}"
        elif self.max_drawdown is not None and dd > self.max_drawdown:
            reason = f"{KILL_SWITCH}: drawdown {dd:.2%} > {self.max_drawdown:.2%}"
        if reason is None:
            return []
        self._flatten(reason, "halted")
        return [("kill_switch", f"{reason}; flattening at the next open, then halting")]

    def _drift_check(self) -> list[tuple[str, str]]:
        """PSI / KS of the scaled features seen live against the training split's (pooled
        over instruments), and of the policy's live actions against its actions on the
        validation split (per agent and component): an event naming what passes
        `paper.drift_psi` (`drift` for features, `action_drift` for actions). The
        references are read at the first check; a check costs the same however long the
        session (`DriftMonitor`)."""
        limit = self.model.cfg.paper.drift_psi
        events: list[tuple[str, str]] = []
        if self._feature_drift is None and "features" not in self._drift_off:
            try:
                ref = self._training_features()
                self._feature_drift = DriftMonitor(ref, list(FEATURE_COLUMNS))
            except RLTradingError as exc:
                self._drift_off.add("features")
                events.append(("drift", f"drift check off: no training bars ({exc})"))
        if self._feature_drift is not None:
            for rows in self._live_features:
                self._feature_drift.add(rows)
            found = self._feature_drift.drifted(limit)
            if found:
                worst = ", ".join(f"{f} (PSI {p:.2f}, KS {k:.2f})" for f, p, k in found[:4])
                events.append(("drift", f"live features drift from training: {worst}"))
        self._live_features = []
        agents = self.sim.env.possible_agents
        if self._action_drift is None and "actions" not in self._drift_off:
            try:
                names, ref = action_matrix(self._validation_actions(), agents)
                self._action_drift = DriftMonitor(ref, names)
            except RLTradingError as exc:
                self._drift_off.add("actions")
                events.append(("drift", f"action drift check off: no validation bars ({exc})"))
        if self._action_drift is not None and self._live_actions:
            self._action_drift.add(action_matrix(self._live_actions, agents)[1])
            found = self._action_drift.drifted(limit)
            if found:
                worst = ", ".join(f"{f} (PSI {p:.2f}, KS {k:.2f})" for f, p, k in found[:4])
                events.append(("action_drift", f"live actions drift from validation: {worst}"))
        self._live_actions = []
        return events

    def _training_features(self) -> np.ndarray:
        """The training split's scaled features (every instrument, after the warm-up)."""
        train, _, _ = select_bars(self.model.cfg, None, "train")
        rows = [
            prepare_instrument(train[s], self.sim.scalers[s], s).features[
                WARMUP_BARS:, : len(FEATURE_COLUMNS)
            ]
            for s in self.symbols
        ]
        return np.concatenate(rows, axis=0)

    def _validation_actions(self) -> list[dict[str, list[float]]]:
        """The registered policy's decisions over the validation split, acted as its
        backtest acts."""
        cfg = self.model.cfg
        val, _, _ = select_bars(cfg, None, "val")
        env = HierarchicalTradingEnv(
            cfg, bars={s: val[s] for s in self.symbols}, mode=self.sim.mode, eval_mode=True,
            scalers=self.sim.scalers,
        )  # fmt: skip
        reference = acting_bundle(self.model.bundle)
        obs, _ = env.reset(seed=cfg.seed)
        decisions = []
        while env.agents:
            actions = _to_lists(hierarchy_actions(reference, env.possible_agents, obs))
            decisions.append(actions)
            obs, *_ = env.step(actions)
        return decisions

    def _flat(self) -> bool:
        """Whether the shadow book holds no position (the broker's fills follow it)."""
        return all(u == 0.0 for u in self.sim.positions().values())

    def _flatten(self, reason: str, final: str) -> None:
        """Replace the pending decision by a flat one; halt after it fills."""
        self.halt_after_fill = reason
        self.final_state = final
        if self.sim.env is not None and self.sim.env.agents:
            if self.broker is not self.sim:
                self._outbox.clear()  # the policy's decision of this bar is never sent
                self.broker.cancel()
            self._submit(OrderBatch(self.stamps[-1], self.sim.flat_actions()))

    # ------------------------------------------------------------------------------ run
    def run(self) -> SessionResult:
        """Acquire the session, restore it, follow the feed until it ends, a limit or a stop
        request; the session is released with its final state whatever happens."""
        self.check_feed()
        lg = self.ledger
        lg.acquire(self.name, self.model.name, self.feed.name, self.symbols, self.model.timeframe,
                   clear_halt=self.opts.clear_halt)  # fmt: skip
        state, reason = "stopped", ""
        latencies: list[float] = []
        new = 0
        try:
            self.restore()
            last_new = time.monotonic()
            # -1: no flatten pending; 0: the flat decision fills at the next bar (a kill
            # switch armed again by restore)
            flattening_bars = 0 if self.halt_after_fill is not None else -1
            while True:
                after = self.stamps[-1] if self.stamps else None
                frames = self.feed.poll(after)
                bars, dropped = complete_bars(frames, self.symbols)
                for ts in dropped:
                    why = f"bar {ts} lacks some symbols while a later bar is whole: dropped"
                    lg.event(None, self.name, "incomplete", why, ts)
                for ts, row in bars:
                    latencies.append(self.process(ts, row))
                    new += 1
                    last_new = time.monotonic()
                    if self.halt_after_fill is not None:
                        flattening_bars += 1
                        # halted once the book is flat: a flat order that met a forward-filled
                        # bar has not filled, and is decided again (_act) until it does
                        if flattening_bars >= 1 and self._flat():
                            state, reason = self.final_state, self.halt_after_fill
                            return self._result(state, reason, new, latencies)
                    if self.opts.max_bars is not None and new >= self.opts.max_bars:
                        return self._result("stopped", "max bars reached", new, latencies)
                if self.feed.exhausted and not bars:
                    return self._result("finished", "end of the feed", new, latencies)
                request = lg.heartbeat(self.name)
                if request == "stop" and self.halt_after_fill is None:
                    return self._result("stopped", "stopped by `paper stop`", new, latencies)
                if request == "flatten" and self.halt_after_fill is None:
                    self._flatten("stopped by `paper stop --flatten`", "stopped")
                    flattening_bars = 0  # halt after the next bar (the flat fill)
                    if self.sim.env is None or not self.sim.env.agents:
                        return self._result("stopped", self.halt_after_fill, new, latencies)
                    # the recorded decision of the last bar is now the flat one
                    lg.replace_decision(self.name, self.stamps[-1], self.sim.pending.actions)
                    self._send()
                    lg.event(None, self.name, "stop", "flatten requested: flat at the next open")
                if not bars:
                    idle = time.monotonic() - last_new
                    if idle > self.stale_after_s:
                        reason = (
                            f"stale feed: no new bar for {idle:.0f} s (limit "
                            f"{self.stale_after_s:g} s); trading halted"
                        )
                        lg.event(None, self.name, "stale", reason)
                        state = "halted"
                        raise StaleFeed(f"paper session '{self.name}': {reason}")
                    time.sleep(self.poll_s if not isinstance(self.feed, ReplayFeed) else 0.001)
        except BaseException as exc:
            if state != "halted":
                state, reason = (
                    "stopped",
                    f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                )  # noqa: E501
            lg.release(self.name, state, reason)
            raise

    def _result(self, state: str, reason: str, new: int, lat: list[float]) -> SessionResult:
        self.ledger.release(self.name, state, reason)
        status = self.ledger.status(self.name)
        return SessionResult(status, new, lat, self.sim.rebuilds)


def _json(value: Any) -> str:
    return json.dumps(value)


def replay_bars(
    model: ResolvedModel,
    split: str | None = "test",
    start: str | None = None,
    end: str | None = None,
) -> dict[str, pd.DataFrame]:
    """The model's own bars to replay: a split (with the causal history a backtest of it
    has), or `start`..`end` of its market preceded by the bars its first decision needs."""
    if start is None and end is None:
        bars, _, _ = select_bars(model.cfg, None, split or "test")
        return bars
    market = observed_market(model.cfg)
    index = next(iter(market.values())).index
    lo = 0 if start is None else int(index.searchsorted(_utc(start)))
    hi = len(index) if end is None else int(index.searchsorted(_utc(end), side="right"))
    lo = max(0, lo - first_decision_bar(model.cfg))
    if hi - lo < first_decision_bar(model.cfg) + 2:
        raise DataError(f"--start/--end select {hi - lo} bars: too few to trade")
    return {s: f.iloc[lo:hi] for s, f in market.items()}


def _utc(text: str) -> pd.Timestamp:
    ts = pd.Timestamp(text)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def make_feed(
    model: ResolvedModel,
    source: str,
    *,
    split: str | None = "test",
    start: str | None = None,
    end: str | None = None,
    path: str | None = None,
    db: str | None = None,
    speed: float = 0.0,
) -> Feed:
    """The feed of `paper run --source replay|sql|file`."""
    if source == "replay":
        return ReplayFeed(replay_bars(model, split, start, end), speed=speed)
    if source == "sql":
        return SqlFeed(db, model.symbols, model.timeframe, max_price=model.cfg.data.max_price)
    if source == "file":
        if not path:
            raise ConfigError("--source file needs --data PATH (a bars file or folder)")
        if not Path(path).exists():
            raise DataError(f"no bars file or folder at {path}")
        data = model.cfg.data
        return FileFeed(Path(path), model.symbols, tz=data.tz, max_price=data.max_price)
    raise ConfigError(f"unknown --source '{source}' (replay, sql or file)")
