"""Compare recipe candidates on the selection folds and pick one by a rule fixed in advance.

Each candidate is one `benchmarks/real_markets.py --test-folds 0,1` run on the selection sets
(`real_markets.SELECTION_SETS`) with its `--set` overrides, in its own `--out` folder. The rule
(issue 32, nested selection): among candidates whose policy holds a mean gross exposure of at
least 0.3 on every selection set, the highest mean over the selection sets of the paired
policy - volatility-matched buy-and-hold net Sharpe difference. Only the earlier folds are
read, so the later folds and the confirmation sets stay untouched by the choice; every
candidate counts as a trial.

    .venv/bin/python benchmarks/ablation_table.py runs/abl/R0_absolute runs/abl/R1_rel_vt ...
    .venv/bin/python benchmarks/ablation_table.py --record runs/abl/*   # into the trial ledger

`--record` writes every candidate into the trial ledger of the current workspace, on each
selection set's market fingerprint (kind `ablation`, its own validation passes plus one per
seed as its trials), so the later walk-forward's DSR on those markets counts them without a
flag; a candidate run in this workspace recorded itself already (its walk-forward rows) and
is skipped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

BASELINE = "buy_and_hold_vol_matched"
MIN_EXPOSURE = 0.3


def candidate(folder: Path) -> dict[str, Any]:
    """The per-set policy rows of one candidate run (its real_markets.json)."""
    summary = json.loads((folder / "real_markets.json").read_text())
    out: dict[str, Any] = {"name": folder.name, "sets": {}, "overrides": None}
    for res in summary["sets"]:
        rows = {r["strategy"]: r for r in res["rows"]}
        pol = rows["policy"]
        base = rows.get(BASELINE, {})
        out["overrides"] = res["overrides"]
        out["sets"][res["set"]] = {
            "sharpe": pol["sharpe"],
            "ci": pol["sharpe_ci95"],
            "minus_vm": base.get("policy_minus"),
            "minus_vm_ci": base.get("policy_minus_ci95"),
            "exposure": pol["exposure"],
            "turnover": pol["turnover"],
            "ir": pol.get("information_ratio"),
            "te": pol.get("tracking_error"),
            "dsr": pol.get("dsr"),
            "folds": res.get("test_folds"),
            "wall_s": res["wall_s"],
            "protocol": res.get("protocol", 1),  # runs before the protocol was recorded: 1
        }
    return out


def comparable(cands: list[dict[str, Any]], sets: tuple[str, ...], folds: tuple[int, ...]) -> str:
    """'' or a line saying why these candidates cannot be ranked by the rule: each must be
    measured on exactly the selection sets and folds (no untouched fold, no missing set), and
    all by one walk-forward protocol (results of another are not comparable)."""
    for c in cands:
        if tuple(sorted(c["sets"])) != tuple(sorted(sets)):
            return f"{c['name']} ran on {sorted(c['sets'])}, not the selection sets {list(sets)}"
        for name, s in c["sets"].items():
            if tuple(s["folds"] or ()) != tuple(folds):
                return f"{c['name']} ran {name} on folds {s['folds']}, not {list(folds)}"
    seen = {(c["name"], s["protocol"]) for c in cands for s in c["sets"].values()}
    protocols = {p for _, p in seen}
    if len(protocols) > 1:
        by = {p: sorted({n for n, q in seen if q == p}) for p in sorted(protocols)}
        return "candidates measured by different walk-forward protocols: " + "; ".join(
            f"{p}: {', '.join(names)}" for p, names in by.items()
        )
    return ""


def score(c: dict[str, Any]) -> float:
    """The selection rule: -inf unless every set holds risk, else the mean paired difference."""
    sets = c["sets"].values()
    if any((s["exposure"] or 0.0) < MIN_EXPOSURE for s in sets):
        return -math.inf
    diffs = [s["minus_vm"] for s in sets if s["minus_vm"] is not None]
    return sum(diffs) / len(diffs) if diffs else -math.inf


def own_trials(report: dict[str, Any]) -> int:
    """A candidate's own trials on one set, as its walk-forward records them in the ledger:
    its validation passes (every fold x seed x phase) plus one per seed. Not the report's
    `n_trials`: that is the DSR's count, the whole ledger on the market included."""
    detail = report["policy"]["n_trials_detail"]
    return int(detail["validation_passes"]) + int(detail["seeds"])


def _real_markets() -> Any:
    """benchmarks/real_markets.py as a module (the sets, their roles and files)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("real_markets")


def record(folders: list[Path]) -> None:
    """Each candidate run into the trial ledger, on its sets' market fingerprints, unless the
    ledger already holds its walk-forward rows (a run made in this workspace records itself:
    recording it again would count its passes twice)."""

    from rl_trading.config import CONFIG_DIR
    from rl_trading.ledger import ledger_url, list_trials, market_fingerprint, record_trials

    set_config = _real_markets().set_config  # the sets' files

    for folder in folders:
        summary = json.loads((folder / "real_markets.json").read_text())
        for res in summary["sets"]:
            # the set's bars are what the fingerprint hashes; a run made in a worktree that is
            # gone since reads them through this checkout's shipped config
            config = Path(res["config"])
            if not config.is_file():
                config = CONFIG_DIR / "default.yaml"
            ns = argparse.Namespace(seed=42, num_cpus=2, tiny=False, set=[], config=config)
            cfg_set = set_config(res["set"], ns)
            fp, url = market_fingerprint(cfg_set), ledger_url(cfg_set)  # the walk-forward's
            report_path = Path(res["report"])
            run_dir = str(report_path.parent)
            if any(r.kind == "walk_forward" and r.source == run_dir
                   for r in list_trials(fp, url)):  # fmt: skip
                print(f"ledger: {folder.name} on {res['set']} ({fp[:12]}): already recorded "
                      "by its walk-forward")  # fmt: skip
                continue
            if not report_path.is_file():
                raise SystemExit(f"{folder.name}: its {res['set']} report {report_path} is "
                                 "gone, so its own trial count is unknown")  # fmt: skip
            n = own_trials(json.loads(report_path.read_text()))
            cfg = {"candidate": folder.name, "overrides": res["overrides"]}
            added = record_trials(fp, "ablation", [cfg], source="benchmarks/ablation_table.py",
                                  trials_each=n, url=url)  # fmt: skip
            state = "recorded" if added else "already recorded"
            print(f"ledger: {folder.name} on {res['set']} ({fp[:12]}): {state}, {n} trials")


def main() -> None:
    """Print the markdown table of the candidates and the one the rule picks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--record", action="store_true", help="write them to the trial ledger")
    args = parser.parse_args()
    cands = [candidate(f) for f in args.folders if (f / "real_markets.json").is_file()]
    if args.record:
        record(args.folders)
    rm = _real_markets()
    why = comparable(cands, rm.SELECTION_SETS, rm.SELECTION_FOLDS)
    if why:
        raise SystemExit(f"error: {why}")

    def f(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None or v != v else fmt.format(v)

    print("| candidate | set | net Sharpe [95% CI] | - B&H vol-matched [95% CI] | gross | "
          "turnover | IR | TE | score |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cands:
        sc = score(c)
        for name, s in c["sets"].items():
            d = s["minus_vm_ci"] or [None, None]
            print(
                f"| {c['name']} | {name} | {f(s['sharpe'])} [{f(s['ci'][0])}, {f(s['ci'][1])}] "
                f"| {f(s['minus_vm'])} [{f(d[0])}, {f(d[1])}] | {f(s['exposure'])} "
                f"| {f(s['turnover'], '{:.4f}')} | {f(s['ir'])} | {f(s['te'], '{:.1%}')} "
                f"| {f(sc)} |"
            )
    ranked = sorted(cands, key=score, reverse=True)
    if ranked:
        print(f"\nchosen by the rule: {ranked[0]['name']} (score {f(score(ranked[0]))}); "
              f"{len(cands)} candidates compared (each one counts as a trial)")  # fmt: skip


if __name__ == "__main__":
    main()
