"""Hierarchical multi-instrument PettingZoo ParallelEnv: one specialist per instrument + a meta.

Agents: ``specialist_<SYMBOL>`` for each instrument and ``meta``. One shared capital
(cfg.env.initial_capital), fee cfg.env.transaction_cost, same execution model as TradingEnv
(envs.engine: target chosen at bar t filled at bar t+1's open, marked at its close; no fills
on an instrument's forward-filled bars, its order waits for its next real bar; stop-losses on
the bar's low / high filled at the level or the gap open; shorts pay borrow_bps_per_year).

* Specialist i observes its instrument's feature window (flattened) + ``[exposure / max
  position, own proposal, unrealised P&L, bars in position / 100, meta weight]`` and acts
  with a proposed position p_i in [-1, 1] (Box(-1, 1, (1,)), or Discrete(3) = {-1, 0, 1} when
  cfg.env.action_type is "discrete"; [0, 1] / {0, 1} without shorting).
* The meta observes ``[weights (n + 1, last = cash), exposures / max position (n),
  equity / initial - 1, drawdown, annualised rolling vols (n), rolling correlations (upper
  triangle), the specialists' current proposals (n)]`` and acts with Box(0, 1, (n + 1,)):
  the env clips to [0, 1] and normalises to sum 1 (all ~0 -> all cash). Acting simultaneously,
  it sees the proposals of the previous step.
* Target exposure on i = w_i x p_i x full size x equity (full size: max_position_size, or
  env.vol_target's volatility-targeted size); with env.benchmark, b_i + env.active_scale x
  that (b: the benchmark's exposure); then the risk limits of
  envs.risk (sector, correlation, VaR) scale orders down; every scale-down is counted
  (env.risk_limits active: sector and correlation scale the active weights around
  env.benchmark, in both directions).
* Rewards: specialist i gets a Sharpe-style instrument-level reward: its per-unit-capital
  return ``p_prev (open/close_prev - 1) + p (close/open - 1) - cost rate |p - p_prev|`` divided
  by max(rolling std of its own returns, the instrument's causal rolling volatility)
  (rl_trading.metrics.RollingSharpe). The meta gets the portfolio reward of envs.common.RewardShaper
  (cfg.reward.kind, transaction_cost_weight) minus risk_penalty_weight x post-trade one-bar
  VaR plus diversification_bonus_weight x (1 - Herfindahl of allocations) x mean per-bar
  instrument volatility (so the bonus is in return units).
* Options (default off, docs/architecture.md): ``env.specialist_reward="executed"`` (the held
  position's P&L in risk units instead of the proposal's return), ``env.vol_target`` (full
  position size = target annualised volatility / the instrument's, capped at
  ``vol_target_max_leverage``, instead of max_position_size), ``reward.cost_amortization_bars``
  (costs charged in the rewards over time, same sums), ``env.rebalance_band`` (no-trade band:
  re-trade an instrument only when its target differs from the held exposure by more than
  the band x full size).
* Modes: ``specialists`` (phase 1): fixed equal weights 1/n, the meta is not an agent at all;
  ``meta`` and ``joint`` (phases 2/3): full hierarchy (what trains is the trainer's choice).
* meta_interval k: the meta acts on steps 0, k, 2k, ... of an episode and its weights are held
  in between. By default it still gets an observation every step (PettingZoo API); actions on
  the other steps are ignored, its rewards accumulate and are paid (reward 0 otherwise) on the
  step whose observation precedes its next decision, and at episode end. With
  ``meta_obs_every_step=False`` (what RLlib training uses) the meta is simply left out of the
  returned dicts on steps where it will not act (its reward still accumulates).
* Episodes: random start and episode_length steps (training) or one full pass (eval_mode).
  Missing actions keep the agent's previous action. `episode_summary()` returns equity curve,
  weights / exposures history, costs, VaR estimates and breaches, and metrics.summarize.
* The trading rules (targets, risk limits, fills, costs, stops, borrow, the specialists'
  rewards, observations) are envs.engine's, the one copy every env and baseline uses; this
  class holds the market arrays and the episode, reads actions and builds the dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.utils import parallel_to_aec

from envs import engine
from envs.common import (
    RewardShaper,
    env_periods_per_year,
    prepare_instrument,
    resolve_config,
)
from envs.execution import (
    CostModel,
    benchmark_exposures,
    borrow_rate,
    growth_since,
    position_sizes,
    sizing_window,
)
from envs.risk import RiskModel, causal_volatility, rolling_covariance
from rl_trading import metrics
from rl_trading.config import AppConfig
from rl_trading.data.features import (
    WARMUP_BARS,
    FeatureScaler,
    cross_sectional,
    trend_rows,
    trend_sums,
)
from rl_trading.data.splits import decision_history
from rl_trading.errors import ConfigError

__all__ = [
    "META", "MODES", "Book", "HierarchicalTradingEnv", "env", "parallel_env", "specialist_id",
]  # fmt: skip

META = "meta"
MODES = ("joint", "meta", "specialists")
_SPEC_STATE = 5


@dataclass(frozen=True)
class Book:
    """The running episode's book where the env stands (copies): what a broker reports."""

    bar: int  # index of the bar the env stands at (its last step filled at its open)
    units: np.ndarray  # (n,) units held
    targets: np.ndarray  # (n,) target exposures of the last step, after the risk limits
    exposures: np.ndarray  # (n,) signed exposures after the bar, fractions of equity
    open: np.ndarray  # (n,) the bar's open prices
    cash: float
    equity: float
    stop_losses: int  # stop-loss exits so far
    stop_prices: np.ndarray  # (n,) the price a stop filled at in the last step, else 0
    traded: float = 0.0  # notional bought + sold at the last step (fills and stop exits)


# the episode state `adopt_episode` carries over: what _clear_state sets (the history rows
# and breach flags are copied row by row)
_EPISODE_STATE = (
    "_t", "_steps", "_equity", "_proposal", "_weights", "_var_est", "_meta_acc", "reward_fn",
    "_k_state", "_k_sc", "_k_cnt", "_k_rs", "_np_random",
)  # fmt: skip


def specialist_id(symbol: str) -> str:
    """Agent id of the specialist trading `symbol`."""
    return f"specialist_{symbol}"


class HierarchicalTradingEnv(ParallelEnv):
    """Specialists propose positions per instrument; the meta allocates one shared capital."""

    metadata = {"name": "rl_trading_hierarchical_v0", "render_modes": [], "is_parallelizable": True}
    # every observation reset() / step() returns is a new array the env never writes again, so
    # a vector env need not deep-copy them (rl_trading/training/fast/env_runner.py)
    fresh_observations = True

    def __init__(
        self,
        cfg: AppConfig | None = None,
        *,
        bars: dict[str, pd.DataFrame],
        mode: str = "joint",
        eval_mode: bool = False,
        seed: int | None = None,
        scalers: dict[str, FeatureScaler] | None = None,
        meta_obs_every_step: bool = True,
        **overrides: Any,
    ) -> None:
        self.cfg = resolve_config(cfg, overrides, ("env", "train", "reward"))
        ecfg, rcfg = self.cfg.env, self.cfg.reward
        if mode not in MODES:
            raise ConfigError(f"unknown hierarchical env mode '{mode}' (use one of {MODES})")
        if not isinstance(bars, dict) or not bars:
            raise ConfigError("HierarchicalTradingEnv needs at least one instrument in `bars`")
        self.mode = mode
        self.eval_mode = bool(eval_mode)
        self.meta_obs_every_step = bool(meta_obs_every_step)
        self.symbols = [str(s) for s in bars]
        self.n = n = len(self.symbols)
        first = next(iter(bars.values()))
        for sym, frame in bars.items():
            if len(frame) != len(first) or not frame.index.equals(first.index):
                raise ConfigError(
                    f"bars of '{sym}' are not aligned with '{self.symbols[0]}' "
                    "(use rl_trading.data.align first)"
                )
        self.index = first.index
        # the run's one annualisation (cfg.data.periods_per_year, else its calendar)
        self.periods_per_year = env_periods_per_year(self.cfg, self.index.to_series())
        self.window = self.cfg.train.window_size
        self.capital = float(ecfg.initial_capital)
        self.max_position = float(ecfg.max_position_size)
        self.stop_loss_pct = float(ecfg.stop_loss_pct)
        self.episode_length = int(ecfg.episode_length)
        self.random_start = bool(ecfg.random_start)
        # curriculum over episode difficulty (set_curriculum_level): off until a level is set
        self._curriculum_order: np.ndarray | None = None  # starts, easiest first (lazy)
        self._curriculum_k = 0  # draw among the first k of them; 0: no curriculum
        self.curriculum_level = 1.0
        self.meta_interval = int(ecfg.meta_interval)
        self.allow_short = bool(ecfg.allow_short)
        self.discrete = ecfg.action_type == "discrete"
        self.costs = CostModel(ecfg.transaction_cost, ecfg.slippage_bps, ecfg.spread_bps)
        self._rate = self.costs.rate
        self._spec_executed = ecfg.specialist_reward == "executed"
        self._amortize = int(rcfg.cost_amortization_bars)
        self._band = float(ecfg.rebalance_band)
        self.risk_penalty = rcfg.risk_penalty_weight
        self.benchmark = ecfg.benchmark
        self.relative = ecfg.benchmark != "none"
        self.te_weight = float(rcfg.tracking_error_weight)
        self.div_bonus = rcfg.diversification_bonus_weight
        self.reward_fn = RewardShaper(rcfg)
        self.reward_scale = float(rcfg.scale)

        scalers = scalers or {}
        arrays = [prepare_instrument(bars[s], scalers.get(s), symbol=s) for s in self.symbols]
        self.scalers = {s: a.scaler for s, a in zip(self.symbols, arrays, strict=True)}
        self._open = np.ascontiguousarray(np.stack([a.open for a in arrays], axis=1))
        self._close = np.ascontiguousarray(np.stack([a.close for a in arrays], axis=1))
        self._lows = np.ascontiguousarray(np.stack([a.low for a in arrays], axis=1))
        self._highs = np.ascontiguousarray(np.stack([a.high for a in arrays], axis=1))
        self._trend_windows = [int(k) for k in ecfg.trend_windows]
        # running sums of returns and squared returns (data.features.trend_sums): the trend
        # rows of the constructor, and set_bar's one row per live bar in O(windows)
        self._trend_sums = trend_sums(self._close) if self._trend_windows else None
        feat_all = self._observed_features(np.stack([a.features for a in arrays], axis=0))
        self._feat_all = np.ascontiguousarray(feat_all)
        # (n, T x F) view: the window of bar t is one 2-D slice, copied once into the obs
        self._feat_rows = self._feat_all.reshape(n, -1)
        # (T, n) bool: False on forward-filled bars (no fills, no stops there)
        self._real = np.ascontiguousarray(np.stack([a.real for a in arrays], axis=1))
        self._all_real = bool(self._real.all())
        self.n_bars = t_len = self._open.shape[0]
        rets = np.zeros((t_len, n))
        rets[1:] = self._close[1:] / self._close[:-1] - 1.0
        risk_window = ecfg.risk_window
        self.first_bar = decision_history(self.window, risk_window, self._trend_windows)
        if self.first_bar >= t_len - 1:
            trend = f" / trend_windows {self._trend_windows}" if self._trend_windows else ""
            raise ConfigError(
                f"window_size {self.window} / risk_window {risk_window}{trend} (+ "
                f"{WARMUP_BARS} warm-up bars) need more than the {t_len} bars given"
            )
        sector_ids = None
        if ecfg.sectors and ecfg.max_sector_allocation is not None:
            names = sorted(set(ecfg.sectors.values()))
            sector_ids = np.array(
                [names.index(ecfg.sectors[s]) if s in ecfg.sectors else -1 for s in self.symbols]
            )
        self.risk = RiskModel(rolling_covariance(rets, risk_window), ecfg.var_confidence)
        ppy = self.periods_per_year
        self._borrow = borrow_rate(ecfg.borrow_bps_per_year, ppy)
        self._ann_vol = (self.risk.vol * math.sqrt(ppy)).astype(np.float32)
        # full position size of i at bar t (fraction of equity): max_position_size, or under
        # env.vol_target the target over the causal annualised volatility (capped) of the last
        # size_window bars (env.vol_horizon_years; else the risk model's risk_window)
        self.size_window = sizing_window(risk_window, ecfg.vol_horizon_years, ppy)
        size_vol = (
            self.risk.vol
            if self.size_window == risk_window
            else causal_volatility(self._close, self.size_window)
        )
        self._sizes = position_sizes(size_vol, ppy, ecfg.vol_target,
                                     ecfg.vol_target_max_leverage, self.max_position)  # fmt: skip
        iu = np.triu_indices(n, 1)
        self._corr_ut = np.ascontiguousarray(self.risk.corr[:, iu[0], iu[1]], dtype=np.float32)
        self._mean_vol = self.risk.vol.mean(axis=1)
        self._vol_floor = np.maximum(self.risk.vol, 1e-8)
        self._mean_vol_floor = self._vol_floor.mean(axis=1)  # the meta's active-risk unit
        self._gap = np.zeros((t_len, n))
        self._gap[1:] = self._open[1:] / self._close[:-1] - 1.0
        self._intra = self._close / self._open - 1.0

        self.specialists = [specialist_id(s) for s in self.symbols]
        self.possible_agents = list(self.specialists)
        if mode != "specialists":
            self.possible_agents.append(META)
        n_feat = self._n_feat = self._feat_all.shape[2]
        self._state_buf = np.empty((_SPEC_STATE, n))
        self._spec_dim = self.window * n_feat + _SPEC_STATE
        self._meta_dim = (n + 1) + n + 2 + n + n * (n - 1) // 2 + n
        # benchmark-relative proposals are tilts: -1 (out of the instrument) .. 1 (twice the
        # benchmark's size) even long-only (the engine never goes short then)
        low = self._low = -1.0 if self.allow_short or self.relative else 0.0
        if self.discrete:
            self._levels = np.array([-1.0, 0.0, 1.0] if low < 0 else [0.0, 1.0])
        self._obs_spaces: dict[str, spaces.Space] = {}
        self._act_spaces: dict[str, spaces.Space] = {}
        for agent in self.specialists:
            self._obs_spaces[agent] = spaces.Box(-np.inf, np.inf, (self._spec_dim,), np.float32)
            self._act_spaces[agent] = (
                spaces.Discrete(len(self._levels))
                if self.discrete
                else spaces.Box(low, 1.0, (1,), np.float32)
            )
        if mode != "specialists":
            self._obs_spaces[META] = spaces.Box(-np.inf, np.inf, (self._meta_dim,), np.float32)
            self._act_spaces[META] = spaces.Box(0.0, 1.0, (n + 1,), np.float32)
        self._init_kernel_arrays(sector_ids)
        self.agents: list[str] = []
        self._np_random = np.random.default_rng(seed)
        self._seed = seed
        self._alloc_episode(self.first_bar, self._episode_end(self.first_bar))
        self._clear_state()

    def _init_kernel_arrays(self, sector_ids: np.ndarray | None) -> None:
        """Market arrays and parameters in the layouts of envs.engine (built once)."""
        ecfg = self.cfg.env
        n, risk = self.n, self.risk
        parts = self._market_parts(slice(None))
        self._k_market = np.ascontiguousarray(np.stack(parts, axis=1), dtype=np.float64)
        self._k_cov = np.ascontiguousarray(risk.cov, dtype=np.float64)
        self._k_corr = np.ascontiguousarray(risk.corr, dtype=np.float64)
        self._k_ann_vol = np.ascontiguousarray(self._ann_vol, dtype=np.float32)
        self._k_feat = np.ascontiguousarray(self._feat_rows, dtype=np.float32)
        ids = np.full(n, -1, dtype=np.int64)
        n_sectors = 0
        max_sector = ecfg.max_sector_allocation
        if max_sector is not None and sector_ids is not None and (sector_ids >= 0).any():
            ids[:] = np.asarray(sector_ids, dtype=np.int64)
            n_sectors = int(ids.max()) + 1
        self._k_sector_ids = ids
        par = np.zeros(engine.N_PAR)
        par[engine.P_MAX_POS] = self.max_position
        par[engine.P_STOP] = self.stop_loss_pct
        par[engine.P_RATE] = self._rate
        par[engine.P_MAX_VAR] = ecfg.max_portfolio_var
        par[engine.P_Z] = risk.z
        par[engine.P_MAX_CORR] = ecfg.max_correlation_exposure
        par[engine.P_MAX_SECTOR] = max_sector if max_sector is not None else math.inf
        par[engine.P_USE_CORR] = float(n > 1 or ecfg.max_correlation_exposure < 1.0)
        par[engine.P_N_SECTORS] = n_sectors
        par[engine.P_DIV_BONUS] = self.div_bonus
        par[engine.P_CAPITAL] = self.capital
        par[engine.P_META] = float(self.mode != "specialists")
        par[engine.P_BORROW] = self._borrow
        par[engine.P_EXECUTED] = float(self._spec_executed)
        par[engine.P_AMORTIZE] = float(self._amortize)
        par[engine.P_BAND] = self._band
        par[engine.P_END] = float(self.n_bars - 1)  # the episode's last bar, set by _alloc_episode
        par[engine.P_RELATIVE] = float(self.relative)
        par[engine.P_LONG_ONLY] = float(not self.allow_short)
        par[engine.P_TE_WEIGHT] = self.te_weight
        par[engine.P_ACTIVE_LIMITS] = float(self.relative and ecfg.risk_limits == "active")
        par[engine.P_ACTIVE_SCALE] = ecfg.active_scale
        self._k_par = par
        self._k_no_meta = np.empty(0, dtype=np.float32)

    def _market_parts(self, rows: slice) -> tuple[np.ndarray, ...]:
        """The rows `rows` of envs.engine's market layout, part by part (stacked on axis 1)."""
        mean_vol = self._mean_vol[rows]
        return (
            self._open[rows], self._close[rows], self._gap[rows], self._intra[rows],
            self._vol_floor[rows], np.broadcast_to(mean_vol[:, None], (len(mean_vol), self.n)),
            self._lows[rows], self._highs[rows], self._real[rows].astype(np.float64),
            self._sizes[rows], self._benchmark_rows(rows),
        )  # fmt: skip

    def _benchmark_rows(self, rows: slice) -> np.ndarray:
        """env.benchmark's exposures at the bars `rows`. buy_and_hold is bought at `first_bar`,
        where every episode of an evaluation (and so a backtest's baselines) starts, and drifts
        from there; before it, 1/n (no later price is read: causal)."""
        growth = None
        if self.benchmark == "buy_and_hold":  # (set_bar: one row, O(1))
            before = max(0, self.first_bar - rows.indices(self.n_bars)[0])
            growth = growth_since(self._close[rows], self._close[self.first_bar], before)
        return benchmark_exposures(self.benchmark, self._sizes[rows], growth)

    def _observed_features(self, features: np.ndarray, t: int | None = None) -> np.ndarray:
        """Scaled feature rows (n instruments first, features last) as the specialists observe
        them: with env.cross_sectional, each instrument's rows next to their gap to the
        cross-section's mean; with env.trend_windows, then its trend t-statistics from the
        closes (the constructor's (n, T, F) for every bar, `set_bar`'s (n, F) for bar `t`)."""
        parts = [features]
        if self.cfg.env.cross_sectional:
            parts.append(cross_sectional(features))
        if self._trend_sums is not None:
            sums, squares = self._trend_sums
            if t is not None:  # bar t's return extends the sums as their cumsum did
                r = self._close[t] / self._close[t - 1] - 1.0
                sums[t] = sums[t - 1] + r
                squares[t] = squares[t - 1] + r * r
            parts.append(trend_rows(sums, squares, self._trend_windows, t))
        if len(parts) == 1:
            return features
        return np.concatenate([p.astype(features.dtype, copy=False) for p in parts], axis=-1)

    def set_bar(
        self,
        t: int,
        ohlc: np.ndarray,
        real: np.ndarray,
        features: np.ndarray,
        cov: np.ndarray,
        size_var: np.ndarray | None = None,
    ) -> None:
        """Write bar t of a live feed over a placeholder row (an env built over the bars so far
        plus placeholder rows): prices (n, 4: open, high, low, close), real flags (n,), scaled
        feature rows (n, F; the env.cross_sectional columns are added here) and the bar's
        covariance (n, n; envs.risk.RollingCovariance), and with env.vol_horizon_years its
        variances over `size_window` bars (`size_var`, n: the volatility that sizes). Every
        derived row t is computed by the constructor's own functions on that one row; rows
        before t are untouched (every array is causal), rows after t stay placeholders until
        set. The env must not have stepped
        past t - 1."""
        if not 0 < t < self.n_bars or self._t >= t:
            raise ValueError(f"set_bar({t}): the env stands at bar {self._t} of {self.n_bars}")
        ecfg, ppy = self.cfg.env, self.periods_per_year
        o, h, lo, c = (np.asarray(ohlc[:, k], dtype=np.float64) for k in range(4))
        self._open[t], self._highs[t], self._lows[t], self._close[t] = o, h, lo, c
        self._real[t] = real
        self._all_real = self._all_real and bool(np.all(real))
        features = self._observed_features(features, t)
        self._feat_all[:, t] = features
        f = self._n_feat
        self._k_feat[:, t * f : (t + 1) * f] = features  # (the same memory, as a rule)
        one = RiskModel(np.asarray(cov, dtype=np.float64)[None], ecfg.var_confidence)
        self.risk.cov[t], self.risk.vol[t], self.risk.corr[t] = one.cov[0], one.vol[0], one.corr[0]
        self._k_cov[t], self._k_corr[t] = one.cov[0], one.corr[0]
        self._ann_vol[t] = self._k_ann_vol[t] = (one.vol * math.sqrt(ppy)).astype(np.float32)[0]
        if self.size_window != ecfg.risk_window and size_var is None:
            raise ValueError(f"set_bar({t}): size_var ({self.size_window}-bar variances) missing")
        size_vol = (
            one.vol
            if size_var is None
            else np.sqrt(np.maximum(np.asarray(size_var, dtype=np.float64), 0.0))[None]
        )
        sizes = position_sizes(size_vol, ppy, ecfg.vol_target, ecfg.vol_target_max_leverage,
                               self.max_position)  # fmt: skip
        self._sizes[t] = sizes[0]
        iu = np.triu_indices(self.n, 1)
        self._corr_ut[t] = one.corr[0, iu[0], iu[1]].astype(np.float32)
        self._mean_vol[t] = one.vol.mean(axis=1)[0]
        self._vol_floor[t] = np.maximum(one.vol[0], 1e-8)
        self._mean_vol_floor[t] = self._vol_floor[t : t + 1].mean(axis=1)[0]
        self._gap[t] = o / self._close[t - 1] - 1.0
        self._intra[t] = c / o - 1.0
        self._k_market[t] = np.stack(self._market_parts(slice(t, t + 1)), axis=1)[0]

    def benchmark_exposures(self) -> np.ndarray:
        """(T, n) exposures of the benchmark portfolio at each bar, fractions of equity
        (envs.execution.benchmark_exposures of env.benchmark; all 0 without one)."""
        return self._benchmark_rows(slice(None))

    # ------------------------------------------------------------------------------- spaces
    def observation_space(self, agent: str) -> spaces.Space:
        """Observation space of `agent` (the same object on every call)."""
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        """Action space of `agent` (the same object on every call)."""
        return self._act_spaces[agent]

    # ------------------------------------------------------------------------------- episode
    def _episode_end(self, start: int) -> int:
        if self.eval_mode:
            return self.n_bars - 1
        return min(self.n_bars - 1, start + self.episode_length)

    def _alloc_episode(self, start: int, end: int) -> None:
        self._start, self._end = start, end
        steps = end - start
        n = self.n
        self._h_breach = np.zeros(steps + 1, dtype=bool)
        # one (steps + 1, 3 + (n + 1) + n + 2) table, see _history()
        self._k_par[engine.P_END] = float(end)
        self._k_hist = np.zeros((steps + 1, 6 + 2 * n))

    def _clear_state(self) -> None:
        n = self.n
        self._t = self._start
        self._steps = 0
        self._equity = self.capital
        self._proposal = np.zeros(n)
        self._weights = np.full(n + 1, 0.0)
        if self.mode == "specialists":
            self._weights[:n] = 1.0 / n
        else:
            self._weights[n] = 1.0  # all cash until the meta first acts
        self._var_est = 0.0
        self._meta_acc = 0.0
        self.reward_fn.reset(self.capital)  # the meta's reward state (peak, EMAs) is per episode
        self._k_state = np.zeros((engine.N_STATE, n))
        self._k_sc = np.zeros(engine.N_SC + n)
        self._k_sc[[engine.S_CASH, engine.S_EQUITY, engine.S_PEAK]] = self.capital
        self._k_cnt = np.zeros(engine.N_CNT, dtype=np.int64)
        self._k_rs = np.zeros((self.cfg.env.risk_window + 2, n))
        self._k_hist[0, 0] = self.capital
        self._k_hist[0, 3 : 3 + n + 1] = self._weights

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Start an episode (random start in training, the full pass in eval_mode)."""
        if seed is not None:
            self._np_random = np.random.default_rng(seed)
        last_start = self.n_bars - 1 - self.episode_length
        if self.eval_mode or not self.random_start or last_start <= self.first_bar:
            start = self.first_bar
        elif self._curriculum_k:  # the easiest `_curriculum_k` starts only
            start = int(self._curriculum_order[self._np_random.integers(0, self._curriculum_k)])
        else:
            start = int(self._np_random.integers(self.first_bar, last_start + 1))
        self._alloc_episode(start, self._episode_end(start))
        self._clear_state()
        self.agents = list(self.possible_agents)
        obs = self._observe(True)
        info = self._portfolio_info(0.0)
        return obs, {a: info for a in obs}

    # ---------------------------------------------------------------------------- curriculum
    def episode_difficulty(self) -> np.ndarray:
        """Difficulty of every training episode start `first_bar + i`: the realised volatility
        of the equal-weight basket's open-to-open log returns over the episode's bars.

        Used only to order training episodes (rl_trading.training.curriculum); observations
        never see it.
        """
        last_start = self.n_bars - 1 - self.episode_length
        if last_start < self.first_bar:
            return np.zeros(0)
        basket = np.log(self._open[1:] / self._open[:-1]).mean(axis=1)
        csum = np.concatenate([[0.0], np.cumsum(basket**2)])
        starts = np.arange(self.first_bar, last_start + 1)  # episodes end by bar n_bars - 1
        length = self.episode_length
        return np.sqrt((csum[starts + length] - csum[starts]) / length)

    def set_curriculum_level(self, level: float | None) -> None:
        """Draw training episodes from the easiest `level` fraction of starts (0 < level <= 1);
        None or 1 restores uniform random starts (the same draws as without a curriculum)."""
        if level is None or level >= 1.0:
            self._curriculum_k, self.curriculum_level = 0, 1.0
            return
        if not level > 0.0:  # also NaN
            raise ConfigError(f"curriculum level must be in (0, 1], got {level}")
        if self._curriculum_order is None:
            difficulty = self.episode_difficulty()
            self._curriculum_order = self.first_bar + np.argsort(difficulty, kind="stable")
        order = self._curriculum_order
        if len(order) == 0:
            return
        self._curriculum_k = max(1, int(np.ceil(level * len(order))))
        self.curriculum_level = float(level)

    # ------------------------------------------------------------------------------- observe
    def _observe(self, meta_now: bool) -> dict[str, np.ndarray]:
        spec, meta = self._new_obs_buffers()
        engine.observe(
            self._t, self._k_market, self._k_feat, self._k_ann_vol, self._corr_ut,
            self._k_par, self._k_state, self._proposal, self._weights, self._k_sc,
            self.window, spec, meta,
        )  # fmt: skip
        return self._obs_dict(spec, meta, meta_now)

    def _new_obs_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        spec = np.empty((self.n, self._spec_dim), dtype=np.float32)
        if self.mode == "specialists":
            return spec, self._k_no_meta
        return spec, np.empty(self._meta_dim, dtype=np.float32)

    def _obs_dict(self, spec: np.ndarray, meta: np.ndarray, meta_now: bool) -> dict:
        obs = dict(zip(self.specialists, spec, strict=True))
        if self.mode != "specialists" and (meta_now or self.meta_obs_every_step):
            obs[META] = meta
        return obs

    def _current_totals(self) -> dict[str, Any]:
        """The running totals (costs, stop-losses, scale-downs, breaches) as a new dict."""
        c = self._k_cnt.tolist()
        return {
            "costs": float(self._k_sc[engine.S_COSTS]),
            "borrow_costs": float(self._k_sc[engine.S_BORROWS]),
            "stop_losses": c[0],
            "sector_scaledowns": c[1],
            "correlation_scaledowns": c[2],
            "var_scaledowns": c[3],
            "var_breaches": c[4],
        }

    def _history(self, s: int) -> tuple[np.ndarray, ...]:
        """Copies of the first `s` rows of equity, weights, exposures, costs, VaR estimates,
        benchmark returns and traded notional."""
        h, n = self._k_hist[:s], self.n
        return (
            h[:, 0].copy(), h[:, 3 : 4 + n].copy(), h[:, 4 + n : 4 + 2 * n].copy(),
            h[:, 1].copy(), h[:, 2].copy(), h[:, 4 + 2 * n].copy(), h[:, 5 + 2 * n].copy(),
        )  # fmt: skip

    def _portfolio_info(self, cost: float) -> dict[str, Any]:
        steps = max(self._steps, 1)
        info = self._current_totals()
        info["equity"] = float(self._equity)
        info["cost"] = float(cost)
        info["var_estimate"] = float(self._var_est)
        info["var_compliance"] = 1.0 - info["var_breaches"] / steps
        info["bar"] = self._t
        return info

    # ------------------------------------------------------------------------------- step
    def _read_proposals(self, actions: dict[str, Any]) -> None:
        try:  # fast path: every specialist acted with a scalar or a (1,) array
            vals = np.array([actions[a] for a in self.specialists], dtype=np.float64)
            vals = vals.reshape(self.n)
        except (KeyError, ValueError, TypeError):
            vals = self._proposal.copy() if not self.discrete else None
            if self.discrete:
                vals = np.array(
                    [
                        np.asarray(actions[a]).reshape(-1)[0] if a in actions else np.nan
                        for a in self.specialists
                    ],
                    dtype=np.float64,
                )
            else:
                for i, a in enumerate(self.specialists):
                    if a in actions:
                        vals[i] = float(np.asarray(actions[a], dtype=np.float64).reshape(-1)[0])
        if self.discrete:
            keep = ~np.isfinite(vals)
            idx = np.where(keep, 0, vals).astype(np.int64)
            self._proposal = np.where(keep, self._proposal, self._levels[idx])
        else:
            # np.clip(vals, low, 1) with two in-place ufuncs (vals is a fresh array here)
            # (maximum(low, v), not (v, low): np.clip keeps v = -0.0 at low = 0.0, so must we)
            np.minimum(np.maximum(self._low, vals, out=vals), 1.0, out=vals)
            total = np.add.reduce(vals)
            if total != total:  # some NaN (inf was clipped): NaN -> flat
                vals = np.where(vals == vals, vals, 0.0)
            self._proposal = vals

    def _read_meta(self, act: Any) -> None:
        w = np.maximum(0.0, np.asarray(act, dtype=np.float64).reshape(-1))
        np.minimum(w, 1.0, out=w)  # = np.clip(act, 0, 1), on the fresh array
        total = float(np.add.reduce(w))
        if total > 1e-8 and math.isfinite(total):
            self._weights = w / total
        else:
            w = np.where(np.isfinite(w), w, 0.0)
            total = float(np.add.reduce(w))
            if total > 1e-8:
                self._weights = w / total
            else:
                self._weights = np.zeros(self.n + 1)
                self._weights[self.n] = 1.0

    def _read_actions(self, actions: dict[str, Any]) -> tuple[int, np.ndarray, np.ndarray]:
        """Take this bar's specialist proposals and, on its steps, the meta's weights; returns
        (steps so far, previous proposals, new proposals) for both step paths."""
        steps = self._steps
        prev_prop = self._proposal
        self._read_proposals(actions)
        if self.mode != "specialists" and steps % self.meta_interval == 0:
            act = actions.get(META)
            if act is not None:
                self._read_meta(act)
        return steps, prev_prop, self._proposal

    def _finish_step(
        self,
        obs: dict[str, np.ndarray],
        rewards: dict[str, float],
        cost: float,
        terminated: bool,
        truncated: bool,
        meta_next: bool,
    ) -> tuple[dict, dict, dict, dict, dict]:
        """The end of a step: deliver the meta's accumulated reward when it observes at a
        decision step, scale every reward by reward.scale, build infos and flags."""
        if (terminated or truncated) and self._amortize > 1:
            self._meta_acc -= self.reward_fn.flush()  # the cost debt still owed
        if META in obs:
            rewards[META] = self._meta_acc if meta_next else 0.0
            if meta_next:
                self._meta_acc = 0.0
        if self.reward_scale != 1.0:  # reward.scale: every agent's reward, once, here
            rewards = {a: r * self.reward_scale for a, r in rewards.items()}
        info = self._portfolio_info(cost)
        infos = dict.fromkeys(obs, info)
        terms = dict.fromkeys(obs, terminated)
        truncs = dict.fromkeys(obs, truncated)
        if terminated or truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def step(
        self, actions: dict[str, Any], *, absolute: bool = False
    ) -> tuple[dict, dict, dict, dict, dict]:
        """Execute one bar for every agent: the rules of envs.engine.step (module docstring).
        `absolute`: this step's targets ignore env.benchmark (with `flat_actions`: flat)."""
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset()")
        if absolute and self.relative:
            self._k_par[engine.P_RELATIVE] = 0.0
            try:
                return self.step(actions)
            finally:
                self._k_par[engine.P_RELATIVE] = 1.0
        steps, prev_prop, prop = self._read_actions(actions)
        t = self._t
        eq_prev = self._equity
        spec, meta = self._new_obs_buffers()
        sc = self._k_sc
        engine.step(
            t, steps, self._k_market, self._k_cov, self._k_corr, self._k_ann_vol, self._corr_ut,
            self._k_feat, self._k_sector_ids, self._k_par, self._k_state, prop, prev_prop,
            self._weights, sc, self._k_cnt, self._k_rs, self._k_hist, self.window, spec, meta,
        )  # fmt: skip
        vals = sc.tolist()
        _, equity, _, var_after, cost, _, div_term, breach = vals[:8]
        self._equity = equity
        self._var_est = var_after
        rewards = dict(zip(self.specialists, vals[engine.N_SC :], strict=True))
        meta_r = self.reward_fn(eq_prev, equity, cost)
        if self.mode != "specialists":
            if self.relative:  # active return over the benchmark, active-risk penalty
                bench = vals[engine.S_BENCH_RET]
                meta_r -= math.log1p(bench) if bench > -1.0 else 0.0
                if self.te_weight and eq_prev > 0:
                    vol = self._mean_vol_floor[t]
                    z = (equity / eq_prev - 1.0 - bench) / vol
                    meta_r -= engine.active_penalty(z, self.te_weight) * vol
            elif self.risk_penalty:
                meta_r -= self.risk_penalty * var_after
            if self.div_bonus:
                meta_r += np.float64(div_term)
            self._meta_acc += meta_r

        t1 = t + 1
        self._t = t1
        steps += 1
        self._steps = steps
        self._h_breach[steps] = breach != 0.0
        terminated = equity <= 0.0
        truncated = (not terminated) and t1 >= self._end
        meta_next = terminated or truncated or (steps % self.meta_interval == 0)
        obs = self._obs_dict(spec, meta, meta_next)
        return self._finish_step(obs, rewards, cost, terminated, truncated, meta_next)

    def book(self) -> Book:
        """Units, targets, exposures, cash, equity and stop count where the env stands."""
        n, st = self.n, self._steps
        expo = self._k_hist[st, 4 + n : 4 + 2 * n] if st else np.zeros(n)
        return Book(
            bar=self._t, units=self._k_state[engine.R_UNITS].copy(),
            targets=self._k_state[engine.R_TARGET].copy(), exposures=expo.copy(),
            open=self._open[self._t].copy(), cash=float(self._k_sc[engine.S_CASH]),
            equity=float(self._equity), stop_losses=int(self._k_cnt[engine.C_STOP]),
            traded=float(self._k_hist[st, 5 + 2 * n]) if st else 0.0,
            stop_prices=self._k_state[engine.R_STOP_PX].copy(),
        )  # fmt: skip

    def flat_actions(self) -> dict[str, Any]:
        """Actions proposing no position (and, with a meta, all cash): with `step(...,
        absolute=True)` they take every target to 0 (a kill switch)."""
        flat = [float(list(self._levels).index(0.0))] if self.discrete else [0.0]
        out: dict[str, Any] = {a: list(flat) for a in self.specialists}
        if META in self.possible_agents:
            out[META] = [0.0] * self.n + [1.0]
        return out

    def adopt_episode(self, other: HierarchicalTradingEnv) -> None:
        """Continue the running episode of `other`, an env over a prefix of this env's bars
        (every array is causal, so the shared bars have the same rows): a growing feed."""
        self._alloc_episode(other._start, self._episode_end(other._start))
        rows = other._steps + 1
        self._k_hist[:rows] = other._k_hist[:rows]
        self._h_breach[:rows] = other._h_breach[:rows]
        for name in _EPISODE_STATE:
            setattr(self, name, getattr(other, name))
        self.agents = list(self.possible_agents)

    @property
    def target_exposures(self) -> np.ndarray:
        """Target exposures (fractions of equity) after the risk limits, as last executed."""
        return self._k_state[engine.R_TARGET].copy()

    def obs_layout(self) -> dict[str, int]:
        """Layout of a specialist observation: window_size x n_features, then state_dim."""
        return {
            "window_size": self.window,
            "n_features": int(self._feat_all.shape[2]),
            "state_dim": _SPEC_STATE,
            "meta_dim": self._meta_dim,
        }

    # ------------------------------------------------------------------------------- results
    def episode_summary(self, periods_per_year: float | str | None = None) -> dict[str, Any]:
        """The finished (or running) episode as arrays, plus metrics.summarize of its equity.

        Keys: equity (steps+1,), weights (steps+1, n+1; last column cash), exposures
        (steps+1, n; signed fractions of equity after each bar), costs and traded (notional,
        per step; row 0 is the start), var_estimates
        and var_breaches (per step), timestamps, symbols, totals (costs, stop-losses,
        scale-downs, breaches, borrow costs), var_compliance, metrics (periods_per_year
        defaults to the run's resolved bars per year; with env.benchmark also the information
        ratio and tracking error against it), benchmark (env.benchmark), benchmark_returns
        (per step, held without costs) and benchmark_exposures (steps+1, n; decided at each
        bar's close).
        """
        s = self._steps + 1
        equity, weights, expo, costs, var_est, bench_ret, traded = self._history(s)
        totals = self._current_totals()
        ppy = self.periods_per_year if periods_per_year is None else periods_per_year
        return {
            "equity": equity,
            "weights": weights,
            "exposures": expo,
            "costs": costs,
            "traded": traded,
            "var_estimates": var_est,
            "var_breaches": self._h_breach[:s].copy(),
            "timestamps": self.index[self._start : self._start + s],
            "symbols": list(self.symbols),
            "totals": totals,
            "total_costs": float(totals["costs"]),
            "borrow_costs": float(totals["borrow_costs"]),
            "stop_losses": int(totals["stop_losses"]),
            "var_compliance": metrics.var_compliance_rate(self._h_breach[1:s]),
            "metrics": self._summary_metrics(equity, traded, bench_ret, ppy),
            "benchmark": self.benchmark,
            "benchmark_returns": bench_ret[1:],
            "benchmark_exposures": self.benchmark_exposures()[self._start : self._start + s],
        }

    def _summary_metrics(
        self, equity: np.ndarray, traded: np.ndarray, bench_ret: np.ndarray, ppy: Any
    ) -> dict[str, float]:
        """metrics.summarize of the equity curve, plus the information ratio and tracking error
        against the env's benchmark (held without costs) in benchmark-relative mode."""
        out = metrics.summarize(equity, traded, periods_per_year=ppy)
        if self.relative and len(equity) > 2:
            rets = equity[1:] / equity[:-1] - 1.0
            out.update(metrics.active_metrics(rets, bench_ret[1:], periods_per_year=ppy))
        return out

    def render(self) -> None:
        """No rendering (reports come from `episode_summary`)."""
        return None

    def close(self) -> None:
        """Nothing to release."""
        return None


def parallel_env(**kwargs: Any) -> HierarchicalTradingEnv:
    """PettingZoo-style constructor of the parallel env (keyword arguments of the class)."""
    return HierarchicalTradingEnv(**kwargs)


def env(**kwargs: Any) -> Any:
    """AEC version of the env (pettingzoo.utils.parallel_to_aec)."""
    return parallel_to_aec(parallel_env(**kwargs))
