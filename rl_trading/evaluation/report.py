"""Backtest reports: a rich table, a JSON file and PNG plots (matplotlib Agg) in the run dir.

``report.json`` keys: ``meta`` (bars, span, fingerprint, seed, policy source, scaler origin),
``targets`` (each target metric's configured threshold and comparison), ``strategies``
(every metric of the policy and each baseline), ``target_checks`` (strategy -> metric ->
value/target/pass), ``policy_vs_baselines`` (policy minus each baseline on headline metrics)
and, with ``walk``, ``walk_forward`` (``label`` / ``retrained``: without retraining these are
sub-periods of one test split; folds, seeds, per-run rows and mean / 95% CI over the folds
with seeds averaged in each). ``meta`` carries ``periods_per_year`` and ``risk_free_rate``
(always 0) and ``n_trials`` (the DSR's deflation).
Plots: ``equity.png`` (equity curves), ``drawdown.png``, ``positions.png`` (weights over time)
and ``walk_forward.png`` (mean Sharpe with CI per strategy) when walk-forward ran.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rl_trading.evaluation.backtest import TARGETS, BacktestResult, _cfg_value

if TYPE_CHECKING:
    from rl_trading.config import AppConfig
    from rl_trading.evaluation.walk_forward import WalkForwardResult

HEADLINE = [
    "total_return",
    "annualized_return",
    "sharpe_ratio",
    "psr",
    "dsr",
    "sortino_ratio",
    "max_drawdown",
    "max_drawdown_vol_matched",
    "win_rate",
    "profit_factor",
    "var_compliance",
    "exposure",
    "turnover",
    "total_costs",
]


def json_safe(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_dict(
    result: BacktestResult, cfg: AppConfig, walk: WalkForwardResult | None = None
) -> dict[str, Any]:
    """Everything the JSON report holds (see module docstring)."""
    targets = {m: {"target": _cfg_value(cfg, k), "op": op} for m, (k, op) in TARGETS.items()}
    out: dict[str, Any] = {
        "meta": result.meta,
        "targets": targets,
        "strategies": result.metrics,
        "target_checks": result.targets,
    }
    if "policy" in result.metrics:
        pol = result.metrics["policy"]
        out["policy_vs_baselines"] = {
            name: {k: pol.get(k, 0.0) - m.get(k, 0.0) for k in HEADLINE if k in pol}
            for name, m in result.metrics.items()
            if name != "policy"
        }
    if walk is not None:
        out["walk_forward"] = {
            "label": walk.meta.get("label"),
            "retrained": bool(walk.meta.get("retrained")),
            "meta": walk.meta,
            "folds": walk.folds,
            "seeds": walk.seeds,
            "n_runs": walk.n_runs,
            "summary": walk.summary,
            "rows": walk.rows,
        }
    return json_safe(out)


def _fmt(value: float | None, metric: str = "") -> str:
    """A number as a short, never-cut string: 3 decimals, thousands grouped when large."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    if not math.isfinite(value):
        return "-"
    if metric in ("total_costs", "final_equity") or abs(value) >= 1e4:
        return f"{value:,.2f}"
    if float(value).is_integer() and abs(value) >= 10:  # counts: bars, trades
        return f"{int(value):,}"
    return f"{value:.3f}"


def metric_order(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Every numeric metric the strategies report: the headline ones first, then the rest."""
    seen: list[str] = []
    for mets in metrics.values():
        for key, value in mets.items():
            if key not in seen and isinstance(value, int | float) and not isinstance(value, bool):
                seen.append(key)
    return [m for m in HEADLINE if m in seen] + [m for m in seen if m not in HEADLINE]


class PackedTables:
    """Rich renderable: a grid split into as many tables as needed to fit the console width.

    Rows are labelled (e.g. one per metric) and every column (e.g. one per strategy) keeps its
    full header and cells: columns that do not fit go into a further table that repeats the
    row labels, so nothing is cut at 80 columns (CI logs, redirected output).
    """

    def __init__(
        self,
        title: str,
        row_header: str,
        row_labels: list[str],
        columns: list[tuple[str, list[str]]],
        caption: str | None = None,
    ) -> None:
        self.title = title
        self.row_header = row_header
        self.row_labels = row_labels
        self.columns = columns
        self.caption = caption

    @staticmethod
    def _width(header: str, cells: list[str]) -> int:
        texts = [Text.from_markup(c).cell_len for c in cells]
        return max([Text.from_markup(header).cell_len, *texts])

    def groups(self, max_width: int) -> list[list[int]]:
        """Column indices of each table, packed greedily left to right within `max_width`."""
        label_w = self._width(self.row_header, self.row_labels) + 3  # padding + border
        groups: list[list[int]] = []
        used = label_w + 1
        for i, (header, cells) in enumerate(self.columns):
            w = self._width(header, cells) + 3
            if groups and used + w <= max_width:
                groups[-1].append(i)
                used += w
            else:
                groups.append([i])
                used = label_w + 1 + w
        return groups or [[]]

    def tables(self, max_width: int = 80) -> list[Table]:
        """The tables as they print at `max_width` columns."""
        groups = self.groups(max_width)
        out = []
        for n, group in enumerate(groups):
            title = self.title if len(groups) == 1 else f"{self.title} ({n + 1}/{len(groups)})"
            caption = self.caption if n == len(groups) - 1 else None
            table = Table(title=title, caption=caption, header_style="bold")
            table.add_column(self.row_header, overflow="fold")
            for i in group:
                table.add_column(self.columns[i][0], justify="right", overflow="fold")
            for r, label in enumerate(self.row_labels):
                table.add_row(label, *[self.columns[i][1][r] for i in group])
            out.append(table)
        return out

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield from self.tables(options.max_width)


def metrics_grid(
    metrics: dict[str, dict[str, Any]],
    title: str,
    targets: dict[str, dict[str, dict[str, Any]]] | None = None,
    caption: str | None = None,
) -> PackedTables:
    """One row per metric, one column per strategy (or model), split to fit the width."""
    order = metric_order(metrics)
    labels = [m.replace("_", " ") for m in order]
    columns = []
    for name, mets in metrics.items():
        cells = [_fmt(mets.get(m), m) for m in order]
        if targets is not None:
            checks = targets.get(name, {})
            passed = sum(1 for c in checks.values() if c["pass"])
            flag = "green" if passed == len(checks) else "red" if passed == 0 else "yellow"
            cells.append(f"[{flag}]{passed}/{len(checks)}[/]")
        label = escape(str(name))
        columns.append((f"[bold]{label}[/]" if name == "policy" else label, cells))
    if targets is not None:
        labels.append("targets passed")
    return PackedTables(title, "metric", labels, columns, caption)


def render_table(result: BacktestResult, title: str = "Backtest") -> PackedTables:
    """Every metric of the policy and each baseline (one row per metric), targets passed."""
    return metrics_grid(result.metrics, title, targets=result.targets)


def render_targets(result: BacktestResult, strategy: str = "policy") -> Table:
    """Rich table of one strategy's target checks (metric, value, target, PASS/FAIL)."""
    table = Table(title=f"{strategy} vs targets", header_style="bold")
    for col in ("metric", "value", "target", "result"):
        table.add_column(col, justify="right" if col != "metric" else "left", overflow="fold")
    for metric, c in result.targets.get(strategy, {}).items():
        verdict = "[green]PASS[/]" if c["pass"] else "[red]FAIL[/]"
        table.add_row(metric, _fmt(c["value"], metric), f"{c['op']} {c['target']:g}", verdict)
    return table


def render_walk_forward(walk: WalkForwardResult, metrics: list[str] | None = None) -> PackedTables:
    """Mean and 95% CI per strategy over folds x seeds: one row per strategy and statistic."""
    metrics = metrics or ["sharpe_ratio", "total_return", "max_drawdown", "win_rate"]
    if walk.meta.get("retrained"):
        title = f"Walk-forward (retrained): {walk.meta.get('n_folds')} folds"
    else:
        title = (
            f"Walk-forward sub-periods of one test split, not retrained: "
            f"{walk.meta.get('n_folds')} sub-periods"
        )
    title += f" x {len(walk.seeds)} seeds; 95% CI over {walk.meta.get('n_folds')} (seeds averaged)"

    labels = []
    for name in walk.summary:
        labels += [f"{escape(name)} mean", f"{escape(name)} 95% CI"]
    columns = []
    for m in metrics:
        cells = []
        for summ in walk.summary.values():
            s = summ.get(m, {})
            cells.append(_fmt(s.get("mean"), m))
            cells.append(f"[{_fmt(s.get('ci_low'), m)}, {_fmt(s.get('ci_high'), m)}]")
        columns.append((m.replace("_", " "), cells))
    return PackedTables(title, "strategy", labels, columns)


def _drawdown(equity: np.ndarray) -> np.ndarray:
    peak = np.maximum.accumulate(equity)
    return np.where(peak > 0, equity / peak - 1.0, 0.0)


DATE_LABEL = "date (UTC)"


def _pyplot() -> Any:
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # heavy: matplotlib

    return plt


def _save(plt: Any, fig: Any, path: Path, dated: bool = True) -> Path:
    """Write `path` (100 dpi, tilted date labels when the x axis is time) and free the figure."""
    if dated:
        fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _curves_figure(
    result: BacktestResult,
    transform: Callable[[np.ndarray], np.ndarray],
    title: str,
    ylabel: str,
    height: float,
) -> Any:
    """One line per strategy of `transform(equity)` over time: the policy drawn thick on top,
    every baseline beside it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, height))
    for name, run in result.runs.items():
        y = transform(np.asarray(run.equity, dtype=np.float64))
        policy = name == "policy"
        ax.plot(
            run.index[: len(y)], y, label=name, lw=2.2 if policy else 1.0, zorder=3 if policy else 2
        )
    ax.set_title(title)
    ax.set_xlabel(DATE_LABEL)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8, title="strategy")
    ax.grid(alpha=0.3)
    return fig


def equity_figure(result: BacktestResult) -> Any:
    """Equity of the policy and every baseline, each normalised to 1.0 at the first bar."""
    span = f"{result.meta.get('start', '')[:10]} to {result.meta.get('end', '')[:10]}"
    return _curves_figure(
        result,
        lambda eq: eq / eq[0],
        f"Equity: policy vs baselines ({span})",
        "equity / initial equity (x)",
        height=5,
    )


def drawdown_figure(result: BacktestResult) -> Any:
    """Drawdown (percent below the running peak) of the policy and every baseline."""
    return _curves_figure(
        result,
        lambda eq: 100.0 * _drawdown(eq),
        "Drawdown: policy vs baselines",
        "drawdown (% below running peak)",
        height=4,
    )


POSITION_PANELS = ("policy", "buy_and_hold", "equal_weight", "random")


def positions_figure(result: BacktestResult) -> Any:
    """Positions per instrument over time: the policy and the position baselines, one panel
    each, sharing the axes so they compare at a glance."""
    plt = _pyplot()
    shown = {k: result.runs[k] for k in POSITION_PANELS if k in result.runs}
    if not shown:
        shown = dict(list(result.runs.items())[:1])
    fig, axes = plt.subplots(
        len(shown), 1, figsize=(11, 2.6 * len(shown) + 0.6), sharex=True, sharey=True
    )
    axes = np.atleast_1d(axes)
    for ax, (name, run) in zip(axes, shown.items(), strict=False):
        w = np.asarray(run.weights, dtype=np.float64).reshape(len(run.equity), -1)
        x = run.index[: len(w)]
        if w.shape[1] == len(run.symbols) and w.shape[1] > 1:
            ax.stackplot(x, 100.0 * np.clip(w, 0, None).T, labels=run.symbols, alpha=0.8)
            ax.plot(x, 100.0 * w.sum(axis=1), color="k", lw=0.8, label="net")
        else:
            for j in range(w.shape[1]):
                label = run.symbols[j] if j < len(run.symbols) else f"w{j}"
                ax.plot(x, 100.0 * w[:, j], lw=0.9, label=label)
        ax.set_title(f"{name}: position per instrument")
        ax.set_ylabel("% of equity")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=4)
    axes[-1].set_xlabel(DATE_LABEL)
    fig.suptitle("Positions: policy vs baselines (percent of equity, long > 0)")
    return fig


def write_plots(result: BacktestResult, out_dir: str | Path) -> dict[str, Path]:
    """equity.png, drawdown.png and positions.png of every run (matplotlib Agg)."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    return {
        "equity": _save(plt, equity_figure(result), out_dir / "equity.png"),
        "drawdown": _save(plt, drawdown_figure(result), out_dir / "drawdown.png"),
        "positions": _save(plt, positions_figure(result), out_dir / "positions.png"),
    }


def walk_forward_figure(walk: WalkForwardResult) -> Any:
    """Mean Sharpe per strategy with its 95% CI as error bars; policy and baselines coloured
    apart."""
    from matplotlib.patches import Patch  # heavy: matplotlib

    plt = _pyplot()
    names = list(walk.summary)
    means = [walk.summary[n]["sharpe_ratio"]["mean"] for n in names]
    lows = [walk.summary[n]["sharpe_ratio"]["ci_low"] for n in names]
    highs = [walk.summary[n]["sharpe_ratio"]["ci_high"] for n in names]
    err = np.nan_to_num(np.array([np.subtract(means, lows), np.subtract(highs, means)]))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(names)), 4.5))
    colors = ["C3" if n == "policy" else "C0" for n in names]
    ax.bar(names, means, yerr=err, capsize=5, color=colors, ecolor="k")
    ax.axhline(0.0, color="k", lw=0.8)
    kind = "folds" if walk.meta.get("retrained") else "sub-periods of the test split"
    ax.set_title(
        f"Sharpe ratio, mean and 95% CI over {walk.meta.get('n_folds')} {kind} "
        f"({len(walk.seeds)} seeds averaged in each)"
    )
    ax.set_xlabel("strategy")
    ax.set_ylabel("Sharpe ratio (annualised)")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(
        handles=[
            Patch(color="C3", label="policy"),
            Patch(color="C0", label="baselines"),
            plt.Line2D([], [], color="k", marker="_", ls="", markersize=10, label="95% CI"),
        ],
        loc="best",
        fontsize=8,
    )
    ax.grid(alpha=0.3, axis="y")
    return fig


def write_walk_forward_plot(walk: WalkForwardResult, out_dir: str | Path) -> Path:
    """walk_forward.png: mean Sharpe per strategy with its 95% CI as error bars."""
    return _save(_pyplot(), walk_forward_figure(walk), Path(out_dir) / "walk_forward.png", False)


def write_report(
    result: BacktestResult,
    out_dir: str | Path,
    cfg: AppConfig,
    walk: WalkForwardResult | None = None,
) -> dict[str, Path]:
    """Write report.json and the PNG plots into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_plots(result, out_dir)
    if walk is not None:
        paths["walk_forward"] = write_walk_forward_plot(walk, out_dir)
    paths["report"] = out_dir / "report.json"
    paths["report"].write_text(json.dumps(report_dict(result, cfg, walk), indent=2))
    return paths
