"""The retraining walk-forward on the shared real market sets (issue 14's yardstick).

For each set: expanding-window folds over the whole history, every fold x seed retrains the
configured phases on the past, selects its checkpoint on the tail of its training window and
trades the fold's test block once, next to every baseline (same bars, costs and capital). It
prints the policy and the baselines (out-of-sample net Sharpe with its fold-level 95% interval,
the paired policy - baseline difference, DSR, max drawdown, turnover, costs), the budgets and
the wall time, and writes `<out>/<set>/walk_forward.json` + `walk_forward_equity.png` and the
table of all sets run as `<out>/real_markets.json` + `real_markets.png`.

    .venv/bin/python benchmarks/real_markets.py --set-name us_daily          # one set
    .venv/bin/python benchmarks/real_markets.py                              # every set
    .venv/bin/python benchmarks/real_markets.py --set-name us_daily --tiny   # smoke run

Finished fold x seed trials are kept on disk: rerun with `--resume` to continue. The real
files live in ../shared/data/market (RL_TRADING_MARKET_DIR overrides).

The DSR counts every trial on a market in the workspace's trial ledger. The benchmark's own
ledger (every candidate and confirmation run on these markets so far) is committed as
`benchmarks/results/trial_ledger.json` and merged into the workspace's ledger before any set
runs, so a rerun from a fresh clone deflates by the same trials; `--save-ledger` writes the
ledger's rows on these markets back to it after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MARKET_DIR = Path(os.environ.get("RL_TRADING_MARKET_DIR", REPO.parent / "shared/data/market"))
LEDGER_FILE = REPO / "benchmarks/results/trial_ledger.json"

# name -> symbols (file stems), timeframe, folds, first training block's share of the history,
# embargo (bars), validation share of each training window (as data.val_frac / (train + val)).
SETS: dict[str, dict[str, Any]] = {
    "crypto_30m": {
        "files": {"BTCUSD": "btcusd_30m", "ETHUSD": "ethusd_30m"},
        "timeframe": "30m",
        "episode_length": 1000,
        "folds": 4,
        "min_train_frac": None,
        "embargo": 48,  # one day
        "val_frac": 0.15,
    },
    "us_daily": {
        "files": {"MSFT": "msft_1d", "GOOGL": "googl_1d", "SP500": "sp500_1d"},
        "timeframe": "1d",
        "episode_length": 250,
        "folds": 4,
        "min_train_frac": None,
        "embargo": 5,  # one week
        "val_frac": 0.15,
    },
    "global_daily": {  # 660 common days: 3 folds after a half-history first block
        "files": {"MSFT": "msft_1d", "AZN_L": "azn_l_1d", "HK9988": "9988_hk_1d"},
        "timeframe": "1d",
        "episode_length": 250,
        "folds": 3,
        "min_train_frac": 0.5,
        "embargo": 5,
        "val_frac": 0.3,
    },
    "fx_1h": {  # EUR/USD hourly 2017: one instrument (the hierarchy with n = 1)
        "files": {"EURUSD": "eurusd_1h"},
        "timeframe": "1h",
        "episode_length": 1000,
        "folds": 4,
        "min_train_frac": None,
        "embargo": 24,  # one day
        "val_frac": 0.15,
    },
    "intraday_1m": {  # four weeks of minutes where the LSE and NYSE sessions overlap
        "files": {"MSFT": "msft_1m", "AZN_L": "azn_l_1m"},
        "timeframe": "1m",
        "episode_length": 1000,
        "folds": 4,
        "min_train_frac": None,
        "embargo": 30,
        "val_frac": 0.15,
    },
}
# Nested selection (issue 32): settings are chosen only on the earlier folds (SELECTION_FOLDS)
# of the selection sets; the other sets, and the later folds of the selection sets, only
# confirm. The README's table names each row's role.
SELECTION_SETS = ("us_daily", "crypto_30m")
SELECTION_FOLDS = (0, 1)
# The benchmark's budgets (printed with every table; --set overrides them): small enough that
# one set (4 folds x 3 seeds, 2 trials at a time) fits well under an hour on 2 cores. Only
# budgets: the recipe and resources.* are default.yaml's (the walk-forward sizes its trials
# to the CPUs Ray has).
BUDGETS = [
    "phases.phase1_timesteps=30000",
    "phases.phase2_timesteps=6000",
    "phases.phase3_timesteps=12000",
    "phases.eval_interval=2",
    "phases.checkpoint_interval=2",
]
TINY = [  # smoke-run budgets: proves the pipeline, measures nothing
    "phases.phase1_timesteps=1000",
    "phases.phase2_timesteps=1000",
    "phases.phase3_timesteps=1000",
    "phases.eval_interval=1",
    "ppo.train_batch_size=500",
    "ppo.minibatch_size=250",
    "ppo.num_epochs=2",
    "env.episode_length=200",
    "resources.num_env_runners=0",
]


def set_config(name: str, args: argparse.Namespace) -> Any:
    """The benchmark config of one set: the base config, the set's files, then --set."""
    from rl_trading.config import load_config

    spec = SETS[name]
    paths = {sym: str(MARKET_DIR / f"{stem}.csv.gz") for sym, stem in spec["files"].items()}
    missing = [p for p in paths.values() if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"real market file missing: {missing[0]} (set RL_TRADING_MARKET_DIR)")
    train_frac = 0.85 - spec["val_frac"] if spec["val_frac"] > 0.15 else 0.7
    overrides = [
        f"seed={args.seed}",
        "data.source=files",
        f"data.symbols={json.dumps(list(paths))}",
        f"data.paths={json.dumps(paths)}",
        f"data.timeframe={spec['timeframe']}",
        f"data.embargo_bars={spec['embargo']}",
        f"data.train_frac={train_frac}",
        f"data.val_frac={spec['val_frac']}",
        "env.sectors={}",
        f"resources.num_cpus={args.num_cpus}",
        f"env.episode_length={spec['episode_length']}",
        *BUDGETS,
        *(TINY if args.tiny else []),
        *args.set,
    ]
    return load_config(args.config, overrides)


def trained_folds(
    run: Path, name: str, overrides: list[str], folds: set[int]
) -> tuple[Any, dict[str, Any], list[tuple[Any, list[dict[str, Any]]]]]:
    """An ablation run's set, for scripts that evaluate its checkpoints without training: the
    set's config (default.yaml + `overrides`, refused unless it is the one the run hashed),
    its bars, and for each fold in `folds` its plan and its seeds' `result.json`."""
    import tempfile

    from rl_trading.config import CONFIG_DIR
    from rl_trading.evaluation.walk_forward_retrain import prepare
    from rl_trading.registry import config_hash

    ns = argparse.Namespace(seed=42, num_cpus=2, tiny=False, set=overrides,
                            config=CONFIG_DIR / "default.yaml")  # fmt: skip
    cfg = set_config(name, ns)
    ran = json.loads((run / name / "plan.json").read_text())
    if ran["config_hash"] != config_hash(cfg):
        raise SystemExit(f"{run / name}: ran with another config than default.yaml + "
                         f"{overrides} (give the run's overrides)")  # fmt: skip
    spec = SETS[name]
    with tempfile.TemporaryDirectory() as tmp:  # the plan only: the run's own stays as is
        plan = prepare(cfg, n_folds=spec["folds"], n_seeds=2, out_dir=Path(tmp),
                       min_train_frac=spec["min_train_frac"], supervised=False)  # fmt: skip
    out = []
    for p in plan.plans:
        if p.index in folds:
            files = sorted((run / name / "trials").glob(f"fold{p.index:02d}_seed*/result.json"))
            out.append((p, [json.loads(f.read_text()) for f in files]))
    return cfg, plan.bars, out


def minus_vol_matched(strategies: dict[str, Any]) -> float:
    """policy - volatility-matched buy-and-hold, net Sharpe, of one result's strategies."""
    return float(
        strategies["policy"]["metrics"]["sharpe_ratio"]
        - strategies["buy_and_hold_vol_matched"]["metrics"]["sharpe_ratio"]
    )


def backtest_paired(out: Any) -> tuple[float, float, float]:
    """(policy net Sharpe, policy - volatility-matched buy-and-hold, policy gross exposure) of
    one `backtest` result, on the walk-forward's Sharpe convention (rf 0)."""
    from rl_trading import metrics
    from rl_trading.evaluation.walk_forward_retrain import RISK_FREE_RATE

    ppy = out.meta["periods_per_year"]
    sh = {k: metrics.sharpe_ratio(v.returns, ppy, RISK_FREE_RATE) for k, v in out.runs.items()}
    gross = float(out.metrics["policy"]["exposure"])
    return sh["policy"], sh["policy"] - sh["buy_and_hold_vol_matched"], gross


def run_set(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Walk-forward of one set; prints its table, returns the rows for the combined table."""
    from rich.console import Console

    from rl_trading.evaluation.walk_forward_retrain import (
        PROTOCOL,
        prepare,
        render_table,
        table_rows,
        walk_forward_retrain,
    )
    from rl_trading.ledger import market_fingerprint
    from rl_trading.training.mapping import phase_timesteps

    console = Console(width=max(150, Console().width))  # the table stays readable in logs
    spec = SETS[name]
    cfg = set_config(name, args)
    plan = prepare(
        cfg,
        n_folds=args.folds or spec["folds"],
        n_seeds=args.seeds,
        out_dir=Path(args.out) / name,
        resume=args.resume,
        phases=args.phases,
        min_train_frac=spec["min_train_frac"],
    )
    if args.test_folds:
        keep = {int(k) for k in args.test_folds.split(",")}
        plan.folds_info[:] = [i for p, i in zip(plan.plans, plan.folds_info, strict=True)
                              if p.index in keep]  # fmt: skip
        plan.plans[:] = [p for p in plan.plans if p.index in keep]
    budgets = {f"phase{p}": phase_timesteps(cfg, p) for p in plan.phases}
    n_bars = len(next(iter(plan.bars.values())))
    console.print(
        f"[bold]{name}[/]: {', '.join(plan.bars)} {cfg.data.timeframe}, {n_bars} bars; "
        f"{len(plan.plans)} folds x {len(plan.seeds)} seeds; env-step budgets per fold x seed "
        f"{budgets}; {len(plan.pending())} of {len(plan.units)} trials to run"
    )
    console.print(f"config: {args.config.name} + {' '.join([*BUDGETS, *args.set])}")
    t0 = time.monotonic()
    report = walk_forward_retrain(plan, address=args.address, notify=console.print)
    wall = time.monotonic() - t0
    console.print(render_table(report, title=f"{name} (retrained walk-forward)"))
    console.print(f"{name}: wall time {wall:.0f} s; report {report['files']['json']}")
    return {
        "set": name,
        "role": "selection" if name in SELECTION_SETS else "confirmation",
        "fingerprint": market_fingerprint(cfg, plan.bars),  # the trial ledger key
        "protocol": PROTOCOL,  # how folds were measured (walk_forward_retrain.PROTOCOL)
        "test_folds": [p.index for p in plan.plans],
        "symbols": list(plan.bars),
        "timeframe": cfg.data.timeframe,
        "n_bars": n_bars,
        "folds": len(plan.plans),
        "seeds": plan.seeds,
        "budgets": budgets,
        "config": str(args.config),
        "overrides": [*BUDGETS, *args.set],
        "wall_s": wall,
        "dsr": report["dsr"],
        "psr": report["psr"],
        "n_trials": report["n_trials"],
        "rows": table_rows(report),
        # per-fold (seed-averaged) values of every strategy and the paired differences, so
        # the intervals can be recomputed from this file alone
        "fold_values": report["fold_values"],
        "paired_per_fold": {
            b: {m: v["per_fold"] for m, v in mets.items()}
            for b, mets in report["paired_vs_policy"].items()
        },
        "fold_periods_per_year": report["fold_periods_per_year"],
        "folds_info": report["folds"],
        "report": report["files"]["json"],
    }


def write_summary_plot(results: list[dict[str, Any]], path: Path) -> None:
    """One panel per set: each strategy's fold-level mean net Sharpe with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        names = [r["strategy"] for r in res["rows"]]
        means = [r["sharpe"] for r in res["rows"]]
        lo = [r["sharpe"] - r["sharpe_ci95"][0] for r in res["rows"]]
        hi = [r["sharpe_ci95"][1] - r["sharpe"] for r in res["rows"]]
        colors = ["tab:red" if n == "policy" else "tab:blue" for n in names]
        ax.bar(names, means, color=colors, yerr=[lo, hi], capsize=4)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(f"{res['set']} ({res['folds']} folds x {len(res['seeds'])} seeds)")
        ax.set_ylabel("Out-of-sample net Sharpe (annualised, rf 0)")
        ax.set_xlabel("Strategy (bars: mean over folds, whiskers: 95% CI)")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Retrained walk-forward on real markets: policy vs baselines")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The README's table: per set and strategy, fold-mean net Sharpe [95% CI], the paired
    policy - strategy difference, the policy's DSR, max drawdown, turnover and gross exposure."""

    def f(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None or v != v else fmt.format(v)

    lines = [
        "| set | strategy | net Sharpe [95% CI] | policy - it [95% CI] | DSR | max DD | "
        "turnover / bar | gross exp. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for r in res["rows"]:
            ci = r["sharpe_ci95"]
            diff = "-"
            if r["policy_minus"] is not None:
                d = r["policy_minus_ci95"]
                diff = f"{f(r['policy_minus'])} [{f(d[0])}, {f(d[1])}]"
            lines.append(
                f"| {res['set']} | {r['strategy']} | {f(r['sharpe'])} [{f(ci[0])}, {f(ci[1])}] "
                f"| {diff} | {f(r['dsr'], '{:.3f}')} | {f(r['max_drawdown'], '{:.1%}')} "
                f"| {f(r['turnover'], '{:.4f}')} | {f(r['exposure'], '{:.3f}')} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the chosen sets, write the combined JSON and PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set-name", choices=sorted(SETS), action="append", default=None)
    parser.add_argument("-c", "--config", type=Path, default=REPO / "configs/default.yaml")
    parser.add_argument("--folds", type=int, default=None, help="default: per set")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--phases", default="1,2,3")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--out", default="runs/real_markets")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--test-folds", default=None, help="only these fold indices, e.g. 0,1 (selection)"
    )
    parser.add_argument("--address", default=None, help="Ray cluster (default: local Ray)")
    parser.add_argument("--tiny", action="store_true", help="smoke-run budgets (1k steps/phase)")
    parser.add_argument("--set", action="append", default=[], help="config override k=v")
    parser.add_argument(
        "--ledger-file",
        type=Path,
        default=LEDGER_FILE,
        help="exported trial ledger merged into the workspace's before the run",
    )
    parser.add_argument(
        "--save-ledger",
        action="store_true",
        help="after the run, write the ledger's rows on these markets to --ledger-file",
    )
    args = parser.parse_args()
    if args.seeds < 3 and not args.tiny:
        print(f"note: {args.seeds} seed(s); the benchmark protocol uses 3 or more")
    names = args.set_name or list(SETS)
    url = merge_ledger(args.ledger_file, names, args)
    t0 = time.monotonic()
    results = [run_set(name, args) for name in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"sets": results, "tiny": args.tiny, "wall_s": time.monotonic() - t0}
    (out / "real_markets.json").write_text(json.dumps(summary, indent=2, default=str))
    write_summary_plot(results, out / "real_markets.png")
    (out / "real_markets.md").write_text(markdown_table(results) + "\n")
    print(f"total wall time {summary['wall_s']:.0f} s; {out / 'real_markets.json'}")
    if args.save_ledger:
        from rl_trading import ledger

        fps = [res["fingerprint"] for res in results]
        rows, trials = ledger.export_rows(args.ledger_file, fps, url, overwrite=True)
        print(f"trial ledger: {rows} rows, {trials} trials on these markets -> {args.ledger_file}")


def merge_ledger(path: Path, names: list[str], args: argparse.Namespace) -> str:
    """Merge the committed benchmark ledger into the workspace's (before any set runs, so
    every DSR counts it); returns the ledger's URL. A missing file is said, not skipped
    silently."""
    from rl_trading import ledger

    url = ledger.ledger_url(set_config(names[0], args))
    if not path.is_file():
        print(f"trial ledger: no {path}: the DSRs count this workspace's trials only")
        return url
    added, trials = ledger.import_rows(path, url)
    print(f"trial ledger: {added} rows, {trials} trials merged from {path}")
    return url


if __name__ == "__main__":
    main()
