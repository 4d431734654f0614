"""The mean-action ensemble of each fold's seeds against the seeds one by one, on the
checkpoints an ablation run already trained (no training): per fold, the paired difference
policy - volatility-matched buy-and-hold (net Sharpe) of the ensemble and of each seed.

    .venv/bin/python benchmarks/seed_ensemble.py runs/abl/R38_control us_daily,crypto_30m 0,1

The ensemble is `rl_trading.evaluation.policy.Ensemble` (the mean of the members' Gaussian
means), backtested on the fold's test block with the walk-forward's own warm-up and scaler
bars. Trailing `--set`-style overrides (key=value) must match the run's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_markets as rm  # noqa: E402

from rl_trading.evaluation.backtest import backtest  # noqa: E402
from rl_trading.evaluation.policy import Ensemble  # noqa: E402
from rl_trading.evaluation.walk_forward_retrain import fold_blocks  # noqa: E402


def main() -> None:
    """Print one line per fold and the means over folds, per set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("sets")
    parser.add_argument("folds")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    folds = {int(f) for f in args.folds.split(",")}
    for name in args.sets.split(","):
        cfg, bars, trained = rm.trained_folds(args.run, name, args.overrides, folds)
        ens, one = [], []
        for p, results in trained:
            if len(results) < 2:
                raise SystemExit(f"{name} fold {p.index}: {len(results)} seed result(s), need 2+")
            fit, _, test = fold_blocks(cfg, bars, p)
            members = Ensemble([r["checkpoint"] for r in results], cfg=cfg)
            out = backtest(members, test, cfg, seed=42, scaler_bars=fit, include_supervised=False)
            policy, diff, gross = rm.backtest_paired(out)
            seeds = [rm.minus_vol_matched(r["strategies"]) for r in results]
            print(f"{name} fold {p.index}: ensemble {diff:+.3f} (policy {policy:.3f}, "
                  f"gross {gross:.2f}, B&H vol-matched {policy - diff:.3f}); seeds "
                  f"{', '.join(f'{s:+.3f}' for s in seeds)}")  # fmt: skip
            ens.append(diff)
            one.append(float(np.mean(seeds)))
        print(f"{name}: policy - B&H vol-matched, mean over folds: ensemble "
              f"{np.mean(ens):+.3f}, seeds one by one {np.mean(one):+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
