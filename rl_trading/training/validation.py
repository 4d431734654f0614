"""Validation in the driver: run the current policies deterministically over the validation
bars (eval mode) and summarise the portfolio equity curve with rl_trading.metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from policies import compute_actions
from policies.inference import to_env_action
from policies.stacked import StackedActor, stack_groups
from rl_trading.errors import ConfigError
from rl_trading.metrics import active_metrics, summarize
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


def episode_exposures(env: Any) -> np.ndarray | None:
    """Signed per-instrument exposures (fractions of equity, one row per bar) of the episode,
    from the env's summary; None when the env reports none."""
    summary_fn = getattr(unwrap(env), "episode_summary", None)
    if not callable(summary_fn):
        return None
    expo = (summary_fn() or {}).get("exposures")
    return None if expo is None else np.asarray(expo, dtype=float)


def episode_traded(env: Any) -> np.ndarray | None:
    """Notional traded at each bar of the episode (row 0 the start), from the env's summary;
    None when the env reports none."""
    summary_fn = getattr(unwrap(env), "episode_summary", None)
    if not callable(summary_fn):
        return None
    traded = (summary_fn() or {}).get("traded")
    return None if traded is None else np.asarray(traded, dtype=float)


def episode_benchmark_returns(env: Any) -> np.ndarray | None:
    """Per-bar returns of the env's benchmark (env.benchmark) over the episode; None when the
    env has no benchmark."""
    summary_fn = getattr(unwrap(env), "episode_summary", None)
    if not callable(summary_fn):
        return None
    summary = summary_fn() or {}
    if summary.get("benchmark", "none") == "none" or "benchmark_returns" not in summary:
        return None
    return np.asarray(summary["benchmark_returns"], dtype=float)


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


def _obs_batch(obs: dict[str, Any], aids: list[str]) -> np.ndarray:
    """`[len(aids), obs_dim]` float32 observations of these agents."""
    return np.stack([np.asarray(obs[a], dtype=np.float32).ravel() for a in aids])


class _PolicyActor:
    """Deterministic actions per policy for one step's agents; same-shape MLP policies with
    the same number of agents act as one stacked network (`policies.stacked.StackedActor`),
    any other stackable MLP as a stack of one."""

    def __init__(self, modules: Any) -> None:
        self._modules = modules
        self._stacks: dict[tuple[str, ...], StackedActor] = {}
        self._grouping: dict[tuple, list[tuple[str, ...]]] = {}
        self._spaces: dict[tuple[str, ...], Any] = {}

    def _groups(self, by_policy: dict[str, list[str]]) -> list[tuple[str, ...]]:
        layout = tuple((pid, len(aids)) for pid, aids in by_policy.items())
        groups = self._grouping.get(layout)
        if groups is None:
            groups = self._grouping[layout] = stack_groups(
                self._modules, dict(layout), singles=True
            )
        return groups

    def _common_space(self, group: tuple[str, ...]) -> Any:
        """The action space all policies of `group` share (equal Boxes), else None."""
        if group not in self._spaces:
            first = self._modules[group[0]].action_space
            same = all(self._modules[p].action_space == first for p in group[1:])
            self._spaces[group] = first if same and isinstance(first, gym.spaces.Box) else None
        return self._spaces[group]

    def act(self, obs: dict[str, Any], by_policy: dict[str, list[str]]) -> dict[str, Any]:
        """Env actions for the agents in `by_policy` (policy id -> agent ids)."""
        actions: dict[str, Any] = {}
        done: set[str] = set()
        for group in self._groups(by_policy):
            stack = self._stacks.get(group)
            if stack is None:
                stack = self._stacks[group] = StackedActor([self._modules[p] for p in group])
            rows = [by_policy[p] for p in group]
            batch = _obs_batch(obs, [a for aids in rows for a in aids])
            means = stack(torch.from_numpy(batch.reshape(len(group), len(rows[0]), -1))).numpy()
            space = self._common_space(group)
            if space is not None:  # one vectorised mapping for the whole group
                for aids, env_acts in zip(rows, to_env_action(means, space), strict=True):
                    actions.update(zip(aids, env_acts, strict=True))
            else:
                for pid, acts in zip(group, means, strict=True):
                    env_acts = to_env_action(acts, self._modules[pid].action_space)
                    actions.update(zip(by_policy[pid], env_acts, strict=True))
            done.update(group)
        for pid, aids in by_policy.items():
            if pid not in done:
                acts = compute_actions(self._modules[pid], _obs_batch(obs, aids))
                actions.update({a: acts[i] for i, a in enumerate(aids)})
        return actions


def run_policies(
    factory: EnvFactory,
    mode: str,
    modules: Any,
    seed: int = 0,
    meta_override: MetaOverride | None = None,
    agent_override: dict[str, MetaOverride] | None = None,
    max_steps: int = 10_000_000,
) -> dict[str, Any]:
    """One deterministic validation episode; returns the equity curve, step count and, when
    the env reports them, the per-bar exposures (`exposures`, `[bars, instruments]`) and
    traded notional (`traded`, aligned with the equity)."""
    env = factory.make(mode, validation=True)
    obs, infos = env.reset(seed=seed)
    overrides = dict(agent_override or {})
    if meta_override is not None:
        overrides["meta"] = meta_override
    equity_seen: list[float] = []
    steps = 0
    actor = _PolicyActor(modules)
    while steps < max_steps:
        actions: dict[str, Any] = {}
        by_policy: dict[str, list[str]] = {}
        for aid in obs:
            if aid in overrides:
                actions[aid] = overrides[aid](np.asarray(obs[aid]))
            else:
                by_policy.setdefault(policy_mapping_fn(aid, shared=factory.shared), []).append(aid)
        actions.update(actor.act(obs, by_policy))
        obs, _rew, term, trunc, infos = env.step(actions)
        steps += 1
        for info in infos.values():
            if isinstance(info, dict) and "equity" in info:
                equity_seen.append(float(info["equity"]))
                break
        if term.get("__all__") or trunc.get("__all__") or not obs:
            break
    equity = episode_equity(env, equity_seen)
    exposures = episode_exposures(env)
    traded = episode_traded(env)
    bench = episode_benchmark_returns(env)
    env.close()
    out: dict[str, Any] = {"equity": equity, "steps": steps}
    if exposures is not None:
        out["exposures"] = exposures
    if traded is not None and len(traded) == len(equity):
        out["traded"] = traded
    if bench is not None and len(bench) == len(equity) - 1:
        out["benchmark_returns"] = bench
    return out


def validate(
    factory: EnvFactory,
    mode: str,
    modules: Any,
    seed: int = 0,
    meta_override: MetaOverride | None = None,
    agent_override: dict[str, MetaOverride] | None = None,
) -> dict[str, float]:
    """Validation metrics (`val_sharpe`, `val_max_drawdown`, `val_total_return`, ...; and
    `val_gross_exposure`, the mean over bars of sum |exposure|, when the env reports exposures;
    `val_information_ratio` and `val_tracking_error` against env.benchmark when it has one).

    `metrics.summarize` (rf 0) at the factory's resolved bars per year: the same numbers a
    backtest report gives for the same equity curve (`val_sharpe` = report `sharpe_ratio`).
    """
    run = run_policies(factory, mode, modules, seed, meta_override, agent_override)
    if factory.periods_per_year is None:  # hierarchical_factory always resolves it
        raise ConfigError("validation needs the run's bars per year (config.resolve_calendar)")
    ppy = factory.periods_per_year
    stats = summarize(run["equity"], periods_per_year=ppy)
    out = {
        "val_sharpe": float(stats["sharpe_ratio"]),
        "val_max_drawdown": float(stats["max_drawdown"]),
        "val_total_return": float(stats["total_return"]),
        "val_sortino": float(stats["sortino_ratio"]),
        "val_psr": float(stats["psr"]),
        "val_steps": float(run["steps"]),
    }
    if "exposures" in run:
        out["val_gross_exposure"] = gross_exposure(run["exposures"])
    if "benchmark_returns" in run:  # benchmark-relative agents: how they differ from it
        eq = np.asarray(run["equity"], dtype=float)
        active = active_metrics(eq[1:] / eq[:-1] - 1.0, run["benchmark_returns"], ppy)
        out["val_information_ratio"] = float(active["information_ratio"])
        out["val_tracking_error"] = float(active["tracking_error"])
    return out


def gross_exposure(exposures: np.ndarray) -> float:
    """Average gross exposure: mean over bars of the sum of |exposure| (fractions of equity)."""
    e = np.asarray(exposures, dtype=float)
    e = e if e.ndim == 2 else e[:, None]
    return float(np.mean(np.abs(e).sum(axis=1))) if e.size else 0.0
