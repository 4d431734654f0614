"""The README's results table from one `benchmarks/real_markets.py` run (its real_markets.json).

Per set: its role in the nested selection (selection / confirmation), the policy's fold-mean
net Sharpe with its 95% interval, its mean gross exposure, information ratio and tracking error
against its own benchmark, the paired policy - baseline net Sharpe differences (95% interval
over folds) against volatility-matched buy-and-hold and causal vol-targeted buy-and-hold, and
the DSR with its trial count. For the selection sets a second row gives the folds no choice
touched (after `real_markets.SELECTION_FOLDS`), recomputed from the per-fold values. Then the
count of sets where the policy is at least level with volatility-matched buy-and-hold.

    .venv/bin/python benchmarks/results_table.py runs/final/real_markets.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
SELECTION_FOLDS = importlib.import_module("real_markets").SELECTION_FOLDS
VM = "buy_and_hold_vol_matched"
VT = "buy_and_hold_vol_target"


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval (the walk-forward's own, rl_trading.evaluation)."""
    from rl_trading.evaluation.walk_forward_retrain import interval as wf_interval

    out = wf_interval(values)
    return out["mean"], out["ci95"][0], out["ci95"][1]


def f(v: Any, fmt: str = "{:.2f}") -> str:
    """A number, or '-' for none / NaN."""
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def ci(m: float, lo: float, hi: float) -> str:
    """'m [lo, hi]'."""
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


def rows_of(res: dict[str, Any], keep: list[int] | None = None) -> dict[str, str]:
    """One table row of a set: every fold, or only the folds at positions `keep`."""
    fv, paired = res["fold_values"], res["paired_per_fold"]

    def pick(values: list[float]) -> list[float]:
        return values if keep is None else [values[i] for i in keep]

    pol = fv["policy"]
    out = {
        "sharpe": ci(*interval(pick(pol["sharpe_ratio"]))),
        "gross": f(sum(pick(pol["exposure"])) / len(pick(pol["exposure"]))),
        "ir": f(sum(pick(pol["information_ratio"])) / len(pick(pol["information_ratio"]))),
        "te": f(sum(pick(pol["tracking_error"])) / len(pick(pol["tracking_error"])), "{:.1%}"),
    }
    for key, base in (("vm", VM), ("vt", VT)):
        diffs = paired.get(base, {}).get("sharpe_ratio")
        out[key] = ci(*interval(pick(diffs))) if diffs else "-"
        out[key + "_mean"] = interval(pick(diffs))[0] if diffs else math.nan
    return out


def main() -> None:
    """Print the table and the count of sets level with volatility-matched buy-and-hold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    args = parser.parse_args()
    data = json.loads(args.summary.read_text())
    print(
        "| set | role | folds | policy net Sharpe [95% CI] | gross | IR | TE "
        "| policy - B&H vol-matched | policy - B&H vol-target | DSR (trials) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    level = []
    for res in data["sets"]:
        r = rows_of(res)
        folds = [i["fold"] for i in res["folds_info"]]
        dsr = f"{f(res['dsr'], '{:.3f}')} ({res['n_trials']})"
        print(
            f"| {res['set']} | {res['role']} | {len(folds)} x {len(res['seeds'])} seeds "
            f"| {r['sharpe']} | {r['gross']} | {r['ir']} | {r['te']} | {r['vm']} | {r['vt']} "
            f"| {dsr} |"
        )
        level.append((res["set"], r["vm_mean"] >= 0.0))
        if res["role"] == "selection":
            keep = [i for i, k in enumerate(folds) if k not in SELECTION_FOLDS]
            if keep:
                u = rows_of(res, keep)
                print(
                    f"| {res['set']} | untouched folds {[folds[i] for i in keep]} "
                    f"| {len(keep)} x {len(res['seeds'])} seeds | {u['sharpe']} | {u['gross']} "
                    f"| {u['ir']} | {u['te']} | {u['vm']} | {u['vt']} | - |"
                )
    met = [name for name, ok in level if ok]
    print(
        f"\nat least level with volatility-matched buy-and-hold (fold-mean paired difference "
        f">= 0): {len(met)} of {len(level)} sets ({', '.join(met) or 'none'})"
    )


if __name__ == "__main__":
    main()
