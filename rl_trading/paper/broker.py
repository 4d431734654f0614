"""The broker interface of paper sessions and the simulated broker built in.

`Broker` is what a session needs from any broker: take the bar's decision (`submit`), drop a
decision not yet filled (`cancel`), and report `positions` and `cash`. `SimulatedBroker`
fills by envs.engine through `HierarchicalTradingEnv` in eval_mode: the very code a backtest
runs (next-open fills, costs, slippage, stops, borrow, risk limits), not a copy. It keeps an
env over the bars seen so far (one padding row past the last, never stepped into) and grows
it when bars arrive; every env array is causal, so an env built over more bars has the same
rows for the bars it shares (tests/test_paper.py checks it). docs/paper_trading.md shows how a
real broker adapter plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from envs import HierarchicalTradingEnv, engine
from envs.hierarchical_env import META
from rl_trading.config import AppConfig
from rl_trading.data.features import WARMUP_BARS

# the env's episode state that a grown env takes over (HierarchicalTradingEnv._clear_state
# sets exactly these); the history table and breach flags are copied row by row
_EPISODE_STATE = (
    "_t", "_steps", "_equity", "_proposal", "_weights", "_var_est", "_meta_acc", "reward_fn",
    "_k_state", "_k_sc", "_k_cnt", "_k_rs", "_np_random",
)  # fmt: skip


# key of a recorded decision that flattens the book whatever the action semantics
FLATTEN = "_flatten"


@dataclass
class OrderBatch:
    """One bar's decision: every agent's action, to fill at the next bar's open."""

    bar: pd.Timestamp
    actions: dict[str, list[float]]


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
    return max(WARMUP_BARS, cfg.train.window_size - 1, cfg.env.risk_window)


def _padded(bars: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The bars plus one copy of the last bar one step later (never traded on: it only lets
    the env stand at the last real bar)."""
    out = {}
    for sym, frame in bars.items():
        step = frame.index[-1] - frame.index[-2] if len(frame) > 1 else pd.Timedelta(1, "s")
        pad = frame.iloc[[-1]].copy()
        pad.index = pd.DatetimeIndex([frame.index[-1] + step], name=frame.index.name)
        out[sym] = pd.concat([frame, pad])
    return out


class SimulatedBroker:
    """Broker that fills with envs.engine, exactly as a backtest of the same policy."""

    def __init__(
        self, cfg: AppConfig, mode: str, scalers: dict[str, Any], symbols: list[str]
    ) -> None:
        self.cfg, self.mode, self.scalers, self.symbols = cfg, mode, scalers, symbols
        self.env: HierarchicalTradingEnv | None = None
        self._pending: OrderBatch | None = None
        self._covers = 0  # bars the env holds that are real
        self.rebuilds = 0

    # -------------------------------------------------------------------------------- env
    def ensure(self, bars: dict[str, pd.DataFrame], full: bool = False) -> None:
        """Make the env hold at least `bars` (all real when `full`: a whole replay)."""
        n = len(next(iter(bars.values())))
        if self.env is not None and self._covers >= n:
            return
        env = HierarchicalTradingEnv(
            self.cfg,
            bars=bars if full else _padded(bars),
            mode=self.mode,
            eval_mode=True,
            scalers={s: self.scalers[s] for s in self.symbols} if self.scalers else None,
        )
        if self.env is not None and self.env.agents:
            self._carry(self.env, env)
        self.env, self._covers = env, n
        self.rebuilds += 1

    @staticmethod
    def _carry(old: HierarchicalTradingEnv, new: HierarchicalTradingEnv) -> None:
        """The running episode of `old` continued in `new` (the same bars and more)."""
        new._alloc_episode(old._start, new._episode_end(old._start))
        rows = old._steps + 1
        new._k_hist[:rows] = old._k_hist[:rows]
        new._h_breach[:rows] = old._h_breach[:rows]
        for name in _EPISODE_STATE:
            setattr(new, name, getattr(old, name))
        new.agents = list(new.possible_agents)

    @property
    def first_bar(self) -> int:
        return self.env.first_bar if self.env is not None else first_decision_bar(self.cfg)

    def start(self) -> dict[str, np.ndarray]:
        """Open the book at the first decision bar: observations to act on."""
        obs, _ = self.env.reset(seed=self.cfg.seed)
        return obs

    # ----------------------------------------------------------------------------- broker
    def submit(self, batch: OrderBatch) -> None:
        self._pending = batch

    def cancel(self) -> None:
        self._pending = None

    def positions(self) -> dict[str, float]:
        if self.env is None:
            return dict.fromkeys(self.symbols, 0.0)
        units = self.env._k_state[engine.R_UNITS]
        return {s: float(u) for s, u in zip(self.symbols, units, strict=True)}

    def cash(self) -> float:
        if self.env is None:
            return float(self.cfg.env.initial_capital)
        return float(self.env._k_sc[engine.S_CASH])

    def equity(self) -> float:
        return float(self.env._equity) if self.env is not None else self.cash()

    def exposures(self) -> list[float]:
        """Signed exposures (fractions of equity) after the last bar."""
        if self.env is None or not self.env._steps:
            return [0.0] * len(self.symbols)
        n = len(self.symbols)
        return [float(x) for x in self.env._k_hist[self.env._steps, 4 + n : 4 + 2 * n]]

    def flat_actions(self) -> dict[str, list[float]]:
        """A decision that takes every position to flat (kill switch, `paper stop --flatten`):
        no proposal, all cash, and the FLATTEN marker (see `execute`)."""
        env = self.env
        flat = [float(list(env._levels).index(0.0))] if env.discrete else [0.0]
        out = {a: list(flat) for a in env.specialists}
        if META in env.possible_agents:
            out[META] = [0.0] * len(self.symbols) + [1.0]
        out[FLATTEN] = [1.0]
        return out

    def execute(self, ts: pd.Timestamp) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        """Fill the pending decision at this bar's open, mark at its close: the env's step.
        Returns the new observations and the orders filled (one per symbol whose units
        changed, stop-loss exits included)."""
        env = self.env
        before = env._k_state[engine.R_UNITS].copy()
        stops = int(env._k_cnt[engine.C_STOP])
        t1 = env._t + 1
        batch, self._pending = self._pending, None
        actions = dict(batch.actions) if batch is not None else {}
        if actions.pop(FLATTEN, None) is None:
            obs, *_ = env.step(actions)
        else:
            # targets = weight x proposal x size (+ the benchmark's exposure in benchmark-
            # relative mode, where no action is flat): this one step targets absolute 0
            relative = env._k_par[engine.P_RELATIVE]
            env._k_par[engine.P_RELATIVE] = 0.0
            try:
                obs, *_ = env.step(actions)
            finally:
                env._k_par[engine.P_RELATIVE] = relative
        after = env._k_state[engine.R_UNITS]
        target = env._k_state[engine.R_TARGET]
        stopped = int(env._k_cnt[engine.C_STOP]) > stops
        fills = []
        for i, sym in enumerate(self.symbols):
            if after[i] == before[i]:
                continue
            kind = "stop" if stopped and after[i] == 0.0 and target[i] != 0.0 else "rebalance"
            fills.append(
                {
                    "fill_ts": ts,
                    "decision_ts": batch.bar if batch is not None else ts,
                    "symbol": sym,
                    "kind": kind,
                    "units_before": float(before[i]),
                    "units_after": float(after[i]),
                    "price": float(env._open[t1, i]),
                    "target": float(target[i]),
                }
            )
        return obs, fills
