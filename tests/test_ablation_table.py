"""The selection table's trial recording (benchmarks/ablation_table.py --record): a candidate
counts its own validation passes, once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablation_table  # noqa: E402

from rl_trading import ledger  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _report(seeds: list[int]) -> dict:
    """A walk-forward report's trial counts: 2 folds x 2 seeds x 6 passes, plus the seeds; its
    n_trials is the DSR's count (the whole ledger on the market), not the run's."""
    detail = {"validation_passes": 24, "seeds": len(seeds), "this_run": 26, "ledger": 5000}
    return {"seeds": seeds, "policy": {"n_trials": 5000, "n_trials_detail": detail}}


def test_own_trials_are_the_runs_passes_plus_its_seeds() -> None:
    assert ablation_table.own_trials(_report([42, 43])) == 24 + 2


def _candidate(root: Path, name: str) -> Path:
    """A candidate folder as real_markets.py writes it, on us_daily, with its report."""
    folder = root / name
    run_dir = folder / "us_daily"
    run_dir.mkdir(parents=True)
    (run_dir / "walk_forward.json").write_text(json.dumps(_report([42, 43])))
    summary = {
        "sets": [
            {
                "set": "us_daily",
                "config": str(root / "gone" / "default.yaml"),  # a removed worktree's config
                "overrides": ["env.vol_target=0.1"],
                "report": str(run_dir / "walk_forward.json"),
            }
        ]
    }
    (folder / "real_markets.json").write_text(json.dumps(summary))
    return folder


def test_record_counts_own_passes_once(workspace, market_dir) -> None:
    """A candidate from elsewhere is recorded with its own passes (not the DSR's n_trials); one
    whose walk-forward already recorded itself in this ledger is not counted again."""
    import argparse
    import importlib

    real_markets = importlib.import_module("real_markets")
    ns = argparse.Namespace(seed=42, num_cpus=2, tiny=False, set=[],
                            config=REPO / "configs" / "default.yaml")  # fmt: skip
    fp = ledger.market_fingerprint(real_markets.set_config("us_daily", ns))

    elsewhere = _candidate(workspace, "R_elsewhere")
    ablation_table.record([elsewhere])
    assert ledger.count_trials(fp) == 26
    ablation_table.record([elsewhere])  # recording it again adds nothing
    assert ledger.count_trials(fp) == 26

    here = _candidate(workspace, "R_here")
    run_dir = str(here / "us_daily")
    ledger.record_trials(fp, "walk_forward", [{"fold": 0, "seed": 42}], run_dir, 7)
    ablation_table.record([here])
    assert ledger.count_trials(fp) == 26 + 7


def _scored(name: str, sets: dict[str, list[int]], protocol: int = 2) -> dict:
    """A candidate as `ablation_table.candidate` reads it: per set its folds, and its protocol."""
    rows = {"minus_vm": 0.1, "exposure": 0.5, "protocol": protocol}
    return {"name": name, "sets": {s: {**rows, "folds": folds} for s, folds in sets.items()}}


def test_only_candidates_measured_alike_are_ranked() -> None:
    """The rule ranks candidates on exactly the selection sets and folds, all measured by one
    walk-forward protocol; anything else is refused with the reason."""
    sets, folds = ("us_daily", "crypto_30m"), (0, 1)
    ok = {"us_daily": [0, 1], "crypto_30m": [0, 1]}
    assert ablation_table.comparable([_scored("a", ok), _scored("b", ok)], sets, folds) == ""
    untouched = {"us_daily": [0, 1, 2, 3], "crypto_30m": [0, 1]}
    why = ablation_table.comparable([_scored("a", untouched)], sets, folds)
    assert why == "a ran us_daily on folds [0, 1, 2, 3], not [0, 1]"
    why = ablation_table.comparable([_scored("a", {"us_daily": [0, 1]})], sets, folds)
    assert why.startswith("a ran on ['us_daily'], not the selection sets")
    mixed = [_scored("old", ok, protocol=1), _scored("new", ok)]
    why = ablation_table.comparable(mixed, sets, folds)
    assert why == "candidates measured by different walk-forward protocols: 1: old; 2: new"
    half = _scored("half", ok)
    half["sets"]["crypto_30m"]["protocol"] = 1  # one set measured the old way
    why = ablation_table.comparable([half], sets, folds)
    assert why == "candidates measured by different walk-forward protocols: 1: half; 2: half"


def test_the_committed_ledger_gives_the_published_dsr_trial_counts(market_dir, workspace) -> None:
    """A rerun from a fresh clone merges benchmarks/results/trial_ledger.json first
    (real_markets.merge_ledger), so its DSRs deflate by the trials the published table did:
    on every set of benchmarks/results/real_markets.json, the file holds exactly that run's
    count on the set's market."""
    import argparse

    import real_markets  # noqa: E402 - benchmarks/ is on sys.path above

    published = json.loads((REPO / "benchmarks/results/real_markets.json").read_text())
    ns = argparse.Namespace(seed=42, num_cpus=2, tiny=False, set=[],
                            config=REPO / "configs/default.yaml")  # fmt: skip
    url = real_markets.merge_ledger(real_markets.LEDGER_FILE, ["us_daily"], ns)
    assert url.endswith("rl_trading.db") and (workspace / "rl_trading.db").is_file()
    for res in published["sets"]:
        fp = ledger.market_fingerprint(real_markets.set_config(res["set"], ns))
        assert ledger.count_trials(fp, url) == res["n_trials"], res["set"]
    # merged once: a second merge adds nothing
    real_markets.merge_ledger(real_markets.LEDGER_FILE, ["us_daily"], ns)
    us = next(r for r in published["sets"] if r["set"] == "us_daily")
    fp = ledger.market_fingerprint(real_markets.set_config("us_daily", ns))
    assert ledger.count_trials(fp, url) == us["n_trials"]
