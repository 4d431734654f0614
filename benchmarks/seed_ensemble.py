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
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_markets as rm  # noqa: E402

from rl_trading import metrics  # noqa: E402
from rl_trading.config import CONFIG_DIR  # noqa: E402
from rl_trading.evaluation.backtest import backtest  # noqa: E402
from rl_trading.evaluation.policy import Ensemble  # noqa: E402
from rl_trading.evaluation.walk_forward_retrain import (  # noqa: E402
    RISK_FREE_RATE,
    fold_blocks,
    prepare,
)
from rl_trading.registry import config_hash  # noqa: E402


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
        ns = argparse.Namespace(seed=42, num_cpus=2, tiny=False, set=args.overrides,
                                config=CONFIG_DIR / "default.yaml")  # fmt: skip
        cfg = rm.set_config(name, ns)
        spec = rm.SETS[name]
        ran = json.loads((args.run / name / "plan.json").read_text())
        if ran["config_hash"] != config_hash(cfg):
            raise SystemExit(f"{args.run / name}: ran with another config than default.yaml + "
                             f"{args.overrides} (give the run's overrides)")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:  # the plan only: the run's own stays as is
            plan = prepare(cfg, n_folds=spec["folds"], n_seeds=2, out_dir=Path(tmp),
                           min_train_frac=spec["min_train_frac"], supervised=False)  # fmt: skip
        ens, one = [], []
        for p in plan.plans:
            if p.index not in folds:
                continue
            files = sorted(
                (args.run / name / "trials").glob(f"fold{p.index:02d}_seed*/result.json")
            )
            results = [json.loads(f.read_text()) for f in files]
            if len(results) < 2:
                raise SystemExit(f"{name} fold {p.index}: {len(results)} seed result(s), need 2+")
            fit, _, test = fold_blocks(cfg, plan.bars, p)
            members = Ensemble([r["checkpoint"] for r in results], cfg=cfg)
            out = backtest(members, test, cfg, seed=42, scaler_bars=fit, include_supervised=False)
            ppy = out.meta["periods_per_year"]
            sh = {
                k: metrics.sharpe_ratio(v.returns, ppy, RISK_FREE_RATE) for k, v in out.runs.items()
            }
            diff = sh["policy"] - sh["buy_and_hold_vol_matched"]
            seeds = [r["strategies"]["policy"]["metrics"]["sharpe_ratio"]
                     - r["strategies"]["buy_and_hold_vol_matched"]["metrics"]["sharpe_ratio"]
                     for r in results]  # fmt: skip
            gross = float(out.metrics["policy"]["exposure"])
            print(f"{name} fold {p.index}: ensemble {diff:+.3f} (policy {sh['policy']:.3f}, "
                  f"gross {gross:.2f}, "
                  f"B&H vol-matched {sh['buy_and_hold_vol_matched']:.3f}); seeds "
                  f"{', '.join(f'{s:+.3f}' for s in seeds)}")  # fmt: skip
            ens.append(diff)
            one.append(float(np.mean(seeds)))
        print(f"{name}: policy - B&H vol-matched, mean over folds: ensemble "
              f"{np.mean(ens):+.3f}, seeds one by one {np.mean(one):+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
