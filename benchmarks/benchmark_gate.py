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
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_markets as rm  # noqa: E402
from ablation_table import own_trials  # noqa: E402

from rl_trading import metrics  # noqa: E402
from rl_trading.config import CONFIG_DIR  # noqa: E402
from rl_trading.evaluation.backtest import backtest  # noqa: E402
from rl_trading.evaluation.walk_forward_retrain import (  # noqa: E402
    RISK_FREE_RATE,
    fold_blocks,
    prepare,
)
from rl_trading.ledger import ledger_url, market_fingerprint, record_trials  # noqa: E402
from rl_trading.registry import config_hash  # noqa: E402


def paired(out) -> tuple[float, float, float]:  # noqa: ANN001
    """(policy net Sharpe, policy - B&H vol-matched, policy gross) of one backtest."""
    ppy = out.meta["periods_per_year"]
    sh = {k: metrics.sharpe_ratio(v.returns, ppy, RISK_FREE_RATE) for k, v in out.runs.items()}
    gross = float(out.metrics["policy"]["exposure"])
    return sh["policy"], sh["policy"] - sh["buy_and_hold_vol_matched"], gross


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
        ns = argparse.Namespace(seed=42, num_cpus=2, tiny=False, set=args.overrides,
                                config=CONFIG_DIR / "default.yaml")  # fmt: skip
        cfg = rm.set_config(name, ns)
        if cfg.env.benchmark == "none":
            raise SystemExit("the gate needs an env.benchmark (the tilts it switches off)")
        # the tilts off: the env holds its benchmark (a copy, not validated: 0 is not a
        # training setting)
        off = cfg.model_copy(update={"env": cfg.env.model_copy(update={"active_scale": 0.0})})
        spec = rm.SETS[name]
        ran = json.loads((args.run / name / "plan.json").read_text())
        if ran["config_hash"] != config_hash(cfg):
            raise SystemExit(f"{args.run / name}: ran with another config than default.yaml + "
                             f"{args.overrides} (give the run's overrides)")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:  # the plan only: the run's own stays as is
            plan = prepare(cfg, n_folds=spec["folds"], n_seeds=2, out_dir=Path(tmp),
                           min_train_frac=spec["min_train_frac"], supervised=False)  # fmt: skip
        gated_means, policy_means, gross_means, kept = [], [], [], 0
        n_units = 0
        for p in plan.plans:
            if p.index not in folds:
                continue
            files = sorted(
                (args.run / name / "trials").glob(f"fold{p.index:02d}_seed*/result.json")
            )
            if not files:
                raise SystemExit(f"{name} fold {p.index}: no trial results in {args.run}")
            fit, val, test = fold_blocks(cfg, plan.bars, p)
            gated, as_selected, gross = [], [], []
            for f in files:
                r = json.loads(f.read_text())
                ckpt, seed = r["checkpoint"], int(r["seed"])
                kw = {"seed": seed, "scaler_bars": fit, "include_supervised": False}
                v_on, _, _ = paired(backtest(ckpt, val, cfg, **kw))
                v_off, _, _ = paired(backtest(ckpt, val, off, **kw))
                pol = r["strategies"]["policy"]["metrics"]["sharpe_ratio"]
                bhm = r["strategies"]["buy_and_hold_vol_matched"]["metrics"]["sharpe_ratio"]
                as_selected.append(pol - bhm)
                tilts = bool(v_on > v_off)
                if tilts:
                    kept += 1
                    gated.append(pol - bhm)
                    gross.append(r["strategies"]["policy"]["metrics"]["exposure"])
                else:
                    _, diff, g = paired(backtest(ckpt, test, off, **kw))
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
        scores.append(score if np.mean(gross_means) >= 0.3 else -np.inf)
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
