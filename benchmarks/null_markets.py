"""False discoveries on markets without an edge: zero-cost, driftless synthetic markets.

For each of `--seeds` market seeds the retraining walk-forward runs (phase 1, `--folds` folds,
one training seed, the CI null test's budget) on a driftless synthetic market with ZERO costs
(fee, slippage and spread 0), so costs cannot sink the policy: only luck can make it look
good. Reported:

* the false-positive rate of "DSR >= 0.95" of the trained policy over the markets (target:
  at most 5%), next to its PSR >= 0.95 rate (no deflation);
* the same for the best of `--random` seeded random policies traded on the same stitched test
  blocks (chosen by Sharpe, deflated for the `--random` policies tried): the selection effect
  the DSR must absorb.

Each market is its own data fingerprint, so the trial ledger (in a temporary workspace)
counts each walk-forward's own trials only. Writes JSON to `--out`.

    nice -n 19 .venv/bin/python benchmarks/null_markets.py --seeds 20
    .venv/bin/python benchmarks/null_markets.py --seeds 2 --folds 2 --timesteps 1000 --random 5
    .venv/bin/python benchmarks/null_markets.py --seeds 20 --no-train   # random policies only

The 20-seed run trains 20 x `--folds` phase-1 policies (about 20 x 1 min on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rl_trading import metrics
from rl_trading.config import AppConfig
from rl_trading.evaluation import walk_forward_retrain as wf
from rl_trading.evaluation.baselines import random_targets, simulate_weights

THRESHOLD = 0.95


def null_config(market_seed: int, timesteps: int, n_bars: int) -> AppConfig:
    """The CI null test's market and budget (tests/test_walk_forward_retrain.py), zero costs."""
    return AppConfig.model_validate(
        {
            "seed": 1,
            "data": {
                "source": "synthetic",
                "symbols": ["AAA", "BBB"],
                "embargo_bars": 10,
                "synthetic": {"n_bars": n_bars, "seed": market_seed, "signal_strength": 0.0},
            },
            "env": {
                "episode_length": 256,
                "transaction_cost": 0.0,
                "slippage_bps": 0.0,
                "spread_bps": 0.0,
                "max_position_size": 1.0,
                "sectors": {},
                "max_sector_allocation": None,
            },
            "ppo": {"train_batch_size": 1000, "minibatch_size": 250, "num_epochs": 6, "lr": 1e-3},
            "phases": {
                "phase1_timesteps": timesteps,
                "eval_interval": 2,
                "checkpoint_interval": 100,
            },
            "tracking": {"system_metrics": False},
        }
    )


def best_random(plan: wf.WalkForwardPlan, n_random: int, seed: int) -> dict[str, Any]:
    """Best (by stitched Sharpe) of `n_random` seeded random policies on the plan's test
    blocks, zero costs; its PSR and its DSR deflated for the `n_random` tried."""
    cfg = plan.cfg
    blocks = [p.take(plan.bars, "test") for p in plan.plans]
    best: dict[str, Any] | None = None
    sharpes = []
    for i in range(n_random):
        rets = []
        for k, block in enumerate(blocks):
            t_len, n = len(next(iter(block.values()))), len(block)
            targets = random_targets(
                t_len, n, seed * 10_000 + i * 100 + k, cfg.env.max_position_size, True
            )
            run = simulate_weights("random", block, targets, 1.0, 0.0)
            rets.append(run.returns)
        r = np.concatenate(rets)
        sd = float(np.std(r, ddof=1))
        sr = float(r.mean() / sd) if sd > 0 else 0.0
        sharpes.append(sr)
        if best is None or sr > best["sharpe_per_period"]:
            best = {"policy": i, "sharpe_per_period": sr, "returns": r}
    assert best is not None
    r = best.pop("returns")
    best["psr"] = metrics.probabilistic_sharpe_ratio(r)
    best["dsr"] = metrics.deflated_sharpe_ratio(r, n_random, sharpes)
    return best


def run_market(seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One driftless market: the walk-forward's DSR / PSR and the best random policy's."""
    cfg = null_config(seed, args.timesteps, args.n_bars)
    plan = wf.prepare(
        cfg, n_folds=args.folds, n_seeds=1, out_dir=root / f"market{seed}", phases="1",
        resume=True, supervised=False,
    )  # fmt: skip
    t0 = time.monotonic()
    rnd = best_random(plan, args.random, seed)
    if args.no_train:
        return {"market_seed": seed, "random_best": rnd, "wall_s": time.monotonic() - t0}
    report = wf.walk_forward_retrain(plan, verbose=0)
    return {
        "market_seed": seed,
        "dsr": report["dsr"],
        "psr": report["psr"],
        "n_trials": report["n_trials"],
        "stitched_sharpe": report["policy"]["stitched_sharpe"],
        "fold_sharpes": report["fold_values"]["policy"]["sharpe_ratio"],
        "random_best": rnd,
        "wall_s": time.monotonic() - t0,
    }


def rate(values: list[float]) -> dict[str, Any]:
    """Share of values at or above the threshold, with its count."""
    hits = sum(1 for v in values if v is not None and math.isfinite(v) and v >= THRESHOLD)
    return {"hits": hits, "n": len(values), "rate": hits / max(1, len(values))}


def main() -> None:
    """Parse arguments, run every market, print and write the false-positive rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="driftless markets (>= 20)")
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--timesteps", type=int, default=4000, help="phase-1 env steps per fold")
    parser.add_argument("--n-bars", type=int, default=5000)
    parser.add_argument("--random", type=int, default=20, help="random policies per market")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument(
        "--no-train", action="store_true", help="only the best-of-N random policies (seconds)"
    )
    parser.add_argument("--out", default="benchmarks/results/null_markets.json")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune banners: one line per market
    if not args.no_train:
        import ray  # noqa: PLC0415 - only the training part needs Ray

        ray.init(
            address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="null_markets_") as tmp:
        os.chdir(tmp)  # the trial ledger and MLflow store of this benchmark only
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = run_market(seed, args, Path(tmp))
            rows.append(row)
            if args.no_train:
                rnd = row["random_best"]
                print(f"market {seed}: best of {args.random} random: DSR {rnd['dsr']:.3f} "
                      f"PSR {rnd['psr']:.3f}", flush=True)  # fmt: skip
                continue
            print(
                f"market {seed}: policy DSR {row['dsr']:.3f} PSR {row['psr']:.3f} "
                f"(n_trials {row['n_trials']}, stitched Sharpe {row['stitched_sharpe']:.2f}); "
                f"best of {args.random} random: DSR {row['random_best']['dsr']:.3f} "
                f"PSR {row['random_best']['psr']:.3f} ({row['wall_s']:.0f} s)",
                flush=True,
            )
    summary: dict[str, Any] = {"markets": len(rows), "costs": 0.0}
    if not args.no_train:
        summary["policy_dsr"] = rate([r["dsr"] for r in rows])
        summary["policy_psr"] = rate([r["psr"] for r in rows])
    summary["random_best_dsr"] = rate([r["random_best"]["dsr"] for r in rows])
    summary["random_best_psr"] = rate([r["random_best"]["psr"] for r in rows])
    pct = {k: f"{v['rate']:.0%}" for k, v in summary.items() if isinstance(v, dict)}
    policy = "" if args.no_train else f"policy DSR {pct['policy_dsr']} (PSR {pct['policy_psr']}); "
    print(
        f"false positives over {len(rows)} zero-cost driftless markets (>= {THRESHOLD}): "
        f"{policy}best of {args.random} random DSR {pct['random_best_dsr']} "
        f"(PSR {pct['random_best_psr']})"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": summary, "markets": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
