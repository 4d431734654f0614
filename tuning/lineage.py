"""PBT lineage: the exploit/explore log PBT writes, and a PNG of each hyperparameter over time.

PBT appends one JSON line per exploit to `pbt_global.txt` in the experiment folder:
`[target tag, source tag, target iteration, source iteration, source config, new config]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuning.trainable import HPARAM_FIELDS, trial_index

GLOBAL_LOG = "pbt_global.txt"


def _tag_index(tag: str) -> int:
    """Trial index from PBT's experiment tag (`"3_lr=0.001,..."` -> 3)."""
    head = str(tag).split("_", 1)[0]
    return int(head) if head.isdigit() else -1


def find_global_log(experiment_path: str | Path) -> Path | None:
    """`pbt_global.txt` of an experiment (searched below it as well), or None."""
    root = Path(experiment_path)
    direct = root / GLOBAL_LOG
    if direct.is_file():
        return direct
    found = sorted(root.rglob(GLOBAL_LOG))
    return found[0] if found else None


def read_exploits(experiment_path: str | Path) -> pd.DataFrame:
    """One row per exploit: target/source trial index, iterations, old and new hyperparameters."""
    cols = ["target", "source", "target_iter", "source_iter"]
    cols += [f"{p}_{k}" for k in HPARAM_FIELDS for p in ("old", "new")]
    path = find_global_log(experiment_path)
    if path is None:
        return pd.DataFrame(columns=cols)
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        target, source, t_iter, s_iter, old_cfg, new_cfg = json.loads(line)
        row: dict[str, Any] = {
            "target": _tag_index(target),
            "source": _tag_index(source),
            "target_iter": int(t_iter),
            "source_iter": int(s_iter),
        }
        for key in HPARAM_FIELDS:
            row[f"old_{key}"] = old_cfg.get(key)
            row[f"new_{key}"] = new_cfg.get(key)
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def trial_histories(results: Any) -> dict[int, pd.DataFrame]:
    """`{trial index: per-iteration dataframe}` from a Tune ResultGrid (progress.csv rows)."""
    out: dict[int, pd.DataFrame] = {}
    for result in results:
        df = result.metrics_dataframe
        if df is None or df.empty:
            continue
        trial_id = str((result.metrics or {}).get("trial_id", Path(result.path).name))
        out[trial_index(trial_id)] = df.reset_index(drop=True)
    return out


HPARAM_UNITS = {
    "lr": "learning rate (log scale)",
    "gamma": "discount gamma",
    "clip_param": "PPO clip",
    "lambda": "GAE lambda",
    "entropy_coeff": "entropy coefficient",
}


def lineage_figure(results: Any, exploits: pd.DataFrame, metric: str) -> Any | None:
    """One panel per hyperparameter (+ the objective) over iterations, one line per trial.

    Exploits show as a marker where the target trial took over the source trial's weights; the
    objective panel also shows the starting population's mean (dashed) as the baseline the
    search has to beat. None when no trial reported anything.
    """
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib

    histories = trial_histories(results)
    if not histories:
        return None
    panels = [k for k in HPARAM_FIELDS if any(f"hp/{k}" in d for d in histories.values())]
    panels.append(metric)
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels) + 0.6), sharex=True)
    axes = list(axes) if len(panels) > 1 else [axes]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for idx, df in sorted(histories.items()):
        color = colors[idx % len(colors)]
        x = df["training_iteration"] if "training_iteration" in df else df.index.to_series() + 1
        # An exploit restores the source trial's checkpoint: the iteration count restarts from
        # the source's, so each jump begins a new segment (marked with a dot).
        segment = (x.diff().fillna(1) != 1).cumsum()
        for seg_id, part in df.groupby(segment):
            xs = x[part.index]
            for ax, key in zip(axes, panels, strict=True):
                col = key if key == metric else f"hp/{key}"
                if col not in part:
                    continue
                label = f"trial {idx}" if seg_id == 0 else None
                ax.step(xs, part[col], where="post", color=color, label=label)
                if seg_id > 0:
                    ax.plot(
                        xs.iloc[0],
                        part[col].iloc[0],
                        marker="o",
                        color=color,
                        markersize=6,
                        markeredgecolor="black",
                    )
    starts = [float(d[metric].iloc[0]) for d in histories.values() if metric in d and len(d)]
    obj = axes[-1]
    if starts:
        obj.axhline(
            float(np.mean(starts)), color="grey", ls="--", lw=1.0, label="start (population mean)"
        )
    for ax, key in zip(axes, panels, strict=True):
        ax.set_ylabel(f"{metric} (objective)" if key == metric else HPARAM_UNITS.get(key, key))
        if key == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=7, ncol=4, title="trial")
    obj.legend(loc="best", fontsize=7)
    axes[-1].set_xlabel("training iteration")
    fig.suptitle(f"PBT lineage ({len(exploits)} exploits; dots: after an exploit)")
    fig.tight_layout()
    return fig


def plot_lineage(
    results: Any, exploits: pd.DataFrame, metric: str, path: str | Path
) -> Path | None:
    """lineage.png: :func:`lineage_figure` saved at `path` (None when nothing was reported)."""
    import matplotlib.pyplot as plt  # heavy: matplotlib

    fig = lineage_figure(results, exploits, metric)
    if fig is None:
        return None
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
