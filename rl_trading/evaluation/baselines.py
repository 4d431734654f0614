"""Baseline strategies as target-weight series, simulated with the environments' cost model.

A strategy is a ``[T, n_instruments]`` array of target weights (fraction of equity, signed)
decided *after* bar t closes; NaN means "no trade, keep the units held". The simulator uses
the same timing, fills and costs as the envs (:mod:`envs.engine`): the target is filled at bar
t+1's open paying ``|traded notional| x (fee + (slippage + spread/2) bps)``, then marked at bar
t+1's close. ``equity[0]`` is the starting capital at bar 0's close, so every strategy's curve
has one point per bar and no look-ahead.

Baselines (all on the same bars and cost model as the policy):

* ``flat``: never trades -> zero return.
* ``buy_and_hold``: 100% of capital split equally at the first fill, then held (drifting).
* ``equal_weight``: 1/n of equity per instrument, rebalanced every ``rebalance_every`` bars.
* ``random``: seeded; every bar with probability 1/``mean_hold`` a new uniform weight in
  ``[-max_position_size, max_position_size]`` (``[0, max]`` without shorts) per instrument,
  else hold, so its turnover is comparable to a trading policy rather than pure cost.
* ``supervised``: the proposal 2 P(up) - 1 from a saved supervised model fitted only on bars
  before the evaluated ones (:func:`supervised_targets`), traded as the policy trades a
  proposal: the same sizing (vol targeting), benchmark and no-trade band
  (:func:`as_policy_would_trade`, a :class:`Banded` schedule: re-decided every bar, traded
  where it leaves the band around the held book), so it measures the signal, not the churn.
  It takes no stop-loss, borrow cost or portfolio risk limit (the shipped recipe has stops
  and borrow off; a binding VaR or correlation cap is the env's alone). When there is no
  model, every run's ``extra["supervised_baseline"]`` says why (the report shows it).
* ``buy_and_hold_vol_target``: causal volatility targeting, what a practitioner would run:
  every ``rebalance_every`` bars, after the close, each instrument gets 1/n of a book sized
  to the target volatility (``env.vol_target``, else ``evaluation.grade_volatility``) from the
  instrument's TRAILING volatility (the returns of the policy's sizing window up to that
  close, ``envs.execution.sizing_window``: ``env.vol_horizon_years``, else ``env.risk_window``;
  no look-ahead), gross exposure capped at the policy's limit (:func:`policy_gross_limit`).
* ``buy_and_hold_vol_matched`` / ``equal_weight_vol_matched`` (when a policy's realised
  volatility is given): the same schedules with every weight scaled by one factor so the
  baseline's realised volatility equals the policy's, under the policy's own limit (gross
  exposure at most :func:`policy_gross_limit`: ``env.vol_target_max_leverage`` when
  ``env.vol_target`` is on, else ``env.max_position_size``, as in the envs) and the same costs.
  They are scaled AFTER the fact (the factor uses the whole evaluated period's volatility of
  the policy and of the baseline). The factor and whether the limit bound it (``limit_bound``)
  are in the run's ``extra`` and metrics. A policy that sits mostly in cash is thus compared
  with a baseline holding as little risk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from envs import engine
from envs.execution import (
    CostModel,
    benchmark_exposures,
    growth_since,
    position_sizes,
    sizing_window,
)
from envs.risk import causal_volatility, rolling_variance
from rl_trading.config import periods_per_year_of
from rl_trading.data.resample import FILLED_COLUMN
from rl_trading.errors import DataError
from rl_trading.supervised.api import predict_proba
from rl_trading.supervised.storage import load_saved

if TYPE_CHECKING:
    from rl_trading.config import AppConfig

BASELINES = ("buy_and_hold", "equal_weight", "flat", "random")
VOL_MATCHED = ("buy_and_hold_vol_matched", "equal_weight_vol_matched")
VOL_TARGET = "buy_and_hold_vol_target"


def policy_gross_limit(cfg: AppConfig) -> float:
    """The gross exposure a policy can reach (fraction of equity), as the envs size it:
    `env.vol_target_max_leverage` under volatility targeting, else `env.max_position_size`."""
    env = cfg.env
    return float(env.vol_target_max_leverage if env.vol_target else env.max_position_size)


def trailing_vol_targets(
    closes: np.ndarray,
    target_vol: float,
    periods_per_year: float,
    window: int,
    max_gross: float,
    rebalance_every: int = 20,
    start: int = 0,
) -> np.ndarray:
    """Causal volatility-targeted buy-and-hold weights from `closes` ([T, n]).

    At a rebalance bar t each instrument's weight is (1/n) x `target_vol` / its annualised
    volatility over the last `window` close-to-close returns up to bar t (no position before
    min(window, 10) of them), the book's gross then capped at `max_gross`. Bar t's weight uses bars
    <= t only, so the weights on a truncated series are the same up to its end. The bars
    before `start` are history (a policy's warm-up): they only feed the volatility, and the
    schedule returned is that of bars `start`.. (rebalanced every `rebalance_every` from there).
    """
    closes = np.asarray(closes, dtype=np.float64)
    if closes.ndim == 1:
        closes = closes[:, None]
    t_len, n = closes.shape
    out = _schedule(t_len, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        rets = closes[1:] / closes[:-1] - 1.0
    # row t - 1: the variance of the last `window` returns ending at bar t's close (running
    # sums: O(T) for a year of minute bars, where a std per rebalance was O(T x window))
    var = rolling_variance(rets, window) if t_len > 1 else np.zeros((0, n))
    every = max(1, int(rebalance_every))
    start = int(start)
    started = False
    for t in range(start, t_len):
        if min(t, window) < min(window, 10):
            continue
        if started and (t - start) % every:
            continue
        vol = np.sqrt(var[t - 1]) * np.sqrt(periods_per_year)
        w = np.where(vol > 0, target_vol / np.where(vol > 0, vol, 1.0), 0.0) / n
        gross = float(np.abs(w).sum())
        if gross > max_gross > 0:
            w = w * (max_gross / gross)
        out[t] = w
        started = True
    return out[start:]


@dataclass
class StrategyRun:
    """One simulated (or env-run) strategy over a block of bars: equity, weights, costs."""

    name: str
    index: pd.DatetimeIndex
    symbols: list[str]
    equity: np.ndarray  # [T], equity at each bar's close (equity[0] = starting capital)
    weights: np.ndarray  # [T, n], weights held at each bar's close
    costs: np.ndarray  # [T], trading costs paid during each bar
    extra: dict[str, Any] = field(default_factory=dict)
    traded: np.ndarray | None = None  # [T], notional bought + sold during each bar

    @property
    def returns(self) -> np.ndarray:
        """Per-bar simple returns of the equity curve ([T-1])."""
        eq = np.asarray(self.equity, dtype=np.float64)
        return eq[1:] / eq[:-1] - 1.0


@dataclass
class Banded:
    """A target schedule re-decided every bar ([T, n], fractions of equity) that trades as the
    envs trade: an order only where a target differs from the exposure held at that close by
    more than its band ([T, n], :func:`envs.engine.trades`), filled at the next real open."""

    targets: np.ndarray
    bands: np.ndarray


def as_bar_dict(bars: pd.DataFrame | dict[str, pd.DataFrame], name: str = "ASSET") -> dict:
    """A dict of aligned frames from one frame or a dict (DataError if not aligned)."""
    out = {name: bars} if isinstance(bars, pd.DataFrame) else dict(bars)
    if not out:
        raise DataError("no bars to backtest")
    first = next(iter(out.values())).index
    for sym, frame in out.items():
        if not frame.index.equals(first):
            raise DataError(f"instrument {sym} is not aligned with the others; align() first")
        if len(frame) < 3:
            raise DataError(f"too few bars ({len(frame)}) to backtest {sym}")
    return out


def cost_rate(cfg: AppConfig, single: bool = False) -> float:
    """Cost per unit of traded notional, as the envs charge it (envs.execution.CostModel).

    Both envs charge `env.transaction_cost` plus slippage and half the spread (`single` is
    kept for callers that name the env; the rate is the same).
    """
    env = cfg.env
    fee = env.transaction_cost
    return CostModel(fee, env.slippage_bps, env.spread_bps).rate


def simulate_weights(
    name: str,
    bars: pd.DataFrame | dict[str, pd.DataFrame],
    targets: np.ndarray | Banded,
    capital: float,
    rate: float,
) -> StrategyRun:
    """Simulate target weights (decided at close t, filled at open t+1) into an equity curve,
    through the envs' own fill and cost rules (envs.engine.simulate_targets).

    As in the envs, nothing fills on a forward-filled bar (align's `filled` column): an
    instrument's latest target (NaN: no new order) waits for its next real bar and fills at
    that bar's open; a :class:`Banded` schedule is instead re-decided every bar and banded
    around the held book, as the envs do.
    """
    bands = None
    if isinstance(targets, Banded):
        targets, bands = targets.targets, targets.bands
    data = as_bar_dict(bars)
    symbols = list(data)
    real = np.column_stack(
        [
            ~data[s][FILLED_COLUMN].to_numpy(bool)
            if FILLED_COLUMN in data[s].columns
            else np.ones(len(data[s]), dtype=bool)
            for s in symbols
        ]
    )
    opens = np.column_stack([data[s]["open"].to_numpy(np.float64) for s in symbols])
    closes = np.column_stack([data[s]["close"].to_numpy(np.float64) for s in symbols])
    t_len, n = closes.shape
    targets = np.ascontiguousarray(np.asarray(targets, dtype=np.float64).reshape(t_len, -1))
    if targets.shape[1] != n:
        raise DataError(f"{name}: {targets.shape[1]} target columns for {n} instruments")
    if bands is None:
        bands = np.full((t_len, n), -1.0)  # a schedule: NaN is "no new order"
    bands = np.ascontiguousarray(np.asarray(bands, dtype=np.float64).reshape(t_len, n))
    equity, weights, costs, traded = engine.simulate_targets(
        np.ascontiguousarray(opens), np.ascontiguousarray(closes), np.ascontiguousarray(real),
        targets, float(capital), float(rate), bands,
    )  # fmt: skip
    return StrategyRun(name, data[symbols[0]].index, symbols, equity, weights, costs,
                       traded=traded)  # fmt: skip


def _schedule(t_len: int, n: int) -> np.ndarray:
    return np.full((t_len, n), np.nan)


def flat_targets(t_len: int, n: int) -> np.ndarray:
    """Never trade."""
    return _schedule(t_len, n)


def buy_and_hold_targets(t_len: int, n: int) -> np.ndarray:
    """All capital split equally at the first fill, then held without rebalancing."""
    out = _schedule(t_len, n)
    out[0] = 1.0 / n
    return out


def equal_weight_targets(t_len: int, n: int, rebalance_every: int = 20) -> np.ndarray:
    """1/n per instrument, rebalanced every `rebalance_every` bars."""
    out = _schedule(t_len, n)
    out[:: max(1, int(rebalance_every))] = 1.0 / n
    return out


def random_targets(
    t_len: int, n: int, seed: int, max_weight: float, allow_short: bool, mean_hold: int = 20
) -> np.ndarray:
    """Seeded random weights, re-drawn with probability 1/`mean_hold` per bar, else held."""
    rng = np.random.default_rng(seed)
    low = -max_weight if allow_short else 0.0
    draws = rng.uniform(low, max_weight, size=(t_len, n))
    change = rng.random((t_len, n)) < 1.0 / max(1, mean_hold)
    change[0] = True
    out = np.where(change, draws, np.nan)
    return out


def as_policy_would_trade(
    signs: np.ndarray, bars: dict[str, pd.DataFrame], cfg: AppConfig, start: int = 0
) -> Banded:
    """Per-bar directions in [-1, 1] ([T, n]) sized and banded as the hierarchical env trades a
    specialist's proposal at weight 1/n: full size max_position_size, or env.vol_target over
    the causal annualised volatility (capped); around env.benchmark's exposures in
    benchmark-relative mode (tilts x env.active_scale); traded only where a target leaves
    env.rebalance_band x full size around the held book (exits always), with the env's own
    rules (envs.engine.targets_of; envs.engine.trades in the simulation) and sizes
    (envs.execution). The bars before `start` are the env's warm-up: they feed the sizing
    volatility, as in the env, and the book starts flat at `start`. Returns the targets and
    bands of bars `start`.."""
    ecfg = cfg.env
    start = int(start)
    closes = np.column_stack([f["close"].to_numpy(np.float64) for f in bars.values()])
    t_len, n = closes.shape
    ppy = periods_per_year_of(cfg, bars)
    window = sizing_window(ecfg.risk_window, ecfg.vol_horizon_years, ppy)
    sizes = position_sizes(
        causal_volatility(closes, window), ppy,
        ecfg.vol_target, ecfg.vol_target_max_leverage, ecfg.max_position_size,
    )  # fmt: skip
    # the env's market rows and parameters that its target rule reads (envs.engine.targets_of)
    mk = np.zeros((t_len, engine.N_MK, n))
    mk[:, engine.M_SCALE] = sizes
    # buy_and_hold is bought at the first evaluated bar (1/n before it), as in the env
    growth = None
    if ecfg.benchmark == "buy_and_hold":
        growth = growth_since(closes, closes[start], start)
    mk[:, engine.M_BENCH] = benchmark_exposures(ecfg.benchmark, sizes, growth)
    par = np.zeros(engine.N_PAR)
    par[engine.P_RELATIVE] = float(ecfg.benchmark != "none")
    par[engine.P_LONG_ONLY] = float(not ecfg.allow_short)
    par[engine.P_ACTIVE_SCALE] = ecfg.active_scale
    weights = np.full(n + 1, 1.0 / n)  # a specialist's proposal at weight 1/n, as in phase 1
    props = np.ascontiguousarray(np.nan_to_num(np.asarray(signs, dtype=np.float64)))
    x = np.zeros(n)
    out = np.zeros((t_len, n))
    for t in range(start, t_len):
        engine.targets_of(t, mk, weights, props[t], par, x)
        out[t] = x
    return Banded(out[start:], ecfg.rebalance_band * sizes[start:])


def supervised_targets(
    bars: dict[str, pd.DataFrame],
    cfg: AppConfig,
    model_type: str | None = None,
    start: int = 0,
) -> tuple[Banded | None, str]:
    """Weights from a saved supervised model's P(up), or None and the reason there are none.

    Date-checked: a model is used only when every evaluated bar (from `start`; the bars
    before it are warm-up history for its features and the sizing) comes after the last bar it
    was fitted on (`train_range` in its metadata); otherwise the next model is tried, and the
    reasons of every model tried are returned (the report shows them, never a silent gap).
    """
    models = [model_type] if model_type else [m for m in cfg.supervised.models if m != "cnn_lstm"]
    if not models:
        return None, "no supervised model configured (supervised.models)"
    timeframe = cfg.data.timeframe
    first_bar = min(frame.index[int(start)] for frame in bars.values())
    reasons = []
    for mtype in models:
        try:
            saved = load_saved(mtype, timeframe)
        except Exception as exc:  # noqa: BLE001 - no saved model: say so and try the next
            reasons.append(f"{mtype}_{timeframe}: no saved model ({_one_line(exc)})")
            continue
        train_range = saved.metadata.get("train_range") or []
        if len(train_range) != 2:
            reasons.append(f"{mtype}_{timeframe}: no training dates in its metadata")
            continue
        fitted_to = pd.Timestamp(train_range[1])
        fitted_to = fitted_to.tz_localize("UTC") if fitted_to.tzinfo is None else fitted_to
        if first_bar <= fitted_to:
            reasons.append(
                f"{mtype}_{timeframe}: fitted on bars up to {fitted_to}, which overlap the "
                f"evaluated bars from {first_bar}"
            )
            continue
        cols = []
        try:
            for frame in bars.values():
                proba = predict_proba(mtype, timeframe, frame).reindex(frame.index)
                p = proba.to_numpy(np.float64)
                cols.append(np.where(np.isnan(p), 0.0, 2.0 * p - 1.0))
        except Exception as exc:  # noqa: BLE001 - incompatible bars: reported, not hidden
            reasons.append(f"{mtype}_{timeframe}: cannot predict on these bars ({_one_line(exc)})")
            continue
        targets = as_policy_would_trade(np.column_stack(cols), bars, cfg, start)
        return targets, f"{mtype}_{timeframe} (fitted up to {fitted_to})"
    return None, "; ".join(reasons)


def signal_targets(
    bars: dict[str, pd.DataFrame],
    signals: dict[str, pd.Series],
    cfg: AppConfig,
    start: int = 0,
) -> tuple[Banded | None, str]:
    """Targets from given out-of-sample P(up) series: the proposal 2 P(up) - 1 (long above 0.5,
    short or flat below, neutral at exactly 0.5, 'no opinion', or where a bar has no signal),
    sized and banded as the policy's proposals (:func:`as_policy_would_trade`; the bars before
    `start` are warm-up history)."""
    missing = [sym for sym in bars if sym not in signals]
    if missing:
        return None, f"no supervised signal for {', '.join(missing)}"
    cols = []
    for sym, frame in bars.items():
        p = signals[sym].reindex(frame.index).to_numpy(np.float64)
        cols.append(np.where(np.isnan(p), 0.0, 2.0 * p - 1.0))
    name = getattr(next(iter(signals.values())), "name", None) or "signal"
    targets = as_policy_would_trade(np.column_stack(cols), bars, cfg, start)
    return targets, f"{name} (walk-forward refits, out of sample)"


def _one_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def vol_matched(
    name: str,
    data: dict[str, pd.DataFrame],
    targets: np.ndarray,
    target_vol: float,
    max_weight: float,
    capital: float,
    rate: float,
) -> StrategyRun:
    """`targets` scaled by one factor so the run's per-bar volatility is `target_vol`.

    The factor is capped so the gross target exposure stays within `max_weight` (the policy's
    own limit, :func:`policy_gross_limit`); two passes (the costs depend a little on the
    scale). `extra["limit_bound"]`: the cap, not the volatility, set the factor.
    """
    base = simulate_weights(name, data, targets, capital, rate)
    finite = targets[~np.isnan(targets)]
    gross = float(np.nanmax(np.nansum(np.abs(targets), axis=1))) if finite.size else 0.0
    cap = max_weight / gross if gross > 0 else 0.0
    scale = 0.0
    run = base
    for _ in range(2):
        vol = float(np.std(run.returns, ddof=1)) if run.returns.size > 1 else 0.0
        if vol <= 0.0 or target_vol <= 0.0:
            break
        scale = min(scale * target_vol / vol if scale > 0 else target_vol / vol, cap)
        run = simulate_weights(name, data, targets * scale, capital, rate)
        if scale >= cap:
            break
    if scale == 0.0:
        run = simulate_weights(name, data, flat_targets(*targets.shape), capital, rate)
    run.extra.update({"vol_scale": scale, "limit_bound": bool(scale >= cap - 1e-12)})
    return run


def run_baselines(
    bars: pd.DataFrame | dict[str, pd.DataFrame],
    cfg: AppConfig,
    seed: int = 0,
    include_supervised: bool = True,
    rebalance_every: int = 20,
    capital: float | None = None,
    rate: float | None = None,
    target_vol: float | None = None,
    supervised_signals: dict[str, pd.Series] | None = None,
    warmup: dict[str, pd.DataFrame] | None = None,
) -> dict[str, StrategyRun]:
    """Every baseline on the same bars and cost model (random seeded with `seed`).

    `capital` / `rate` default to the hierarchical env's (env.initial_capital, cost_rate).
    `target_vol` (the policy's per-bar return std) adds the volatility-matched buy-and-hold
    and equal-weight baselines. `supervised_signals` (out-of-sample P(up) per symbol, e.g. the
    walk-forward's) replace the saved-model lookup of the supervised baseline. `warmup`: the
    bars just before `bars` (a policy's warm-up); the causal volatility of the vol-targeted and
    supervised baselines, and the supervised model's features, start on them as the env's
    sizes do, while every baseline trades `bars` only.
    """
    data = as_bar_dict(bars)
    start = 0
    sized = data  # the bars the causal sizes are measured on: the warm-up, then `data`
    if warmup and len(next(iter(warmup.values()))):
        if set(warmup) != set(data):
            raise ValueError("warm-up bars must have the evaluated bars' symbols")
        start = len(next(iter(warmup.values())))
        sized = {s: pd.concat([warmup[s], f]) for s, f in data.items()}
    t_len, n = len(next(iter(data.values()))), len(data)
    capital = cfg.env.initial_capital if capital is None else capital
    rate = cost_rate(cfg) if rate is None else rate
    schedules = {
        "buy_and_hold": buy_and_hold_targets(t_len, n),
        "equal_weight": equal_weight_targets(t_len, n, rebalance_every),
        "flat": flat_targets(t_len, n),
        "random": random_targets(t_len, n, seed, cfg.env.max_position_size, cfg.env.allow_short),
    }
    status = "not requested"
    if include_supervised:
        if supervised_signals is not None:
            sup, status = signal_targets(sized, supervised_signals, cfg, start)
        else:
            sup, status = supervised_targets(sized, cfg, start=start)
        if sup is not None:
            schedules["supervised"] = sup
    runs = {
        name: simulate_weights(name, data, targets, capital, rate)
        for name, targets in schedules.items()
    }
    for run in runs.values():
        run.extra["supervised_baseline"] = status
    limit = policy_gross_limit(cfg)
    ppy = float(cfg.data.periods_per_year or 0.0) or periods_per_year_of(cfg, data)
    closes = np.column_stack([f["close"].to_numpy(np.float64) for f in sized.values()])
    vt = trailing_vol_targets(
        closes,
        float(cfg.env.vol_target or cfg.evaluation.grade_volatility),
        ppy,
        max(2, sizing_window(cfg.env.risk_window, cfg.env.vol_horizon_years, ppy)),
        limit,
        rebalance_every,
        start,
    )
    runs[VOL_TARGET] = simulate_weights(VOL_TARGET, data, vt, capital, rate)
    runs[VOL_TARGET].extra["supervised_baseline"] = status
    if target_vol is not None:
        for base in ("buy_and_hold", "equal_weight"):
            name = f"{base}_vol_matched"
            runs[name] = vol_matched(
                name, data, schedules[base], float(target_vol), limit, capital, rate
            )
            runs[name].extra["supervised_baseline"] = status
    return runs
