"""Small phase-1 ablation on the bundled real sample (MSFT, GOOGL, S&P 500 daily).

Trains phase 1 of `configs/quickstart.yaml` with the given `--set` overrides (one run, small
budget) and prints the VALIDATION Sharpe and average gross exposure of the best checkpoint, next
to the flat and random policies on the same bars (the same `validate` metric). Validation only:
no test split is touched. Usage:

    python benchmarks/real_bars_ablation.py --set ppo.entropy_coeff=0.01 --set env.vol_target=0.1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def run(overrides: list[str], n_random: int = 3) -> dict[str, float]:
    """Phase 1 on the sample with `overrides`; validation metrics of trained / flat / random."""
    import ray

    from rl_trading import ledger, metrics
    from rl_trading.config import load_config
    from rl_trading.training.checkpoints import load_module
    from rl_trading.training.env_bridge import hierarchical_factory
    from rl_trading.training.runner import run_phase
    from rl_trading.training.session import load_splits
    from rl_trading.training.state import RunState
    from rl_trading.training.validation import run_policies, validate

    base = ["resources.num_env_runners=0", "tracking.system_metrics=false"]
    cfg = load_config(REPO / "configs/quickstart.yaml", base + overrides)
    train, val, _ = load_splits(cfg)
    factory = hierarchical_factory(cfg, train, val)
    specs = [f"specialist_{s}" for s in cfg.data.symbols]
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        p1 = run_phase(cfg, 1, factory, tmp, tracking=False)
        best = {pid: load_module(p1.best_checkpoint, pid) for pid in specs}
        curve = RunState.load(tmp).phase("phase1").val_sharpes
    secs = time.monotonic() - t0
    # this configuration was evaluated on the market's validation part: into the trial ledger,
    # so every later DSR on the same data counts it (one trial per validation pass)
    ledger.record_trials(
        ledger.market_fingerprint(cfg),
        "ablation",
        [{"overrides": sorted(overrides), "seed": cfg.seed}],
        source="benchmarks/real_bars_ablation.py",
        trials_each=max(1, len(curve)),
        url=ledger.ledger_url(cfg),
    )
    trained = validate(factory, "specialists", best, seed=cfg.seed)
    episode = run_policies(factory, "specialists", best, seed=cfg.seed)
    expo = episode["exposures"]
    stds = [  # Gaussian policies only (discrete actions have no log_std)
        float(np.exp(best[p].log_std.detach().numpy()).mean())
        for p in specs
        if hasattr(best[p], "log_std")
    ]
    flat = {a: (lambda o: np.zeros(1)) for a in specs}
    flat_m = validate(factory, "specialists", best, agent_override=flat)
    long = {a: (lambda o: np.ones(1)) for a in specs}
    long_m = validate(factory, "specialists", best, agent_override=long)
    rand = []
    for seed in range(n_random):
        rng = np.random.default_rng(seed)
        act = {a: (lambda o, r=rng: r.uniform(-1, 1, 1)) for a in specs}
        rand.append(validate(factory, "specialists", best, agent_override=act))
    return {
        "train_s": round(secs, 1),
        "val_sharpe_curve": [round(float(v), 2) for v in curve],
        "val_sharpe": trained["val_sharpe"],
        "val_gross_exposure": trained.get("val_gross_exposure", float("nan")),
        "val_total_return": trained["val_total_return"],
        "val_turnover": metrics.turnover(episode["traded"], episode["equity"]),
        "val_net_exposure": float(np.mean(expo.sum(axis=1))),
        "action_std": [round(v, 3) for v in stds],
        "flat_sharpe": flat_m["val_sharpe"],
        "long_sharpe": long_m["val_sharpe"],
        "long_gross_exposure": long_m.get("val_gross_exposure", float("nan")),
        "random_sharpe_max": max(r["val_sharpe"] for r in rand),
        "random_sharpe_mean": float(np.mean([r["val_sharpe"] for r in rand])),
        "random_gross_exposure": float(np.mean([r["val_gross_exposure"] for r in rand])),
    }


def main() -> None:
    """Parse `--set` overrides, run, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    out = run(args.overrides)
    print(json.dumps({"overrides": args.overrides, **out}))


if __name__ == "__main__":
    main()
