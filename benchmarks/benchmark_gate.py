"""A validation gate between the tilts and the benchmark, on the checkpoints an ablation run
already trained (no training): per fold and seed, the selected checkpoint is deployed with its
tilts only when its net Sharpe on the fold's validation block beats the same env's with the
tilts switched off (`env.active_scale` 0: the benchmark held by the env's own rules, costs
and no-trade band); else the benchmark is deployed. Prints, per fold, the paired difference
to volatility-matched buy-and-hold (net Sharpe, on the test block) of the gated deployment and
of the policy as selected, and the means over folds (seeds averaged within a fold), per set.

    .venv/bin/python benchmarks/benchmark_gate.py runs/abl/R49_control us_daily,crypto_30m 0,1

The decision uses the validation block only (the one the checkpoint was selected on), so the
test block stays untouched; the zero-tilt pass is one more validation pass per fold and seed
(a trial). Trailing `--set`-style overrides (key=value) must match the run's. `--record NAME`
adds the gated candidate to the trial ledger on each set's market (kind `ablation`): the run's
own selection passes plus the zero-tilt validation passes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_markets as rm  # noqa: E402
from ablation_table import MIN_EXPOSURE, own_trials  # noqa: E402

from rl_trading.evaluation.backtest import backtest  # noqa: E402
from rl_trading.evaluation.walk_forward_retrain import fold_blocks  # noqa: E402
from rl_trading.ledger import ledger_url, market_fingerprint, record_trials  # noqa: E402


def main() -> None:
    """Print one line per fold and seed, and the means over folds, per set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("sets")
    parser.add_argument("folds")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--record", metavar="NAME", help="add the candidate to the trial ledger")
    args = parser.parse_args()
    folds = {int(f) for f in args.folds.split(",")}
    scores = []
    for name in args.sets.split(","):
        cfg, bars, trained = rm.trained_folds(args.run, name, args.overrides, folds)
        if cfg.env.benchmark == "none":
            raise SystemExit("the gate needs an env.benchmark (the tilts it switches off)")
        # the tilts off: the env holds its benchmark (a copy, not validated: 0 is not a
        # training setting)
        off = cfg.model_copy(update={"env": cfg.env.model_copy(update={"active_scale": 0.0})})
        gated_means, policy_means, gross_means, kept = [], [], [], 0
        n_units = 0
        for p, results in trained:
            if not results:
                raise SystemExit(f"{name} fold {p.index}: no trial results in {args.run}")
            fit, val, test = fold_blocks(cfg, bars, p)
            gated, as_selected, gross = [], [], []
            for r in results:
                ckpt, seed = r["checkpoint"], int(r["seed"])
                kw = {"seed": seed, "scaler_bars": fit, "include_supervised": False}
                v_on, _, _ = rm.backtest_paired(backtest(ckpt, val, cfg, **kw))
                v_off, _, _ = rm.backtest_paired(backtest(ckpt, val, off, **kw))
                as_selected.append(rm.minus_vol_matched(r["strategies"]))
                tilts = bool(v_on > v_off)
                if tilts:
                    kept += 1
                    gated.append(as_selected[-1])
                    gross.append(r["strategies"]["policy"]["metrics"]["exposure"])
                else:
                    _, diff, g = rm.backtest_paired(backtest(ckpt, test, off, **kw))
                    gated.append(diff)
                    gross.append(g)
                n_units += 1
                print(f"{name} fold {p.index} seed {seed}: validation tilts {v_on:+.3f} / "
                      f"benchmark {v_off:+.3f} -> {'tilts' if tilts else 'benchmark'}; "
                      f"test - B&H vol-matched: gated {gated[-1]:+.3f}, "
                      f"as selected {as_selected[-1]:+.3f}", flush=True)  # fmt: skip
            gated_means.append(float(np.mean(gated)))
            policy_means.append(float(np.mean(as_selected)))
            gross_means.append(float(np.mean(gross)))
        score = float(np.mean(gated_means))
        scores.append(score if np.mean(gross_means) >= MIN_EXPOSURE else -np.inf)
        if args.record:
            report = json.loads((args.run / name / "walk_forward.json").read_text())
            n = own_trials(report) + n_units
            entry = {"candidate": args.record, "gate_over": args.run.name,
                     "overrides": args.overrides}  # fmt: skip
            added = record_trials(market_fingerprint(cfg), "ablation", [entry],
                                  source="benchmarks/benchmark_gate.py", trials_each=n,
                                  url=ledger_url(cfg))  # fmt: skip
            print(
                f"ledger: {args.record} on {name}: "
                f"{'recorded' if added else 'already recorded'}, {n} trials"
            )
        print(f"{name}: policy - B&H vol-matched, mean over folds: gated {score:+.3f}, "
              f"as selected {np.mean(policy_means):+.3f}; gross {np.mean(gross_means):.2f}; "
              f"tilts kept on {kept} of {n_units}", flush=True)  # fmt: skip
    print(f"score (the rule's, over the sets): gated {np.mean(scores):+.3f}")


if __name__ == "__main__":
    main()
