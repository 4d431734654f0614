"""Paper-trading speed: per-bar latency and replay throughput, with the backtest as baseline.

Run: ``.venv/bin/python benchmarks/paper_latency.py [--bars 1500] [--instruments 8]``.
An untrained hierarchical policy (8 specialists + meta, the quickstart's MLP; latency does not
depend on the weights) on synthetic bars; scalers fit on a training stretch before the
replayed bars. Timed in the same run, on the same bars and policy:

* baseline: the backtest's own loop (`evaluation.backtest.run_policy`), per bar;
* replay: `paper run --source replay` (`PaperSession` + SQLite ledger in a temporary folder,
  one transaction per bar): per-bar latency p50 / p99 (features + inference + fills +
  ledger commit) and bars/s over the whole run;
* replay with `--onnx` (the exported policies on onnxruntime): the same figures;
* live: the same bars as a live feed (`prebuild=False`, what `--source sql|file` runs): each
  bar's features and covariance streamed into the env's next placeholder row in O(1), the env
  rebuilt only when the placeholders run out; latency over every decision bar after the
  first build, and bars/s over the whole run.

Targets (issue 29): p99 under 20 ms for 8 instruments, replay at least 500 bars/s. BLAS
threads pinned to 1. Not a test: figures depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "WTIUSD", "SPX500", "NAS100", "US30"]


def _setup(n_inst: int, bars: int, train_bars: int, timeframe: str):
    import torch

    from envs import HierarchicalTradingEnv
    from policies import module_spec
    from rl_trading.config import CONFIG_DIR, load_config
    from rl_trading.data import synthetic_market
    from rl_trading.evaluation.backtest import PolicyBundle
    from rl_trading.paper import ResolvedModel

    torch.set_num_threads(1)
    syms = SYMBOLS[:n_inst]
    cfg = load_config(
        CONFIG_DIR / "quickstart.yaml",
        [f"data.symbols={json.dumps(syms)}", f"data.timeframe={timeframe}", "env.sectors={}",
         "env.max_sector_allocation=null", "data.periods_per_year=252"],
    )  # fmt: skip
    market = synthetic_market(syms, n_bars=train_bars + bars, seed=0, timeframe=timeframe)
    train = {s: f.iloc[:train_bars] for s, f in market.items()}
    live = {s: f.iloc[train_bars:] for s, f in market.items()}
    env = HierarchicalTradingEnv(cfg, bars=train, mode="joint", eval_mode=True)
    torch.manual_seed(0)
    modules = {
        a: module_spec(cfg, a, env.observation_space(a), env.action_space(a)).build()
        for a in env.possible_agents
    }
    pre = {
        "symbols": syms,
        "timeframe": timeframe,
        "scalers": {s: env.scalers[s].to_dict() for s in syms},
    }
    bundle = PolicyBundle(modules, pre, source="benchmark")
    return ResolvedModel("benchmark", bundle, cfg), live


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=1500, help="replayed bars")
    ap.add_argument("--train-bars", type=int, default=600)
    ap.add_argument("--instruments", type=int, default=8)
    ap.add_argument("--timeframe", default="1d")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    from rl_trading.evaluation.backtest import run_policy
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.feeds import ReplayFeed

    load0 = os.getloadavg()[0]
    model, bars = _setup(args.instruments, args.bars, args.train_bars, args.timeframe)
    # warm the numba kernels and torch once (compile / cache load is not per-bar latency)
    run_policy(model.bundle, {s: f.iloc[:120] for s, f in bars.items()}, model.cfg)

    t0 = time.perf_counter()
    run, _ = run_policy(model.bundle, bars, model.cfg)
    base_s = time.perf_counter() - t0
    base_ms = base_s / (len(run.equity) - 1) * 1e3

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(f"sqlite:///{tmp}/ledger.db")
        t0 = time.perf_counter()
        res = PaperSession(model, ReplayFeed(bars), ledger, PaperOptions("replay")).run()
        replay_s = time.perf_counter() - t0
        lat = res.latencies_ms
        parity = abs(res.status["equity"] / float(run.equity[-1]) - 1.0)
        # the same replay acting with the exported policies (--onnx)
        from rl_trading.evaluation.export import export_onnx
        from rl_trading.paper.model import ResolvedModel, use_onnx

        for pid, module in model.bundle.modules.items():
            export_onnx(module, Path(tmp) / "onnx" / f"{pid}.onnx")
        onnx_bundle = type(model.bundle)(dict(model.bundle.modules), model.bundle.preprocessing)
        use_onnx(onnx_bundle, Path(tmp) / "onnx")
        onnx_model = ResolvedModel("benchmark-onnx", onnx_bundle, model.cfg)
        t0 = time.perf_counter()
        ores = PaperSession(onnx_model, ReplayFeed(bars), ledger, PaperOptions("onnx")).run()
        onnx_s = time.perf_counter() - t0
        from rl_trading.paper.broker import first_decision_bar

        first = first_decision_bar(model.cfg) + 1  # after the first build
        live_opts = PaperOptions("live", prebuild=False)
        session = PaperSession(model, ReplayFeed(bars), ledger, live_opts)
        t0 = time.perf_counter()
        live_res = session.run()
        live_s = time.perf_counter() - t0
        live_lat = live_res.latencies_ms[first:]
        live_parity = abs(live_res.status["equity"] / float(run.equity[-1]) - 1.0)
    out = {
        "instruments": args.instruments,
        "bars": args.bars,
        "backtest_ms_per_bar": base_ms,
        "replay_p50_ms": _pct(lat, 50),
        "replay_p99_ms": _pct(lat, 99),
        "replay_bars_per_s": res.new_bars / replay_s,
        "replay_vs_backtest_final_equity_rel_diff": parity,
        "onnx_replay_p50_ms": _pct(ores.latencies_ms, 50),
        "onnx_replay_p99_ms": _pct(ores.latencies_ms, 99),
        "onnx_replay_bars_per_s": ores.new_bars / onnx_s,
        "onnx_vs_backtest_final_equity_rel_diff": abs(
            ores.status["equity"] / float(run.equity[-1]) - 1.0
        ),
        "live_p50_ms": _pct(live_lat, 50),
        "live_p99_ms": _pct(live_lat, 99),
        "live_bars_per_s": live_res.new_bars / live_s,
        "live_env_builds": live_res.rebuilds,
        "live_vs_backtest_final_equity_rel_diff": live_parity,
        "load_before": load0,
        "load_after": os.getloadavg()[0],
    }
    for key, value in out.items():
        print(f"{key:42s} {value:.4g}" if isinstance(value, float) else f"{key:42s} {value}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
