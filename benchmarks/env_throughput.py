"""Environment throughput: TradingEnv vs gym-anytrading's StocksEnv, and the hierarchical env.

Run: ``.venv/bin/python benchmarks/env_throughput.py [--bars 20000] [--steps 20000]``.
Single thread (BLAS threads pinned to 1), actions pre-generated so only env code is timed.
Prints steps/s for each env and the TradingEnv / StocksEnv ratio (target >= 1.0), and env
steps/s and agent steps/s of the hierarchical env with 8 instruments (target >= 20,000 env
steps/s). Not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "WTIUSD", "SPX500", "NAS100", "US30"]


def _timed(step, reset, actions, steps: int) -> float:
    """Steps per second of `step(action)` over `steps` steps, resetting when an episode ends."""
    reset()
    n_act = len(actions)
    start = time.perf_counter()
    for k in range(steps):
        if step(actions[k % n_act]):
            reset()
    return steps / (time.perf_counter() - start)


def bench_single(bars, window: int, steps: int, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` steps/s of TradingEnv and StocksEnv on the same bars."""
    import gym_anytrading  # noqa: F401 - registers the envs
    from gym_anytrading.envs import StocksEnv

    from envs import TradingEnv

    ours = TradingEnv(bars=bars, window_size=window, action_type="discrete", allow_short=True)
    frame = bars.rename(columns=str.capitalize)
    theirs = StocksEnv(df=frame, window_size=window, frame_bound=(window, len(frame)))
    rng = np.random.default_rng(0)
    acts3 = rng.integers(0, 3, 4096).tolist()
    acts2 = rng.integers(0, 2, 4096).tolist()

    def step_ours(a):
        _, _, term, trunc, _ = ours.step(a)
        return term or trunc

    def step_theirs(a):
        _, _, term, trunc, _ = theirs.step(a)
        return term or trunc

    best_ours = best_theirs = 0.0
    for _ in range(repeats):
        best_ours = max(best_ours, _timed(step_ours, lambda: ours.reset(seed=0), acts3, steps))
        best_theirs = max(
            best_theirs, _timed(step_theirs, lambda: theirs.reset(seed=0), acts2, steps)
        )
    return best_ours, best_theirs


def bench_hierarchical(bars, window: int, steps: int, repeats: int) -> tuple[float, int]:
    """Best-of-`repeats` env steps/s of the 8-instrument joint-mode env; also agents per step."""
    from envs import HierarchicalTradingEnv

    env = HierarchicalTradingEnv(bars=bars, mode="joint", window_size=window)
    rng = np.random.default_rng(0)
    n = len(bars)
    pool = []
    for _ in range(256):
        acts = {a: rng.uniform(-1, 1, 1).astype(np.float32) for a in env.specialists}
        acts["meta"] = rng.uniform(0, 1, n + 1).astype(np.float32)
        pool.append(acts)

    def step(a):
        env.step(a)
        return not env.agents

    best = 0.0
    for _ in range(repeats):
        best = max(best, _timed(step, lambda: env.reset(seed=0), pool, steps))
    return best, len(env.possible_agents)


def main() -> None:
    """Parse arguments, run both benchmarks, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    try:
        from rl_trading.data.synthetic import synthetic_market
    except ImportError as exc:  # pragma: no cover - the data module is part of the package
        raise SystemExit(f"rl_trading.data.synthetic unavailable: {exc}") from None

    market = synthetic_market(SYMBOLS, n_bars=args.bars, seed=7)
    ours, theirs = bench_single(market[SYMBOLS[0]], args.window, args.steps, args.repeats)
    print(f"TradingEnv          : {ours:12,.0f} steps/s  (window {args.window}, discrete)")
    print(f"gym-anytrading Stocks: {theirs:12,.0f} steps/s  (same bars, same window)")
    print(f"ratio TradingEnv / StocksEnv: {ours / theirs:.2f}  (target >= 1.0)")
    env_sps, n_agents = bench_hierarchical(market, args.window, args.steps, args.repeats)
    print(
        f"HierarchicalTradingEnv, {len(SYMBOLS)} instruments, joint: {env_sps:,.0f} env steps/s, "
        f"{env_sps * n_agents:,.0f} agent steps/s ({n_agents} agents; target >= 20,000 env steps/s)"
    )


if __name__ == "__main__":
    main()
