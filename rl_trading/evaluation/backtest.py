"""Deterministic backtests of restored policies next to baselines, on the same bars and costs.

A policy source is an RLModule (or a dir saved with ``save_to_path``), an RLlib algorithm
checkpoint (every module under ``learner_group/learner/rl_module``), a registry model name, an
:class:`~rl_trading.evaluation.ensemble.Ensemble`, or a ``{policy_id: RLModule}`` dict. One
module on one instrument runs :class:`envs.TradingEnv`; specialists + ``meta`` run the full
hierarchy in ``HierarchicalTradingEnv(mode="joint")``. Both in ``eval_mode`` (one sequential
pass), stepped with the modules' ``forward_inference`` (Gaussian mean / arg-max): no Algorithm,
no Ray workers.

No look-ahead in normalisation: the feature scaler comes from the policy's stored
preprocessing (``preprocessing.json``: FeatureScaler statistics fit on its training split);
callers without one pass ``scaler_bars`` (e.g. the train split) to fit it on; only as the last
resort is it fit on the evaluated bars, and the report says so (``scaler_origin``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from envs import HierarchicalTradingEnv
from envs.trading_env import TradingEnv
from rl_trading import metrics
from rl_trading.config import periods_per_year_of, resolve_calendar
from rl_trading.data import decision_history, fingerprint, single_decision_history
from rl_trading.data.features import WARMUP_BARS, FeatureScaler, compute_features
from rl_trading.errors import CheckpointError, DataError
from rl_trading.evaluation.baselines import (
    StrategyRun,
    as_bar_dict,
    cost_rate,
    run_baselines,
    simulate_weights,
)
from rl_trading.evaluation.policy import PolicyBundle, load_policy

if TYPE_CHECKING:
    from rl_trading.config import AppConfig

MODULE_COMPONENT = "learner_group/learner/rl_module"
PREPROCESSING_FILE = "preprocessing.json"
META = "meta"

# metric -> (config attribute path, comparison); the targets every report checks.
TARGETS = {
    "sharpe_ratio": ("reward.sharpe_target", ">="),
    "max_drawdown": ("reward.max_drawdown_target", "<="),
    "win_rate": ("evaluation.win_rate_target", ">="),
    "var_compliance": ("evaluation.var_compliance_target", ">="),
}


# --------------------------------------------------------------------------------------------
# Metrics of one strategy (every number comes from rl_trading.metrics)
# --------------------------------------------------------------------------------------------


def rolling_var_compliance(returns: np.ndarray, window: int, confidence: float) -> float:
    """Share of bars whose loss stayed within the VaR estimated from the previous `window`.

    The estimate for bar t uses returns before t only (metrics.value_at_risk); bars without a
    full window are not scored.
    """
    r = np.asarray(returns, dtype=np.float64)
    if r.size <= window:
        return metrics.var_compliance_rate(np.zeros(0, dtype=bool))
    estimates = np.array(
        [metrics.value_at_risk(r[t - window : t], confidence) for t in range(window, r.size)]
    )
    return metrics.var_compliance_rate(r[window:], estimates)


def strategy_metrics(
    run: StrategyRun, cfg: AppConfig, benchmark: StrategyRun | None = None
) -> dict[str, float]:
    """metrics.summarize of the run (rf 0, the run's bars per year; turnover from its traded
    notional when known) + VaR compliance, costs, average gross exposure and trades; with a
    `benchmark` run on the same bars, the
    information ratio, tracking error and active return against it."""
    weights = run.weights if run.weights.ndim == 2 else run.weights[:, None]
    ppy = periods_per_year_of(cfg, pd.Series(0, index=run.index))
    out = metrics.summarize(
        run.equity, run.traded, periods_per_year=ppy, confidence=cfg.env.var_confidence
    )
    out["max_drawdown_vol_matched"] = metrics.max_drawdown_at_volatility(
        run.returns, ppy, cfg.evaluation.grade_volatility
    )
    out["var_compliance"] = rolling_var_compliance(
        run.returns, cfg.env.risk_window, cfg.env.var_confidence
    )
    out["total_costs"] = float(np.sum(run.costs))
    out["exposure"] = float(np.mean(np.abs(weights).sum(axis=1)))
    if benchmark is not None and len(benchmark.equity) == len(run.equity):
        out.update(metrics.active_metrics(run.returns, benchmark.returns, periods_per_year=ppy))
    for key in ("risk_limit_compliance", "stop_losses", "trades", "vol_scale", "limit_bound"):
        if key in run.extra:
            out[key] = float(run.extra[key])
    return out


def _cfg_value(cfg: AppConfig, dotted: str) -> float:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return float(node)


def check_targets(metrics_: dict[str, float], cfg: AppConfig) -> dict[str, dict[str, Any]]:
    """Each target metric: value, configured target, comparison and pass/fail."""
    out = {}
    for metric, (key, op) in TARGETS.items():
        target = _cfg_value(cfg, key)
        value = float(metrics_.get(metric, float("nan")))
        ok = value >= target if op == ">=" else value <= target
        out[metric] = {"value": value, "target": target, "op": op, "pass": bool(ok)}
    return out


# --------------------------------------------------------------------------------------------
# Restoring policies
# --------------------------------------------------------------------------------------------


def scalers_from(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """FeatureScalers stored in a preprocessing spec: `{symbol: scaler}` (`*` = all)."""
    raw = preprocessing.get("scalers") or {}
    if not raw and preprocessing.get("scaler"):
        raw = {"*": preprocessing["scaler"]}
    return {sym: FeatureScaler.from_dict(d) for sym, d in raw.items()}


def check_symbols(bundle: PolicyBundle, data: dict[str, pd.DataFrame]) -> None:
    """One-line DataError naming both lists when a multi-instrument policy's training symbols
    (stored preprocessing) are not the evaluated bars' symbols."""
    trained = [str(s) for s in (bundle.preprocessing.get("symbols") or [])]
    if not bundle.hierarchical or not trained:
        return
    if sorted(trained) != sorted(map(str, data)):
        raise DataError(
            f"the model was trained on symbols {trained} but the data has {list(data)}: "
            "evaluate it on its own symbols (its stored config does, unless -c/--set changes them)"
        )


def training_overlap(
    preprocessing: dict[str, Any], data: dict[str, pd.DataFrame], warmup: int = 0
) -> str:
    """'' or a line saying how the evaluated bars overlap the stored training range.

    The first `warmup` bars only feed the env's features and windows before its first decision
    (`split_for_env` prepends them to val / test): they are not evaluated, so not counted.
    """
    start, end = preprocessing.get("train_start"), preprocessing.get("train_end")
    if not start or not end or not data:
        return ""
    index = pd.DatetimeIndex(next(iter(data.values())).index)[max(0, warmup) :]
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    if index.tz is not None and lo.tz is None:
        lo, hi = lo.tz_localize("UTC"), hi.tz_localize("UTC")
    elif index.tz is None and lo.tz is not None:
        lo, hi = lo.tz_convert(None), hi.tz_convert(None)
    inside = index[(index >= lo) & (index <= hi)]
    if len(inside) == 0:
        return ""
    return (
        f"{len(inside)} of {len(index)} evaluated bars ({inside[0]} .. {inside[-1]}) fall in the "
        f"model's training range {start} .. {end}"
    )


# --------------------------------------------------------------------------------------------
# Running the policy in the env
# --------------------------------------------------------------------------------------------


def _fit_scalers(bars: dict[str, pd.DataFrame]) -> dict[str, Any]:
    return {
        sym: FeatureScaler().fit(compute_features(frame).iloc[WARMUP_BARS:])
        for sym, frame in bars.items()
    }


def _scaler_for(scalers: dict[str, Any], sym: str) -> Any:
    return scalers.get(sym) or scalers.get("*")


def _run_single(
    bundle: PolicyBundle, symbol: str, frame: pd.DataFrame, cfg: AppConfig, scaler: Any, seed: int
) -> StrategyRun:
    pid = next(iter(bundle.modules))
    env = TradingEnv(cfg, bars=frame, eval_mode=True, scaler=scaler)
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        action = bundle.act(pid, obs[None])[0]
        obs, _, term, trunc, _ = env.step(action)
        done = term or trunc
    summ = env.episode_summary()
    equity = np.asarray(summ["equity"], dtype=np.float64)
    index = pd.DatetimeIndex(summ["timestamps"])
    weights = np.asarray(summ["positions"], dtype=np.float64).reshape(len(equity), -1)
    costs = np.zeros(len(equity))
    costs[-1] = float(summ.get("total_costs", 0.0))
    extra = {k: summ[k] for k in ("stop_losses", "trades") if k in summ}
    traded = np.asarray(summ["traded"], dtype=np.float64)
    return StrategyRun("policy", index, [symbol], equity, weights, costs, extra, traded)


def hierarchy_actions(
    bundle: PolicyBundle, agents: list[str], obs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Deterministic actions of every agent in `obs` of a hierarchical env (`agents`: its
    possible agents): how a backtest and a paper session act on an observation."""
    shared = bundle.shared_specialist
    specialists = sorted(a for a in agents if a != META)
    actions = {}
    for agent, o in obs.items():
        if agent == META:
            pid = META
        else:
            pid = "specialist" if shared else agent
            if shared:
                one_hot = np.eye(len(specialists), dtype=np.float32)[specialists.index(agent)]
                o = np.concatenate([np.asarray(o, np.float32).ravel(), one_hot])
        if pid not in bundle.modules:
            raise CheckpointError(f"policy has no module for agent '{agent}' ({pid})")
        actions[agent] = bundle.act(pid, np.asarray(o, np.float32)[None])[0]
    return actions


def check_observation_sizes(bundle: PolicyBundle, env: HierarchicalTradingEnv) -> None:
    """CheckpointError (one line) when a policy module expects another observation size than
    the env gives its agent: the config's observation settings are not the model's (a torch
    shape error deep in the first forward pass otherwise)."""
    shared = bundle.shared_specialist
    for agent in env.possible_agents:
        pid = agent if agent == META or not shared else "specialist"
        space = getattr(bundle.modules.get(pid), "observation_space", None)
        want = getattr(space, "shape", None)
        if not want:
            continue
        have = env.observation_space(agent).shape[0] + (len(env.specialists) if pid != agent else 0)
        if int(want[0]) != have:
            raise CheckpointError(
                f"policy '{pid}' observes {int(want[0])} values but this config's env gives "
                f"{have}: its observation settings (train.window_size, env.cross_sectional, "
                "env.trend_windows) are not the model's; evaluate it with its stored config"
            )


def _run_hierarchy(
    bundle: PolicyBundle,
    bars: dict[str, pd.DataFrame],
    cfg: AppConfig,
    scalers: dict[str, Any],
    seed: int,
) -> StrategyRun:
    mode = "joint" if META in bundle.modules else "specialists"
    kwargs: dict[str, Any] = {}
    if scalers:
        kwargs["scalers"] = {sym: _scaler_for(scalers, sym) for sym in bars}
    env = HierarchicalTradingEnv(cfg, bars=bars, mode=mode, eval_mode=True, **kwargs)
    check_observation_sizes(bundle, env)
    obs, _ = env.reset(seed=seed)
    while env.agents:
        actions = hierarchy_actions(bundle, env.possible_agents, obs)
        obs, _, terms, truncs, _ = env.step(actions)
        if any(terms.values()) or all(truncs.values()):
            break
    summ = env.episode_summary()
    equity = np.asarray(summ["equity"], dtype=np.float64)
    index = pd.DatetimeIndex(summ["timestamps"])
    weights = np.asarray(summ["exposures"], dtype=np.float64).reshape(len(equity), -1)
    costs = np.zeros(len(equity))
    raw_costs = np.asarray(summ.get("costs", []), dtype=np.float64).reshape(-1)
    costs[-len(raw_costs) :] = raw_costs[-len(equity) :] if raw_costs.size else 0.0
    extra: dict[str, Any] = {"mode": mode}
    if "var_compliance" in summ:
        extra["risk_limit_compliance"] = float(summ["var_compliance"])
    extra["stop_losses"] = summ.get("stop_losses", 0)
    if env.relative:  # the benchmark the policy's actions tilt around, bar by bar (causal)
        extra["benchmark"] = env.benchmark
        extra["benchmark_exposures"] = summ["benchmark_exposures"]
    symbols = list(summ.get("symbols", list(bars)))
    traded = np.asarray(summ["traded"], dtype=np.float64)
    return StrategyRun("policy", index, symbols, equity, weights, costs, extra, traded)


def first_decision_bar(bundle: PolicyBundle, cfg: AppConfig) -> int:
    """Position of the first bar the env decides on (and so evaluates): the warm-up before it
    (features, observation window, risk window) is history, as the envs' `first_bar`."""
    window = int(bundle.preprocessing.get("window_size") or cfg.train.window_size)
    if bundle.hierarchical:
        return decision_history(window, cfg.env.risk_window, cfg.env.trend_windows)
    return single_decision_history(window)


def run_policy(
    source: Any,
    bars: pd.DataFrame | dict[str, pd.DataFrame],
    cfg: AppConfig,
    seed: int = 0,
    scaler_bars: pd.DataFrame | dict[str, pd.DataFrame] | None = None,
    allow_overlap: bool = True,
) -> tuple[StrategyRun, dict[str, Any]]:
    """One deterministic eval pass of a policy; returns the run and how it was set up.

    DataError when the bars' symbols are not the policy's, and (unless `allow_overlap`) when
    they overlap the policy's training range; an allowed overlap is named in the result.
    """
    bundle = load_policy(source, cfg)
    data = as_bar_dict(bars)
    check_symbols(bundle, data)
    overlap = training_overlap(bundle.preprocessing, data, first_decision_bar(bundle, cfg))
    if overlap and not allow_overlap:
        raise DataError(f"{overlap}: evaluate later dates, or pass --allow-overlap")
    scalers = scalers_from(bundle.preprocessing)
    origin = "policy preprocessing"
    if not scalers:
        if scaler_bars is not None:
            scalers, origin = _fit_scalers(as_bar_dict(scaler_bars)), "training bars"
        else:
            scalers, origin = _fit_scalers(data), "evaluated bars (no stored scaler)"
    if bundle.hierarchical:
        run = _run_hierarchy(bundle, data, cfg, scalers, seed)
    else:
        if len(data) != 1:
            raise DataError(
                f"a single-instrument policy needs one instrument, got {len(data)}: "
                "pick one with --set data.symbols=[SYM]"
            )
        sym, frame = next(iter(data.items()))
        run = _run_single(bundle, sym, frame, cfg, _scaler_for(scalers, sym), seed)
    return run, {
        "source": bundle.source,
        "scaler_origin": origin,
        "policies": list(bundle.modules),
        "env": "hierarchical" if bundle.hierarchical else "single",
        **({"training_overlap": overlap} if overlap else {}),
    }


# --------------------------------------------------------------------------------------------
# The backtest
# --------------------------------------------------------------------------------------------


@dataclass
class BacktestResult:
    """Policy and baseline runs on the same bars, their metrics and target checks."""

    runs: dict[str, StrategyRun]
    metrics: dict[str, dict[str, float]]
    targets: dict[str, dict[str, dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self) -> StrategyRun | None:
        """The policy's run (None for a baselines-only backtest)."""
        return self.runs.get("policy")


def benchmark_run(runs: dict[str, StrategyRun]) -> StrategyRun | None:
    """The run information ratios are measured against: the policy's own benchmark
    (env.benchmark, simulated with costs as the baseline `benchmark`), else buy-and-hold."""
    return runs.get("benchmark", runs.get("buy_and_hold"))


def evaluate_runs(runs: dict[str, StrategyRun], cfg: AppConfig, **meta: Any) -> BacktestResult:
    """Metrics and target checks for a set of runs (information ratio and tracking error
    against `benchmark_run`)."""
    bench = benchmark_run(runs)
    mets = {name: strategy_metrics(run, cfg, bench) for name, run in runs.items()}
    meta.setdefault("ir_benchmark", bench.name if bench is not None else None)
    targets = {name: check_targets(m, cfg) for name, m in mets.items()}
    return BacktestResult(runs, mets, targets, dict(meta))


def benchmark_baseline(
    policy: StrategyRun,
    data: dict[str, pd.DataFrame],
    capital: float,
    rate: float,
    rebalance_every: int = 20,
) -> StrategyRun:
    """The policy's benchmark portfolio (env.benchmark's causal exposures at each bar) as a
    baseline with the same fills and costs, rebalanced every `rebalance_every` bars."""
    exposures = np.asarray(policy.extra["benchmark_exposures"], dtype=np.float64)
    schedule = np.full_like(exposures, np.nan)
    schedule[:: max(1, int(rebalance_every))] = exposures[:: max(1, int(rebalance_every))]
    run = simulate_weights("benchmark", data, schedule, capital, rate)
    run.extra["benchmark"] = policy.extra.get("benchmark")
    return run


def pin_calendar(
    cfg: AppConfig,
    preprocessing: dict[str, Any] | None = None,
    train_bars: dict[str, pd.DataFrame] | None = None,
    bars: dict[str, pd.DataFrame] | None = None,
) -> tuple[AppConfig, str]:
    """`cfg` with `data.periods_per_year` pinned for a backtest, and where it came from.

    In order: the config's own number, the policy's training preprocessing, the calendar
    measured on the training bars, and only for `auto` without either, the evaluated bars.
    """
    if cfg.data.periods_per_year is not None:
        return cfg, "config"
    stored = (preprocessing or {}).get("periods_per_year")
    if stored:
        out = cfg.model_copy(deep=True)
        out.data.periods_per_year = float(stored)
        return out, "policy preprocessing"
    if cfg.data.calendar != "auto":
        return resolve_calendar(cfg, None), f"calendar {cfg.data.calendar}"
    if train_bars:
        return resolve_calendar(cfg, train_bars), "measured on the training bars"
    return resolve_calendar(cfg, bars), "measured on the evaluated bars"


def backtest(
    policy_source: Any,
    bars: pd.DataFrame | dict[str, pd.DataFrame],
    cfg: AppConfig,
    seed: int = 0,
    scaler_bars: pd.DataFrame | dict[str, pd.DataFrame] | None = None,
    include_supervised: bool = True,
    allow_overlap: bool = True,
    n_trials: int = 1,
    trial_sharpes: list[float] | None = None,
    supervised_signals: dict[str, pd.Series] | None = None,
) -> BacktestResult:
    """Deterministic pass of the policy (None: baselines only) next to every baseline.

    Baselines run on exactly the bars the policy traded (from its first decision bar, after
    the feature warm-up; the warm-up feeds the causal sizes of the vol-targeted and supervised
    baselines, as it does the env's) with the same costs and starting capital, plus buy-and-hold and
    equal-weight scaled to the policy's realised volatility. The policy's metrics carry its
    PSR and its DSR deflated for `n_trials` (`trial_sharpes`: their per-period Sharpes).
    With `allow_overlap=False` bars inside the policy's stored training range are refused
    (the CLI's default). `supervised_signals`: out-of-sample P(up) per symbol for the
    supervised baseline (else a saved, date-checked model is looked up).
    """
    data = as_bar_dict(bars)
    bundle = load_policy(policy_source, cfg) if policy_source is not None else None
    train = as_bar_dict(scaler_bars) if scaler_bars is not None else None
    cfg, ppy_origin = pin_calendar(cfg, bundle.preprocessing if bundle else None, train, data)
    runs: dict[str, StrategyRun] = {}
    meta: dict[str, Any] = {"seed": seed, "symbols": list(data)}
    target_vol = None
    if bundle is not None:
        kwargs = {"seed": seed, "scaler_bars": scaler_bars, "allow_overlap": allow_overlap}
        run, info = run_policy(bundle, data, cfg, **kwargs)
        runs["policy"] = run
        meta.update(info)
        start = data[next(iter(data))].index.get_loc(run.index[0])
        warmup = {s: f.iloc[:start] for s, f in data.items()}  # the policy's warm-up
        data = {s: f.iloc[start : start + len(run.equity)] for s, f in data.items()}
        capital = float(run.equity[0])
        single = info["env"] == "single"
        target_vol = float(np.std(run.returns, ddof=1)) if run.returns.size > 1 else 0.0
    else:
        capital, single, warmup = None, False, None
    if bundle is not None and "benchmark_exposures" in runs["policy"].extra:
        runs["benchmark"] = benchmark_baseline(runs["policy"], data, capital, cost_rate(cfg))
    runs.update(
        run_baselines(
            data,
            cfg,
            seed=seed,
            include_supervised=include_supervised,
            capital=capital,
            rate=cost_rate(cfg, single=single),
            target_vol=target_vol,
            supervised_signals=supervised_signals,
            warmup=warmup,
        )
    )
    meta["cost_rate"] = cost_rate(cfg, single=single)
    first = data[next(iter(data))]
    meta.update(
        {
            "start": str(first.index[0]),
            "end": str(first.index[-1]),
            "n_bars": len(first),
            "timeframe": cfg.data.timeframe,
            "calendar": cfg.data.calendar,
            "periods_per_year": float(cfg.data.periods_per_year or 0.0),
            "periods_per_year_origin": ppy_origin,
            "risk_free_rate": metrics.RISK_FREE_RATE,
            "n_trials": int(n_trials),
            "data_fingerprint": fingerprint(data),
        }
    )
    meta["supervised_baseline"] = runs["flat"].extra.get("supervised_baseline", "")
    result = evaluate_runs(runs, cfg, **meta)
    if "policy" in runs:
        pm = result.metrics["policy"]
        pm["dsr"] = metrics.deflated_sharpe_ratio(runs["policy"].returns, n_trials, trial_sharpes)
    return result
