"""Single-instrument gymnasium trading environment (the reference design's `TradingEnv`).

Observation at bar t (float32): the last `window_size` rows of scaled causal features
(`rl_trading.data.features`), flattened, then own state ``[position, unrealised P&L,
time in position]`` (position = exposure / (full size x equity), so in [-1, 1];
unrealised P&L as a fraction of entry notional; bars in position / 100).
Action: discrete {short, flat, long} ({flat, long} without shorting) or a continuous target
in [-1, 1] ([0, 1] without shorting). The target is filled at bar t+1's open (envs.execution):
units = target x full size x equity / open, the full size being max_position_size, or with
``env.vol_target`` the target over the causal annualised volatility (capped at
vol_target_max_leverage). The position is only traded when the target differs from the
exposure held at the close (with ``env.rebalance_band`` b: by more than b x full size, or to
flat; without a band it is rebalanced every bar) or a stop-loss fired, and
never on a forward-filled bar (the order waits for
the next real bar). A stop-loss (`stop_loss_pct` of the entry price) fires when bar t+1's low
(high for a short) reaches its level and fills at the level or the gap open, whichever is worse
(costs paid, info["stop_loss"]). Shorts pay `borrow_bps_per_year` every bar (info
"borrow_cost"). All of it is envs.engine.step_single: the same rules as the hierarchical env.
Training episodes start at a random bar and last `episode_length` steps; eval_mode makes one
sequential pass over all bars. Capital is cfg.env.initial_capital, fee cfg.env.transaction_cost
(the hierarchical env's keys: one key per concept).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from envs import engine
from envs.common import RewardShaper, env_periods_per_year, prepare_instrument, resolve_config
from envs.execution import CostModel, borrow_rate, position_sizes, sizing_window
from envs.risk import causal_volatility
from rl_trading import metrics
from rl_trading.config import AppConfig
from rl_trading.data.features import WARMUP_BARS, FeatureScaler
from rl_trading.data.splits import single_decision_history
from rl_trading.errors import ConfigError

__all__ = ["TradingEnv"]

_STATE_DIM = 3


class TradingEnv(gym.Env):
    """One instrument, next-open fills, proportional costs, stop-loss, pluggable rewards."""

    metadata = {"name": "rl_trading_single_v0", "render_modes": []}

    def __init__(
        self,
        cfg: AppConfig | None = None,
        *,
        bars: pd.DataFrame,
        eval_mode: bool = False,
        seed: int | None = None,
        scaler: FeatureScaler | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.cfg = resolve_config(cfg, overrides, ("train", "env", "reward"))
        tcfg, ecfg = self.cfg.train, self.cfg.env
        self.eval_mode = bool(eval_mode)
        self.window = tcfg.window_size
        self.initial_balance = float(ecfg.initial_capital)
        self.max_position = float(ecfg.max_position_size)
        self.stop_loss_pct = float(ecfg.stop_loss_pct)
        self.episode_length = int(ecfg.episode_length)
        self.allow_short = bool(ecfg.allow_short)
        self.action_type = ecfg.action_type
        self._discrete = self.action_type == "discrete"
        self.random_start = bool(ecfg.random_start)
        self._band = float(ecfg.rebalance_band)
        if ecfg.benchmark != "none":
            raise ConfigError(
                "env.benchmark (benchmark-relative agents) is for the hierarchical env; "
                "TradingEnv trades absolute positions: use env.benchmark=none"
            )
        if ecfg.cross_sectional or ecfg.trend_windows:
            raise ConfigError(
                "env.cross_sectional / env.trend_windows are observations of the hierarchical "
                "env; TradingEnv observes its features only: turn them off"
            )
        self.costs = CostModel(ecfg.transaction_cost, ecfg.slippage_bps, ecfg.spread_bps)
        self._rate = self.costs.rate
        # the run's one annualisation (cfg.data.periods_per_year, else its calendar)
        self.periods_per_year = env_periods_per_year(self.cfg, bars)
        self._borrow = borrow_rate(ecfg.borrow_bps_per_year, self.periods_per_year)
        self.reward_fn = RewardShaper(self.cfg.reward)
        self.reward_scale = float(self.cfg.reward.scale)
        self._amortized = self.reward_fn.amortize > 1  # a cost debt to flush at the end

        data = prepare_instrument(bars, scaler, symbol="bars")
        self.scaler = data.scaler
        self._open, self._close = data.open, data.close
        # features flattened with _STATE_DIM zeros of padding: the observation of bar t is one
        # contiguous slice copy (window rows + _STATE_DIM slots overwritten with the state)
        t_len, n_feat = data.features.shape
        self._flat = np.zeros(t_len * n_feat + _STATE_DIM, dtype=np.float32)
        self._flat[: t_len * n_feat] = data.features.reshape(-1)
        self._feat = self._flat[: t_len * n_feat].reshape(t_len, n_feat)
        self._n_feat = n_feat
        self._close_l = data.close.tolist()
        # full position size per bar, fraction of equity: max_position_size, or under
        # env.vol_target the target over the causal annualised volatility, capped, of the last
        # env.vol_horizon_years of bars (else risk_window)
        window = sizing_window(ecfg.risk_window, ecfg.vol_horizon_years, self.periods_per_year)
        vol = causal_volatility(data.close, window)
        sizes = position_sizes(vol, self.periods_per_year, ecfg.vol_target,
                               ecfg.vol_target_max_leverage, self.max_position)[:, 0]  # fmt: skip
        self._size_l = sizes.tolist()
        # the market rows and parameters of envs.engine (one instrument)
        t_len = len(data.close)
        mk = np.zeros((t_len, engine.N_MK, 1))
        mk[:, engine.M_OPEN, 0] = data.open
        mk[:, engine.M_CLOSE, 0] = data.close
        mk[:, engine.M_LOW, 0] = data.low
        mk[:, engine.M_HIGH, 0] = data.high
        mk[:, engine.M_REAL, 0] = data.real
        mk[:, engine.M_SCALE, 0] = sizes
        self._mk = mk
        par = np.zeros(engine.N_PAR)
        par[engine.P_RATE] = self._rate
        par[engine.P_STOP] = self.stop_loss_pct
        par[engine.P_BORROW] = self._borrow
        par[engine.P_BAND] = self._band
        self._par = par
        rc = self.cfg.reward
        self._plain_log = (
            rc.kind == "log_return"
            and rc.transaction_cost_weight == 1.0
            and not (rc.drawdown_penalty_weight or rc.downside_penalty_weight)
            and rc.cost_amortization_bars == 1
        )
        self.index = bars.index
        self.n_bars = len(bars)
        self.first_bar = single_decision_history(self.window)
        if self.first_bar >= self.n_bars - 1:
            raise ConfigError(
                f"window_size {self.window} (+ {WARMUP_BARS} warm-up bars) needs more than "
                f"{self.n_bars} bars"
            )
        n_feat = self._feat.shape[1]
        self._obs_dim = self.window * n_feat + _STATE_DIM
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self._obs_dim,), np.float32)
        if self.action_type == "discrete":
            self._levels: tuple[float, ...] = (-1.0, 0.0, 1.0) if self.allow_short else (0.0, 1.0)
            self.action_space = gym.spaces.Discrete(len(self._levels))
        else:
            low = -1.0 if self.allow_short else 0.0
            self.action_space = gym.spaces.Box(low, 1.0, (1,), np.float32)
        if seed is not None:
            self.reset(seed=seed)
        else:
            self._start = self._t = self.first_bar
            self._reset_state()

    # ---------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._state = np.zeros((engine.N_STATE, 1))  # units, entry, bars, last traded target
        self._sc = np.zeros(engine.N_SC + 1)
        self._sc[engine.S_CASH] = self._sc[engine.S_EQUITY] = self.initial_balance
        self._units = 0.0
        self._entry = 0.0
        self._target = 0.0
        self._bars_in_pos = 0
        self._equity = self.initial_balance
        self._steps = 0
        self._total_costs = 0.0
        self._total_borrow = 0.0
        self._stop_losses = 0
        self._n_trades = 0
        self._equity_hist = [self.initial_balance]
        self._pos_hist = [0.0]
        self._traded_hist = [0.0]
        self.reward_fn.reset(self.initial_balance)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: random start and `episode_length` steps, or the full pass in eval."""
        super().reset(seed=seed)
        last_start = self.n_bars - 1 - self.episode_length
        if self.eval_mode or not self.random_start or last_start <= self.first_bar:
            self._start = self.first_bar
        else:
            self._start = int(self.np_random.integers(self.first_bar, last_start + 1))
        if self.eval_mode:
            self._end = self.n_bars - 1
        else:
            self._end = min(self.n_bars - 1, self._start + self.episode_length)
        self._t = self._start
        self._reset_state()
        return self._obs(), self._info(0.0, False, 0.0)

    def _obs(self) -> np.ndarray:
        t = self._t
        stop = (t + 1) * self._n_feat
        out = self._flat[stop - self._obs_dim + _STATE_DIM : stop + _STATE_DIM].copy()
        units = self._units
        price = self._close_l[t]
        eq = self._equity
        out[-3] = units * price / (self._size_l[t] * eq) if eq > 0 else 0.0
        out[-2] = (price / self._entry - 1.0) * (1.0 if units > 0 else -1.0) if units else 0.0
        out[-1] = self._bars_in_pos * 0.01
        return out

    def _info(self, cost: float, stopped: bool, fill_units: float) -> dict[str, Any]:
        return {
            "equity": self._equity,
            "position": self._units,
            "target": self._target,
            "fill_units": fill_units,
            "cost": cost,
            "total_costs": self._total_costs,
            "borrow_cost": 0.0,
            "total_borrow_costs": self._total_borrow,
            "stop_loss": stopped,
            "stop_losses": self._stop_losses,
            "bar": self._t,
        }

    def _target_of(self, action: Any) -> float:
        if self.action_type == "discrete":
            return self._levels[int(action)]
        value = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        if not math.isfinite(value):
            raise ValueError(f"TradingEnv: non-finite action {action!r}")
        low = -1.0 if self.allow_short else 0.0
        return min(1.0, max(low, value))

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Fill the target at the next open, mark at its close, apply stop-loss, reward."""
        target = self._levels[int(action)] if self._discrete else self._target_of(action)
        t = self._t
        t1 = t + 1
        eq_prev = self._equity
        size_l = self._size_l  # full position size per bar (env.vol_target or max size)
        (fill, traded, stopped, units, self._entry, bars_in, cost, borrow, equity,
         notional) = engine.step_single(t, target * size_l[t], self._mk, self._par, self._state,
                                        self._sc)  # fmt: skip
        if traded:
            self._target = target
            self._n_trades += 1
        if stopped:
            self._target = 0.0
            self._stop_losses += 1
        self._units = units
        self._bars_in_pos = int(bars_in)
        self._total_borrow += borrow
        price_close = self._close_l[t1]
        self._equity = equity
        self._total_costs += cost
        self._t = t1
        self._steps += 1
        self._equity_hist.append(equity)
        self._pos_hist.append(units * price_close / equity if equity > 0 else 0.0)
        self._traded_hist.append(notional)
        if self._plain_log and equity > 0.0:
            reward = math.log(equity / eq_prev)
        else:
            reward = self.reward_fn(eq_prev, equity, cost)
        terminated = equity <= 0.0
        truncated = (not terminated) and t1 >= self._end
        if self._amortized and (terminated or truncated):
            reward -= self.reward_fn.flush()  # the cost debt still owed (reward.cost_...)
        reward *= self.reward_scale
        info = {
            "equity": equity,
            "position": units,
            "target": self._target,
            "fill_units": fill,
            "cost": cost,
            "total_costs": self._total_costs,
            "borrow_cost": borrow,
            "total_borrow_costs": self._total_borrow,
            "stop_loss": stopped,
            "stop_losses": self._stop_losses,
            "bar": t1,
        }
        # observation of bar t1 (as _obs(), inlined)
        stop = (t1 + 1) * self._n_feat
        obs = self._flat[stop - self._obs_dim + _STATE_DIM : stop + _STATE_DIM].copy()
        obs[-3] = units * price_close / (size_l[t1] * equity) if equity > 0 else 0.0
        obs[-2] = (price_close / self._entry - 1.0) * (1.0 if units > 0 else -1.0) if units else 0.0
        obs[-1] = self._bars_in_pos * 0.01
        return obs, reward, terminated, truncated, info

    def obs_layout(self) -> dict[str, int]:
        """Layout of an observation: window_size x n_features, then state_dim."""
        return {
            "window_size": self.window,
            "n_features": int(self._feat.shape[1]),
            "state_dim": _STATE_DIM,
        }

    # ---------------------------------------------------------------------------------------
    def episode_summary(self, periods_per_year: float | str | None = None) -> dict[str, Any]:
        """Equity curve, exposure history, costs and rl_trading.metrics.summarize of the episode.

        `periods_per_year` defaults to the run's resolved bars per year.
        """
        equity = np.asarray(self._equity_hist)
        positions = np.asarray(self._pos_hist)
        traded = np.asarray(self._traded_hist)
        ppy = self.periods_per_year if periods_per_year is None else periods_per_year
        return {
            "equity": equity,
            "positions": positions,
            "traded": traded,
            "timestamps": self.index[self._start : self._start + len(equity)],
            "total_costs": self._total_costs,
            "borrow_costs": self._total_borrow,
            "stop_losses": self._stop_losses,
            "trades": self._n_trades,
            "metrics": metrics.summarize(equity, traded, periods_per_year=ppy),
        }
