"""Drift of live observations and actions against reference distributions: PSI and KS.

`psi` bins the reference into deciles and compares the live shares (0.1: some shift, 0.25:
a large one, the usual reading); `ks` is the two-sample Kolmogorov-Smirnov statistic. Every
`paper.drift_every` decisions the paper loop compares the scaled features seen live with the
training split's, and the policy's live actions with its actions on the validation split
(`action_matrix`), and logs a warning event naming the columns whose PSI passes
`paper.drift_psi`.
"""

from __future__ import annotations

import numpy as np


def psi(reference: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `live` against `reference` (1-D samples)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if ref.size < bins or cur.size == 0:
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    q = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    p = np.maximum(p / ref.size, 1e-4)
    q = np.maximum(q / cur.size, 1e-4)
    return float(np.sum((q - p) * np.log(q / p)))


def ks(reference: np.ndarray, live: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max distance between the two CDFs)."""
    a = np.sort(np.asarray(reference, dtype=np.float64))
    b = np.sort(np.asarray(live, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        return 0.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def drifted_features(
    reference: np.ndarray, live: np.ndarray, names: list[str], limit: float
) -> list[tuple[str, float, float]]:
    """(feature, PSI, KS) of every column of `live` (rows = bars) whose PSI passes `limit`."""
    out = []
    for j, name in enumerate(names):
        value = psi(reference[:, j], live[:, j])
        if value > limit:
            out.append((name, value, ks(reference[:, j], live[:, j])))
    return out


def action_matrix(
    decisions: list[dict[str, list[float]]], agents: list[str]
) -> tuple[list[str], np.ndarray]:
    """(column names, rows = decisions) of the agents' actions: one column per agent and
    action component (`meta[3]`; a one-component action is named by its agent)."""
    names: list[str] = []
    for agent in agents:
        width = len(decisions[0][agent]) if decisions and agent in decisions[0] else 1
        names += [agent] if width == 1 else [f"{agent}[{i}]" for i in range(width)]
    rows = np.array(
        [[x for agent in agents for x in d.get(agent, [])] for d in decisions], dtype=np.float64
    )
    return names, rows.reshape(len(decisions), len(names))
