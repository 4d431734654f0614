"""Validation in the driver: run the current policies deterministically over the validation
bars (eval mode) and summarise the portfolio equity curve with rl_trading.metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from policies import compute_actions
from rl_trading.training.env_bridge import EnvFactory, unwrap
from rl_trading.training.mapping import policy_mapping_fn

MetaOverride = Callable[[np.ndarray], np.ndarray]


def equal_weight(n_specialists: int) -> MetaOverride:
    """Meta override allocating equally to every specialist (no cash): the phase-2 baseline."""

    def act(_obs: np.ndarray) -> np.ndarray:
        w = np.full(n_specialists + 1, 1.0 / n_specialists, dtype=np.float32)
        w[-1] = 0.0
        return w

    return act


def episode_equity(env: Any, equity_seen: list[float]) -> np.ndarray:
    """The episode's portfolio equity curve: the env's summary, else equity seen in infos."""
    inner = unwrap(env)
    summary_fn = getattr(inner, "episode_summary", None)
    if callable(summary_fn):
        summary = summary_fn() or {}
        for key in ("equity", "equity_curve", "portfolio_value"):
            if key in summary and summary[key] is not None:
                return np.asarray(summary[key], dtype=float)
    if equity_seen:
        return np.asarray(equity_seen, dtype=float)
    raise ValueError("the environment reports no equity curve (episode_summary or infos)")


def run_policies(
    factory: EnvFactory,
    mode: str,
    modules: Any,
    seed: int = 0,
    meta_override: MetaOverride | None = None,
    agent_override: dict[str, MetaOverride] | None = None,
    max_steps: int = 10_000_000,
) -> dict[str, Any]:
    """One deterministic validation episode; returns the equity curve and step count."""
    env = factory.make(mode, validation=True)
    obs, infos = env.reset(seed=seed)
    overrides = dict(agent_override or {})
    if meta_override is not None:
        overrides["meta"] = meta_override
    equity_seen: list[float] = []
    steps = 0
    while steps < max_steps:
        actions: dict[str, Any] = {}
        by_policy: dict[str, list[str]] = {}
        for aid in obs:
            if aid in overrides:
                actions[aid] = overrides[aid](np.asarray(obs[aid]))
            else:
                by_policy.setdefault(policy_mapping_fn(aid, shared=factory.shared), []).append(aid)
        for pid, aids in by_policy.items():
            batch = np.stack([np.asarray(obs[a], dtype=np.float32).ravel() for a in aids])
            acts = compute_actions(modules[pid], batch)
            actions.update({a: acts[i] for i, a in enumerate(aids)})
        obs, _rew, term, trunc, infos = env.step(actions)
        steps += 1
        for info in infos.values():
            if isinstance(info, dict) and "equity" in info:
                equity_seen.append(float(info["equity"]))
                break
        if term.get("__all__") or trunc.get("__all__") or not obs:
            break
    equity = episode_equity(env, equity_seen)
    env.close()
    return {"equity": equity, "steps": steps}


def validate(
    factory: EnvFactory,
    mode: str,
    modules: Any,
    seed: int = 0,
    meta_override: MetaOverride | None = None,
    agent_override: dict[str, MetaOverride] | None = None,
) -> dict[str, float]:
    """Validation metrics (`val_sharpe`, `val_max_drawdown`, `val_total_return`, ...)."""
    from rl_trading.metrics import summarize

    run = run_policies(factory, mode, modules, seed, meta_override, agent_override)
    stats = summarize(run["equity"], periods_per_year=factory.timeframe)
    return {
        "val_sharpe": float(stats["sharpe_ratio"]),
        "val_max_drawdown": float(stats["max_drawdown"]),
        "val_total_return": float(stats["total_return"]),
        "val_sortino": float(stats["sortino_ratio"]),
        "val_steps": float(run["steps"]),
    }
