"""Hierarchical multi-instrument PettingZoo ParallelEnv: one specialist per instrument + a meta.

Agents: ``specialist_<SYMBOL>`` for each instrument and ``meta``. One shared capital
(cfg.env.initial_capital), fee cfg.env.transaction_cost, same execution model as TradingEnv
(envs.execution: target chosen at bar t filled at bar t+1's open, marked at its close; no fills
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
* Target exposure on i = w_i x p_i x max_position_size x equity, then the risk limits of
  envs.risk (sector, correlation, VaR) scale orders down; every scale-down is counted.
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
  re-trade an instrument only when its target moved by more than the band x full size).
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
* Speed: with numba installed the per-step portfolio arithmetic runs in the compiled kernels
  of envs.kernels (``kernels=None``: when available; False: the numpy path below, the
  reference). Both give the same trajectories up to last-bit rounding of dot products.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from gymnasium import spaces
from pettingzoo import ParallelEnv
from pettingzoo.utils import parallel_to_aec

from envs.common import (
    RewardShaper,
    amortize_costs,
    env_periods_per_year,
    prepare_instrument,
    resolve_config,
)
from envs.execution import CostModel, borrow_rate, vol_target_size
from envs.risk import RiskModel, rolling_covariance
from rl_trading import metrics
from rl_trading.config import AppConfig
from rl_trading.data.features import WARMUP_BARS, FeatureScaler
from rl_trading.errors import ConfigError

__all__ = ["META", "MODES", "HierarchicalTradingEnv", "env", "parallel_env", "specialist_id"]

META = "meta"
MODES = ("joint", "meta", "specialists")
_SPEC_STATE = 5


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
        kernels: bool | None = None,
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
        self.div_bonus = rcfg.diversification_bonus_weight
        self.reward_fn = RewardShaper(rcfg)

        scalers = scalers or {}
        arrays = [prepare_instrument(bars[s], scalers.get(s), symbol=s) for s in self.symbols]
        self.scalers = {s: a.scaler for s, a in zip(self.symbols, arrays, strict=True)}
        self._feat_all = np.ascontiguousarray(np.stack([a.features for a in arrays], axis=0))
        # (n, T x F) view: the window of bar t is one 2-D slice, copied once into the obs
        self._feat_rows = self._feat_all.reshape(n, -1)
        self._open = np.ascontiguousarray(np.stack([a.open for a in arrays], axis=1))
        self._close = np.ascontiguousarray(np.stack([a.close for a in arrays], axis=1))
        self._lows = np.ascontiguousarray(np.stack([a.low for a in arrays], axis=1))
        self._highs = np.ascontiguousarray(np.stack([a.high for a in arrays], axis=1))
        # (T, n) bool: False on forward-filled bars (no fills, no stops there)
        self._real = np.ascontiguousarray(np.stack([a.real for a in arrays], axis=1))
        self._all_real = bool(self._real.all())
        self.n_bars = t_len = self._open.shape[0]
        rets = np.zeros((t_len, n))
        rets[1:] = self._close[1:] / self._close[:-1] - 1.0
        risk_window = ecfg.risk_window
        self.first_bar = max(WARMUP_BARS, self.window - 1, risk_window)
        if self.first_bar >= t_len - 1:
            raise ConfigError(
                f"window_size {self.window} / risk_window {risk_window} (+ {WARMUP_BARS} "
                f"warm-up bars) need more than the {t_len} bars given"
            )
        sector_ids = None
        if ecfg.sectors and ecfg.max_sector_allocation is not None:
            names = sorted(set(ecfg.sectors.values()))
            sector_ids = np.array(
                [names.index(ecfg.sectors[s]) if s in ecfg.sectors else -1 for s in self.symbols]
            )
        self.risk = RiskModel(
            rolling_covariance(rets, risk_window),
            self.max_position,
            ecfg.max_portfolio_var,
            ecfg.var_confidence,
            ecfg.max_correlation_exposure,
            ecfg.max_sector_allocation,
            sector_ids,
        )
        ppy = self.periods_per_year
        self._borrow = borrow_rate(ecfg.borrow_bps_per_year, ppy)
        self._ann_vol = (self.risk.vol * math.sqrt(ppy)).astype(np.float32)
        # vol targeting (env.vol_target): full position size of i at bar t, fraction of equity
        self._scale: np.ndarray | None = None
        if ecfg.vol_target is not None:
            ann = self.risk.vol * math.sqrt(ppy)
            self._scale = vol_target_size(ann, ecfg.vol_target, ecfg.vol_target_max_leverage)
        iu = np.triu_indices(n, 1)
        self._corr_ut = np.ascontiguousarray(self.risk.corr[:, iu[0], iu[1]], dtype=np.float32)
        self._mean_vol = self.risk.vol.mean(axis=1)
        self._vol_floor = np.maximum(self.risk.vol, 1e-8)
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
        low = self._low = -1.0 if self.allow_short else 0.0
        if self.discrete:
            self._levels = np.array([-1.0, 0.0, 1.0] if self.allow_short else [0.0, 1.0])
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
        self.use_kernels = _use_kernels(kernels, n)
        if self.use_kernels:
            self._init_kernel_arrays(sector_ids)
        self.agents: list[str] = []
        self._np_random = np.random.default_rng(seed)
        self._seed = seed
        self._alloc_episode(self.first_bar, self._episode_end(self.first_bar))
        self._clear_state()

    def _pos_scale(self, t: int) -> Any:
        """Full position size at bar t, fraction of equity: max_position_size, or per
        instrument under vol targeting."""
        return self.max_position if self._scale is None else self._scale[t]

    def _init_kernel_arrays(self, sector_ids: np.ndarray | None) -> None:
        """Market arrays and parameters in the layouts of envs.kernels (built once)."""
        k = _kernel_module()
        n, risk = self.n, self.risk
        mean_vol = np.broadcast_to(self._mean_vol[:, None], (self.n_bars, n))
        scale = (
            self._scale if self._scale is not None else np.full_like(self._open, self.max_position)
        )
        parts = (
            self._open, self._close, self._gap, self._intra, self._vol_floor, mean_vol,
            self._lows, self._highs, self._real.astype(np.float64), scale,
        )  # fmt: skip
        self._k_market = np.ascontiguousarray(np.stack(parts, axis=1), dtype=np.float64)
        self._k_cov = np.ascontiguousarray(risk.cov, dtype=np.float64)
        self._k_corr = np.ascontiguousarray(risk.corr, dtype=np.float64)
        self._k_ann_vol = np.ascontiguousarray(self._ann_vol, dtype=np.float32)
        self._k_feat = np.ascontiguousarray(self._feat_rows, dtype=np.float32)
        ids = np.full(n, -1, dtype=np.int64)
        n_sectors = 0
        if risk.sector_masks:
            ids[:] = np.asarray(sector_ids, dtype=np.int64)
            n_sectors = int(ids.max()) + 1
        self._k_sector_ids = ids
        par = np.zeros(k.N_PAR)
        par[k.P_MAX_POS] = self.max_position
        par[k.P_STOP] = self.stop_loss_pct
        par[k.P_RATE] = self._rate
        par[k.P_MAX_VAR] = risk.max_var
        par[k.P_Z] = risk.z
        par[k.P_MAX_CORR] = risk.max_corr
        par[k.P_MAX_SECTOR] = risk.max_sector if risk.max_sector is not None else math.inf
        par[k.P_USE_CORR] = float(risk.use_corr)
        par[k.P_N_SECTORS] = n_sectors
        par[k.P_DIV_BONUS] = self.div_bonus
        par[k.P_CAPITAL] = self.capital
        par[k.P_META] = float(self.mode != "specialists")
        par[k.P_BORROW] = self._borrow
        par[k.P_EXECUTED] = float(self._spec_executed)
        par[k.P_AMORTIZE] = float(self._amortize)
        par[k.P_BAND] = self._band
        par[k.P_END] = float(self.n_bars - 1)  # the episode's last bar, set by _alloc_episode
        self._k_par = par
        self._k_no_meta = np.empty(0, dtype=np.float32)

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
        if self.use_kernels:  # one (steps + 1, 3 + (n + 1) + n) table, see _history()
            self._k_par[_kernel_module().P_END] = float(end)
            self._k_hist = np.zeros((steps + 1, 3 + (n + 1) + n))
            return
        self._h_equity = np.empty(steps + 1)
        self._h_weights = np.empty((steps + 1, n + 1))
        self._h_expo = np.empty((steps + 1, n))
        self._h_cost = np.zeros(steps + 1)
        self._h_var = np.zeros(steps + 1)

    def _clear_state(self) -> None:
        n = self.n
        self._t = self._start
        self._steps = 0
        self._cash = self.capital
        self._equity = self.capital
        self._peak = self.capital
        self._units = np.zeros(n)
        self._entry = np.zeros(n)
        self._bars_in = np.zeros(n)
        self._target_x = np.zeros(n)
        self._proposal = np.zeros(n)
        self._weights = np.full(n + 1, 0.0)
        if self.mode == "specialists":
            self._weights[:n] = 1.0 / n
        else:
            self._weights[n] = 1.0  # all cash until the meta first acts
        self._var_est = 0.0
        self._meta_acc = 0.0
        self.reward_fn.reset(self.capital)  # the meta's reward state (peak, EMAs) is per episode
        self._spec_stats = metrics.RollingSharpeArray(self.cfg.env.risk_window, n)
        self._spec_debt = np.zeros(n)  # cost debt per specialist (reward.cost_amortization)
        self._totals = {
            "costs": 0.0,
            "borrow_costs": 0.0,
            "stop_losses": 0,
            "sector_scaledowns": 0,
            "correlation_scaledowns": 0,
            "var_scaledowns": 0,
            "var_breaches": 0,
        }
        if self.use_kernels:
            k = _kernel_module()
            self._k_state = np.zeros((k.N_STATE, n))
            self._k_sc = np.zeros(k.N_SC + n)
            self._k_sc[[k.S_CASH, k.S_EQUITY, k.S_PEAK]] = self.capital
            self._k_cnt = np.zeros(k.N_CNT, dtype=np.int64)
            self._k_rs = np.zeros((self.cfg.env.risk_window + 2, n))
            self._k_hist[0, 0] = self.capital
            self._k_hist[0, 3 : 3 + n + 1] = self._weights
            return
        self._h_equity[0] = self.capital
        self._h_weights[0] = self._weights
        self._h_expo[0] = 0.0

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
    def _spec_obs_all(self) -> np.ndarray:
        """(n, spec_dim) specialist observations of bar t in one array (rows go to agents)."""
        t, n = self._t, self.n
        n_feat = self._n_feat
        out = np.empty((n, self._spec_dim), dtype=np.float32)
        stop = (t + 1) * n_feat
        out[:, :-_SPEC_STATE] = self._feat_rows[:, stop - self.window * n_feat : stop]
        units = self._units
        price = self._close[t]
        eq = self._equity
        entry = self._entry
        st = self._state_buf  # (5, n) float64, written column-wise into `out` in one go
        if eq > 0:
            np.divide(np.multiply(units, price, out=st[0]), self._pos_scale(t) * eq, out=st[0])
        else:
            st[0] = 0.0
        st[1] = self._proposal
        # unrealised P&L fraction: sign(units) x (price / entry - 1), 0 when flat
        np.multiply(np.subtract(price, entry, out=st[2]), np.sign(units), out=st[2])
        np.divide(st[2], np.where(entry > 0, entry, 1.0), out=st[2])
        np.multiply(self._bars_in, 0.01, out=st[3])
        st[4] = self._weights[:n]
        out[:, -_SPEC_STATE:] = st.T
        return out

    def _meta_obs(self) -> np.ndarray:
        t = self._t
        eq = self._equity
        expo = self._units * self._close[t] / (self._pos_scale(t) * eq) if eq > 0 else self._units
        return np.concatenate(
            (
                self._weights,
                expo,
                (eq / self.capital - 1.0, 1.0 - eq / self._peak),
                self._ann_vol[t],
                self._corr_ut[t],
                self._proposal,
            ),
            dtype=np.float32,
        )

    def _observe(self, meta_now: bool) -> dict[str, np.ndarray]:
        if self.use_kernels:
            spec, meta = self._new_obs_buffers()
            _kernel_module().observe(
                self._t, self._k_market, self._k_feat, self._k_ann_vol, self._corr_ut,
                self._k_par, self._k_state, self._proposal, self._weights, self._k_sc,
                self.window, spec, meta,
            )  # fmt: skip
            return self._obs_dict(spec, meta, meta_now)
        rows = self._spec_obs_all()
        obs = dict(zip(self.specialists, rows, strict=True))
        if self.mode != "specialists" and (meta_now or self.meta_obs_every_step):
            obs[META] = self._meta_obs()
        return obs

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
        if not self.use_kernels:
            return dict(self._totals)
        c = self._k_cnt.tolist()
        k = _kernel_module()
        return {
            "costs": float(self._k_sc[k.S_COSTS]),
            "borrow_costs": float(self._k_sc[k.S_BORROWS]),
            "stop_losses": c[0],
            "sector_scaledowns": c[1],
            "correlation_scaledowns": c[2],
            "var_scaledowns": c[3],
            "var_breaches": c[4],
        }

    def _history(self, s: int) -> tuple[np.ndarray, ...]:
        """Copies of the first `s` rows of equity, weights, exposures, costs, VaR estimates."""
        if not self.use_kernels:
            hist = (self._h_equity, self._h_weights, self._h_expo, self._h_cost, self._h_var)
            return tuple(h[:s].copy() for h in hist)
        h, n = self._k_hist[:s], self.n
        return (
            h[:, 0].copy(), h[:, 3 : 4 + n].copy(), h[:, 4 + n :].copy(),
            h[:, 1].copy(), h[:, 2].copy(),
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

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Execute one bar for every agent (see the module docstring for the exact model)."""
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset()")
        if self.use_kernels:
            return self._step_kernel(actions)
        steps, prev_prop, prop = self._read_actions(actions)
        t = self._t
        t1 = t + 1
        n = self.n
        opn = self._open[t1]
        cls = self._close[t1]
        eq_prev = self._equity
        units = self._units
        entry = self._entry
        cash = self._cash
        rate = self._rate
        totals = self._totals

        executed = self._spec_executed
        if executed:  # per-instrument P&L: value at the last close, cash flows, trading costs
            value0 = units * self._close[t]
            flow = np.zeros(n)
            tcost = np.zeros(n)

        # targets and risk limits (covariance known at bar t)
        if self._scale is None:
            x = self._weights[:n] * prop * self.max_position
            x, n_sec, n_corr, n_var, var_after = self.risk.limit(t, x)
        else:  # vol targeting: full size = the target volatility (capped); limits on shares
            x = self._weights[:n] * prop * self._scale[t]
            x, n_sec, n_corr, n_var, var_after = self.risk.limit(t, x, self._scale[t])
        if n_sec or n_corr or n_var:
            totals["sector_scaledowns"] += n_sec
            totals["correlation_scaledowns"] += n_corr
            totals["var_scaledowns"] += n_var

        # execution at the next open: trade only instruments whose target changed, on real bars
        # (an order for a forward-filled bar waits: its target stays unexecuted)
        if self._band > 0.0:  # no-trade band (env.rebalance_band): exits to flat always fill
            full = self.max_position if self._scale is None else self._scale[t]
            diff = np.abs(x - self._target_x)
            changed = (diff > self._band * full) | ((x == 0.0) & (self._target_x != 0.0))
        else:
            changed = x != self._target_x
        real = self._real[t1]
        if not self._all_real:
            changed &= real
        n_changed = np.count_nonzero(changed)
        cost = 0.0
        if n_changed:
            eq_open = cash + float(units @ opn)
            new_units = x * (max(eq_open, 0.0) / opn)
            if n_changed != n:
                new_units = np.where(changed, new_units, units)
            delta = new_units - units
            cost = float(np.abs(delta) @ opn) * rate
            cash -= float(delta @ opn) + cost
            if executed:
                flow += delta * opn
                tcost += np.abs(delta) * opn * rate
            same_side = units * new_units > 0.0
            # opn x (new != 0) = where(new != 0, opn, 0): prices are positive and finite
            new_entry = opn * (new_units != 0.0)
            if np.count_nonzero(same_side):
                new_entry = np.where(same_side, entry, new_entry)
                grow = same_side & (np.abs(new_units) > np.abs(units))
                if np.count_nonzero(grow):
                    np.divide(units * entry + delta * opn, new_units, out=new_entry, where=grow)
            entry = new_entry
            self._bars_in = self._bars_in * same_side  # bar counts are >= 0: where(.., 0.0)
            units = new_units
            if self._band > 0.0 or not self._all_real:
                self._target_x = np.where(changed, x, self._target_x)
            else:
                self._target_x = x

        # borrow cost of the shorts held from this open (envs.execution.borrow_rate)
        borrow = 0.0
        if self._borrow:
            short = np.minimum(units, 0.0)
            if np.count_nonzero(short):
                borrow = -float(short @ opn) * self._borrow
                cash -= borrow
                totals["borrow_costs"] += borrow
                if executed:
                    flow -= short * opn * self._borrow

        # stop-loss within the bar (envs.execution.stop_loss_fill, inlined): low / high
        if self.stop_loss_pct > 0:
            level = entry * (1.0 - self.stop_loss_pct * np.sign(units))
            hit = ((units > 0.0) & (self._lows[t1] <= level)) | (
                (units < 0.0) & (self._highs[t1] >= level)
            )
            if not self._all_real:
                hit &= real
            if np.count_nonzero(hit):
                px = np.where(units > 0.0, np.minimum(level, opn), np.maximum(level, opn))[hit]
                sl_cost = float(np.abs(units[hit]) @ px) * rate
                cash += float(units[hit] @ px) - sl_cost
                cost += sl_cost
                if executed:
                    flow[hit] -= units[hit] * px
                    tcost[hit] += np.abs(units[hit]) * px * rate
                units = np.where(hit, 0.0, units)
                entry = np.where(hit, 0.0, entry)
                self._bars_in = np.where(hit, 0.0, self._bars_in)
                self._target_x = np.where(hit, 0.0, self._target_x)
                totals["stop_losses"] += int(hit.sum())
        self._bars_in = self._bars_in + (units != 0.0)
        self._units, self._entry, self._cash = units, entry, cash
        value = units * cls
        equity = cash + float(np.add.reduce(value))
        self._equity = equity
        if equity > self._peak:
            self._peak = equity
        totals["costs"] += cost

        # VaR compliance: realised loss before costs (trading and borrow) vs the VaR of the book
        breach = eq_prev > 0 and (eq_prev - equity - cost - borrow) / eq_prev > var_after + 1e-12
        if breach:
            totals["var_breaches"] += 1
        self._var_est = var_after

        last = equity <= 0.0 or t1 >= self._end
        if executed:
            # the executed position's P&L (costs included) per unit of full position size and
            # of the instrument's per-bar volatility at t: risk units
            denom = eq_prev * self._pos_scale(t) * self._vol_floor[t]
            pnl = value - value0 - flow - tcost
            spec_rew = pnl / denom if eq_prev > 0 else np.zeros(n)
            if self._amortize > 1 and eq_prev > 0:
                charged = tcost / denom
                spec_rew += charged - amortize_costs(self._spec_debt, charged, self._amortize, last)
        else:
            # specialists per unit of their own capital, vol-scaled (Sharpe-style)
            spec_ret = prev_prop * self._gap[t1] + prop * self._intra[t1]
            if self._amortize > 1:
                charged = rate * np.abs(prop - prev_prop)
                spec_ret -= amortize_costs(self._spec_debt, charged, self._amortize, last)
            else:
                spec_ret -= rate * np.abs(prop - prev_prop)
            spec_rew = self._spec_stats.update(spec_ret, self._vol_floor[t])
        rewards = dict(zip(self.specialists, spec_rew.tolist(), strict=True))
        meta_r = self.reward_fn(eq_prev, equity, cost)
        if self.mode != "specialists":
            if self.risk_penalty:
                meta_r -= self.risk_penalty * var_after
            if self.div_bonus:
                # metrics.diversification(target_x), inlined for the usual finite case
                w_abs = np.abs(self._target_x)
                w_tot = float(np.add.reduce(w_abs))
                if w_tot > 1e-12 and math.isfinite(w_tot):
                    h = float(np.dot(w_abs, w_abs)) / (w_tot * w_tot)
                    div = 0.0 if h == 0.0 else float(1.0 - h)
                else:
                    div = metrics.diversification(self._target_x)
                meta_r += self.div_bonus * div * self._mean_vol[t]
            self._meta_acc += meta_r

        # advance and record
        self._t = t1
        steps += 1
        self._steps = steps
        self._h_equity[steps] = equity
        self._h_weights[steps] = self._weights
        if equity > 0:
            np.divide(value, equity, out=self._h_expo[steps])
        else:
            self._h_expo[steps] = 0.0
        self._h_cost[steps] = cost
        self._h_var[steps] = var_after
        self._h_breach[steps] = breach

        terminated = equity <= 0.0
        truncated = (not terminated) and t1 >= self._end
        meta_next = terminated or truncated or (steps % self.meta_interval == 0)
        obs = self._observe(meta_next)
        return self._finish_step(obs, rewards, cost, terminated, truncated, meta_next)

    def _finish_step(
        self,
        obs: dict[str, np.ndarray],
        rewards: dict[str, float],
        cost: float,
        terminated: bool,
        truncated: bool,
        meta_next: bool,
    ) -> tuple[dict, dict, dict, dict, dict]:
        """The end of a step, shared by the numpy and kernel paths: deliver the meta's
        accumulated reward when it observes at a decision step, build infos and flags."""
        if (terminated or truncated) and self._amortize > 1:
            self._meta_acc -= self.reward_fn.flush()  # the cost debt still owed
        if META in obs:
            rewards[META] = self._meta_acc if meta_next else 0.0
            if meta_next:
                self._meta_acc = 0.0
        info = self._portfolio_info(cost)
        infos = dict.fromkeys(obs, info)
        terms = dict.fromkeys(obs, terminated)
        truncs = dict.fromkeys(obs, truncated)
        if terminated or truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def _step_kernel(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """`step` with the portfolio arithmetic in envs.kernels.step (same results)."""
        steps, prev_prop, prop = self._read_actions(actions)
        t = self._t
        eq_prev = self._equity
        spec, meta = self._new_obs_buffers()
        sc = self._k_sc
        _kernel_module().step(
            t, steps, self._k_market, self._k_cov, self._k_corr, self._k_ann_vol, self._corr_ut,
            self._k_feat, self._k_sector_ids, self._k_par, self._k_state, prop, prev_prop,
            self._weights, sc, self._k_cnt, self._k_rs, self._k_hist, self.window, spec, meta,
        )  # fmt: skip
        vals = sc.tolist()
        _, equity, _, var_after, cost, _, div_term, breach = vals[:8]
        self._equity = equity
        self._var_est = var_after
        rewards = dict(zip(self.specialists, vals[_kernel_module().N_SC :], strict=True))
        meta_r = self.reward_fn(eq_prev, equity, cost)
        if self.mode != "specialists":
            if self.risk_penalty:
                meta_r -= self.risk_penalty * var_after
            if self.div_bonus:  # np.float64 like the numpy path's bonus x mean_vol[t]
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

    @property
    def target_exposures(self) -> np.ndarray:
        """Target exposures (fractions of equity) after the risk limits, as last executed."""
        if self.use_kernels:
            return self._k_state[_kernel_module().R_TARGET].copy()
        return self._target_x.copy()

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
        (steps+1, n; signed fractions of equity after each bar), costs (per step), var_estimates
        and var_breaches (per step), timestamps, symbols, totals (costs, stop-losses,
        scale-downs, breaches, borrow costs), var_compliance and metrics (periods_per_year
        defaults to the run's resolved bars per year).
        """
        s = self._steps + 1
        equity, weights, expo, costs, var_est = self._history(s)
        totals = self._current_totals()
        ppy = self.periods_per_year if periods_per_year is None else periods_per_year
        return {
            "equity": equity,
            "weights": weights,
            "exposures": expo,
            "costs": costs,
            "var_estimates": var_est,
            "var_breaches": self._h_breach[:s].copy(),
            "timestamps": self.index[self._start : self._start + s],
            "symbols": list(self.symbols),
            "totals": totals,
            "total_costs": float(totals["costs"]),
            "borrow_costs": float(totals["borrow_costs"]),
            "stop_losses": int(totals["stop_losses"]),
            "var_compliance": metrics.var_compliance_rate(self._h_breach[1:s]),
            "metrics": metrics.summarize(equity, expo, periods_per_year=ppy),
        }

    def render(self) -> None:
        """No rendering (reports come from `episode_summary`)."""
        return None

    def close(self) -> None:
        """Nothing to release."""
        return None


def _kernel_module() -> Any:
    """envs.kernels, imported on first use (numba's import and cache load cost ~1 s)."""
    from envs import kernels

    return kernels


def _use_kernels(requested: bool | None, n: int) -> bool:
    """Whether an env of `n` instruments runs the numba kernels (`requested`: None = if any)."""
    if requested is False:
        return False
    k = _kernel_module()
    ok = k.AVAILABLE and n <= k.MAX_INSTRUMENTS
    if requested and not ok:
        raise ConfigError(
            "kernels=True needs numba (pip install numba) and at most 128 instruments"
        )
    return ok


def parallel_env(**kwargs: Any) -> HierarchicalTradingEnv:
    """PettingZoo-style constructor of the parallel env (keyword arguments of the class)."""
    return HierarchicalTradingEnv(**kwargs)


def env(**kwargs: Any) -> Any:
    """AEC version of the env (pettingzoo.utils.parallel_to_aec)."""
    return parallel_to_aec(parallel_env(**kwargs))
