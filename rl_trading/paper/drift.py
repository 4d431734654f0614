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
    edges = _edges(ref, bins)
    return _psi_of(_counts(edges, ref), ref.size, _counts(edges, cur), cur.size)


def _edges(ref: np.ndarray, bins: int) -> np.ndarray:
    """The reference's inner decile edges (the bins of `psi`)."""
    return np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def _counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)


def _psi_of(ref_counts: np.ndarray, ref_n: int, counts: np.ndarray, n: int) -> float:
    p = np.maximum(ref_counts / ref_n, 1e-4)
    q = np.maximum(counts / n, 1e-4)
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


class DriftMonitor:
    """`drifted_features` for a growing live sample, at a cost per check that does not grow
    with the session: the reference's bins and counts are computed once, the rows added since
    the last check are counted into the same bins (the same numbers as `psi` of the whole
    sample), and KS, which needs the samples, only for the columns past the limit."""

    def __init__(self, reference: np.ndarray, names: list[str], bins: int = 10) -> None:
        self.reference = np.asarray(reference, dtype=np.float64)
        self.names, self.bins = names, bins
        self._ref: list[tuple[np.ndarray, np.ndarray, int] | None] = []
        for j in range(len(names)):
            col = self.reference[:, j]
            col = col[np.isfinite(col)]
            if col.size < bins:
                self._ref.append(None)
                continue
            edges = _edges(col, bins)
            self._ref.append((edges, _counts(edges, col), col.size))
        self._counts = [np.zeros(r[0].size + 1, dtype=np.int64) if r else None for r in self._ref]
        self._n = [0] * len(names)
        self._rows: list[np.ndarray] = []  # every live row (KS)
        self._new: list[np.ndarray] = []  # rows not counted yet

    def add(self, rows: np.ndarray) -> None:
        """Live rows (one per sample, a column per name)."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, len(self.names))
        self._rows.append(rows)
        self._new.append(rows)

    def drifted(self, limit: float) -> list[tuple[str, float, float]]:
        """(name, PSI, KS) of every column whose PSI passes `limit`."""
        if self._new:
            new = np.concatenate(self._new, axis=0)
            self._new = []
            for j, ref in enumerate(self._ref):
                if ref is not None:
                    col = new[:, j]
                    col = col[np.isfinite(col)]
                    self._counts[j] += _counts(ref[0], col)
                    self._n[j] += col.size
        found = []
        for j, ref in enumerate(self._ref):
            if ref is None or not self._n[j]:
                continue
            value = _psi_of(ref[1], ref[2], self._counts[j], self._n[j])
            if value > limit:
                found.append((j, value))
        if not found:
            return []
        live = np.concatenate(self._rows, axis=0)
        return [(self.names[j], v, ks(self.reference[:, j], live[:, j])) for j, v in found]
