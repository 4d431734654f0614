"""The broker interface of paper sessions and the simulated broker built in.

`Broker` is what a session needs from any broker: take the bar's decision (`submit`), drop a
decision not yet filled (`cancel`), and report `positions` and `cash`. `SimulatedBroker`
fills by envs.engine through `HierarchicalTradingEnv` in eval_mode: the very code a backtest
runs (next-open fills, costs, slippage, stops, borrow, risk limits), not a copy; it reads the
book through the env's public `book()`. A replay's env is built once over the whole replay; a
live feed's holds the bars so far plus placeholder rows, each new bar streamed over the next
one (see `SimulatedBroker`); every env array is causal, so an env built over more bars has
the same rows for the bars it shares (tests/test_paper.py checks both). `load_broker_factory`
resolves `paper run --broker module:factory` and `make_broker` checks what it makes;
docs/paper_trading.md shows how a real broker adapter plugs in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from envs import HierarchicalTradingEnv
from envs.execution import sizing_window
from envs.hierarchical_env import Book
from envs.risk import RollingCovariance, RollingVariance
from rl_trading.config import AppConfig, periods_per_year_of
from rl_trading.data.features import SIGNAL_PREFIX
from rl_trading.data.resample import FILLED_COLUMN
from rl_trading.data.splits import env_history
from rl_trading.errors import ConfigError, DataError
from rl_trading.paper.incremental import MarketStream

_OHLCV = ("open", "high", "low", "close", "volume")

# key of a recorded decision that flattens the book whatever the action semantics
FLATTEN = "_flatten"


@dataclass
class OrderBatch:
    """One bar's decision: every agent's action, to fill at the next bar's open."""

    bar: pd.Timestamp
    actions: dict[str, list[float]]


@runtime_checkable
class Broker(Protocol):
    """What a paper (or live) session needs from a broker."""

    def submit(self, batch: OrderBatch) -> None:
        """Queue the bar's decision; it fills at the next bar's open."""
        ...

    def cancel(self) -> None:
        """Drop the decision not filled yet (the book keeps its targets)."""
        ...

    def positions(self) -> dict[str, float]:
        """Units held per symbol."""
        ...

    def cash(self) -> float:
        """Cash after fills and costs."""
        ...


def first_decision_bar(cfg: AppConfig) -> int:
    """Index of the first bar a policy decides on (HierarchicalTradingEnv.first_bar)."""
    return env_history(cfg)


def _padded(bars: dict[str, pd.DataFrame], rows: int = 1) -> dict[str, pd.DataFrame]:
    """The bars plus `rows` copies of the last bar, one step apart (placeholders, never traded
    on: they let the env stand at the last real bar, and a live feed's next bars are written
    over them by `HierarchicalTradingEnv.set_bar`)."""
    out = {}
    for sym, frame in bars.items():
        step = frame.index[-1] - frame.index[-2] if len(frame) > 1 else pd.Timedelta(1, "s")
        pad = frame.iloc[[-1] * rows].copy()
        stamps = [frame.index[-1] + step * (i + 1) for i in range(rows)]
        pad.index = pd.DatetimeIndex(stamps, name=frame.index.name)
        out[sym] = pd.concat([frame, pad])
    return out


class SimulatedBroker:
    """Broker that fills with envs.engine, exactly as a backtest of the same policy.

    Two ways to hold the bars: a replay builds its env once over the whole replay (`ensure(
    bars, full=True)`); a live feed hands each bar to `add_bar` and the env is built over the
    bars so far plus `LIVE_ROWS` (or half the history) placeholder rows, each new bar's
    features (`MarketStream`) and covariance (`RollingCovariance`) computed in O(1) and
    written over the next placeholder (`HierarchicalTradingEnv.set_bar`); only when the
    placeholders run out is it rebuilt (the episode carried over by `adopt_episode`)."""

    LIVE_ROWS = 256

    def __init__(
        self, cfg: AppConfig, mode: str, scalers: dict[str, Any], symbols: list[str]
    ) -> None:
        if cfg.data.periods_per_year is None and cfg.data.calendar == "auto":
            # an env over placeholder rows must not measure its calendar (resolve_model pins)
            raise ConfigError(
                "paper trading needs data.periods_per_year pinned (paper.model.resolve_model "
                "pins it as a backtest does) or a data.calendar other than auto"
            )
        self.cfg, self.mode, self.scalers, self.symbols = cfg, mode, scalers, symbols
        self.env: HierarchicalTradingEnv | None = None
        self._pending: OrderBatch | None = None
        self._book: Book | None = None
        self._covers = 0  # bars the env holds that are real
        self.rebuilds = 0
        # the live path: the bars so far (arrays) and the streams, advanced bar by bar
        self._rows: list[dict[str, dict[str, Any]]] = []
        self._stamps: list[pd.Timestamp] = []
        self._features = MarketStream([scalers[s] for s in symbols]) if scalers else None
        self._cov = RollingCovariance(len(symbols), cfg.env.risk_window)
        # the sizing volatility's window when env.vol_horizon_years sets one (else the risk's)
        window = sizing_window(
            cfg.env.risk_window, cfg.env.vol_horizon_years, float(periods_per_year_of(cfg))
        )
        self._size_var = (
            RollingVariance(len(symbols), window) if window != cfg.env.risk_window else None
        )
        self._prev_close: np.ndarray | None = None
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.streamed = self._features is not None  # False: rebuild at every bar (signals)

    # -------------------------------------------------------------------------------- env
    def _build(self, bars: dict[str, pd.DataFrame], n: int) -> None:
        env = HierarchicalTradingEnv(
            self.cfg,
            bars=bars,
            mode=self.mode,
            eval_mode=True,
            scalers={s: self.scalers[s] for s in self.symbols} if self.scalers else None,
        )
        if self.env is not None and self.env.agents:
            env.adopt_episode(self.env)
        self.env, self._covers = env, n
        self.rebuilds += 1

    def ensure(self, bars: dict[str, pd.DataFrame], full: bool = False) -> None:
        """Make the env hold at least `bars` (all real when `full`: a whole replay)."""
        n = len(next(iter(bars.values())))
        if self.env is not None and self._covers >= n:
            return
        self._build(bars if full else _padded(bars), n)

    def add_bar(self, ts: pd.Timestamp, row: dict[str, dict[str, Any]]) -> None:
        """A live bar (every symbol's open, high, low, close, volume): its features and
        covariance advance in O(1); `ensure_live` puts it in the env."""
        self._rows.append(row)
        self._stamps.append(ts)
        if not self.streamed:
            return
        if any(str(c).startswith(SIGNAL_PREFIX) for c in next(iter(row.values()))):
            self.streamed = False  # supervised-signal columns: the batch path only
            return
        ohlcv = np.array([[float(row[s][c]) for c in _OHLCV] for s in self.symbols])
        bad = ~np.isfinite(ohlcv).all(axis=1) | (ohlcv[:, :4] <= 0).any(axis=1)
        if bad.any():
            sym = self.symbols[int(np.argmax(bad))]
            raise DataError(f"bar {ts} of {sym}: prices must be finite and positive")
        close = ohlcv[:, 3]
        rets = close / self._prev_close - 1.0 if self._prev_close is not None else close * 0.0
        self._prev_close = close
        real = np.array([not bool(row[s].get(FILLED_COLUMN, False)) for s in self.symbols])
        size_var = self._size_var.push(rets) if self._size_var is not None else None
        self._last = (
            ohlcv[:, :4], real, self._features.push(ohlcv), self._cov.push(rets), size_var
        )  # fmt: skip

    def ensure_live(self) -> None:
        """Make the env hold every bar given to `add_bar`: the newest written over its next
        placeholder row, or (none left, or a first build) a build over them all."""
        n = len(self._rows)
        if self.env is not None and self._covers >= n:
            return
        if (
            self.streamed
            and self.env is not None
            and n == self._covers + 1
            and n < (self.env.n_bars - 1)
        ):
            ohlc, real, features, cov, size_var = self._last
            self.env.set_bar(n - 1, ohlc[:, [0, 1, 2, 3]], real, features, cov, size_var)
            self._covers = n
            return
        # placeholders: at least LIVE_ROWS, and half the history, so that builds get rarer
        # as the session grows (O(log T) of them, each O(T))
        rows = max(self.LIVE_ROWS, n // 2) if self.streamed else 1
        self._build(_padded(self._frames(), rows), n)

    def _frames(self) -> dict[str, pd.DataFrame]:
        """The live bars so far as frames (a build)."""
        idx = pd.DatetimeIndex(self._stamps, name="timestamp")
        return {s: pd.DataFrame([r[s] for r in self._rows], index=idx) for s in self.symbols}

    @property
    def first_bar(self) -> int:
        return self.env.first_bar if self.env is not None else first_decision_bar(self.cfg)

    def start(self) -> dict[str, np.ndarray]:
        """Open the book at the first decision bar: observations to act on."""
        obs, _ = self.env.reset(seed=self.cfg.seed)
        self._book = self.env.book()
        return obs

    def book(self) -> Book | None:
        """The env's book after the last step (read once a step); None before the first."""
        return self._book

    @property
    def pending(self) -> OrderBatch | None:
        """The decision submitted and not filled yet."""
        return self._pending

    # ----------------------------------------------------------------------------- broker
    def submit(self, batch: OrderBatch) -> None:
        self._pending = batch

    def cancel(self) -> None:
        self._pending = None

    def positions(self) -> dict[str, float]:
        if self._book is None:
            return dict.fromkeys(self.symbols, 0.0)
        return {s: float(u) for s, u in zip(self.symbols, self._book.units, strict=True)}

    def cash(self) -> float:
        return self._book.cash if self._book is not None else float(self.cfg.env.initial_capital)

    def equity(self) -> float:
        return self._book.equity if self._book is not None else self.cash()

    def traded(self) -> float:
        """Notional bought + sold at the last bar (its fills and stop-loss exits)."""
        return self._book.traded if self._book is not None else 0.0

    def exposures(self) -> list[float]:
        """Signed exposures (fractions of equity) after the last bar."""
        if self._book is None:
            return [0.0] * len(self.symbols)
        return [float(x) for x in self._book.exposures]

    def flat_actions(self) -> dict[str, list[float]]:
        """A decision that takes every position to flat (kill switch, `paper stop --flatten`):
        the env's `flat_actions` and the FLATTEN marker (see `execute`)."""
        return {**self.env.flat_actions(), FLATTEN: [1.0]}

    def execute(self, ts: pd.Timestamp) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        """Fill the pending decision at this bar's open, mark at its close: the env's step.
        Returns the new observations and the orders filled (one per symbol whose units
        changed, stop-loss exits included)."""
        env = self.env
        before = self._book
        batch, self._pending = self._pending, None
        actions = dict(batch.actions) if batch is not None else {}
        # a flat decision targets absolute 0 for its one step (in benchmark-relative mode
        # no action of the agents is flat)
        flatten = actions.pop(FLATTEN, None) is not None
        obs, *_ = env.step(actions, absolute=flatten)
        after = self._book = env.book()
        stops = after.stop_prices
        fills = []
        for i, sym in enumerate(self.symbols):
            if after.units[i] == before.units[i]:
                continue
            target = after.targets[i]
            # a stop-loss exit fills at its stop price (the engine's), not at the open
            stopped = stops[i] != 0.0
            fills.append(
                {
                    "fill_ts": ts,
                    "decision_ts": batch.bar if batch is not None else ts,
                    "symbol": sym,
                    "kind": "stop" if stopped else "rebalance",
                    "units_before": float(before.units[i]),
                    "units_after": float(after.units[i]),
                    "price": float(stops[i] if stopped else after.open[i]),
                    "target": float(target),
                }
            )
        return obs, fills


def load_broker_factory(spec: str) -> Callable[[SimulatedBroker], Broker]:
    """`module:factory` (an import path) -> the factory; ConfigError (one line) when the
    module does not import or has no such callable. The session calls it with its
    `SimulatedBroker` (the shadow book) and checks that what it returns is a `Broker`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--broker '{spec}': expected an import path module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the user's path or module
        raise ConfigError(f"--broker '{spec}': cannot import {module_name} ({exc})") from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"--broker '{spec}': {module_name} has no '{attr}'")
    if not callable(factory):
        raise ConfigError(f"--broker '{spec}': {attr} is not callable")
    return factory


def make_broker(factory: Any, shadow: SimulatedBroker) -> Broker:
    """The session's broker: `factory(shadow)` (or `factory` itself when it already is a
    `Broker` instance; a class is a factory); ConfigError when the result lacks submit /
    cancel / positions / cash."""
    if isinstance(factory, Broker) and not isinstance(factory, type):
        broker = factory
    else:
        try:
            broker = factory(shadow)
        except Exception as exc:  # the adapter's own failure, reported before any trade
            name = getattr(factory, "__name__", type(factory).__name__)
            raise ConfigError(f"the broker factory {name} failed: {exc}") from None
    if not isinstance(broker, Broker):
        missing = [m for m in ("submit", "cancel", "positions", "cash") if not hasattr(broker, m)]
        raise ConfigError(
            f"the broker {type(broker).__name__} is not a paper Broker (missing "
            f"{', '.join(missing)})"
        )
    return broker
