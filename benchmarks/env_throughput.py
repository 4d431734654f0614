"""Environment throughput: TradingEnv vs gym-anytrading's StocksEnv, and the hierarchical env.

Run: ``.venv/bin/python benchmarks/env_throughput.py [--bars 20000] [--steps 20000]``.
Single thread (BLAS threads pinned to 1), actions pre-generated so only env code is timed.
Prints steps/s for each env and the TradingEnv / StocksEnv ratio (target >= 1.0), and env
steps/s and agent steps/s of the hierarchical env with 8 instruments (target >= 20,000 env
steps/s), whose rules run in envs/engine.py (the one copy, numba-compiled).
Each figure is given twice: per wall-clock second and per CPU second of this process
(time.process_time); on a loaded machine the CPU figure is the one-core throughput, the wall
figure what was left of it. The two single-instrument envs are timed alternately in the same
run, so their ratio is fair. The load average is printed before and after to judge the noise.
Not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "WTIUSD", "SPX500", "NAS100", "US30"]


def _timed(step, reset, actions, steps: int) -> tuple[float, float]:
    """(wall, CPU) steps per second of `step(action)` over `steps` steps, resetting at episode
    ends (resets are part of the cost)."""
    reset()
    n_act = len(actions)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(steps):
        if step(actions[k % n_act]):
            reset()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return steps / wall, steps / max(cpu, 1e-9)


def _best(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return max(a[0], b[0]), max(a[1], b[1])


def bench_single(bars, window: int, steps: int, repeats: int) -> tuple[tuple, tuple, list]:
    """Best-of-`repeats` (wall, CPU) steps/s of TradingEnv and StocksEnv on the same bars,
    timed alternately, and the CPU ratio of each repeat."""
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

    best_ours = best_theirs = (0.0, 0.0)
    ratios = []
    for _ in range(repeats):
        o = _timed(step_ours, lambda: ours.reset(seed=0), acts3, steps)
        t = _timed(step_theirs, lambda: theirs.reset(seed=0), acts2, steps)
        ratios.append(o[1] / t[1])
        best_ours, best_theirs = _best(best_ours, o), _best(best_theirs, t)
    return best_ours, best_theirs, ratios


def bench_hierarchical(bars, window: int, steps: int, repeats: int) -> tuple[tuple, int]:
    """Best-of-`repeats` (wall, CPU) env steps/s of the 8-instrument joint-mode env (the one
    copy of the rules, envs.engine); also the number of agents per step."""
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

    best = (0.0, 0.0)
    for _ in range(repeats):
        best = _best(best, _timed(step, lambda: env.reset(seed=0), pool, steps))
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
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    ours, theirs, ratios = bench_single(market[SYMBOLS[0]], args.window, args.steps, args.repeats)
    print("best of", args.repeats, "runs:              wall steps/s    CPU steps/s")
    print(f"TradingEnv (discrete, window {args.window}): {ours[0]:12,.0f}  {ours[1]:12,.0f}")
    print(f"gym-anytrading StocksEnv (same bars):  {theirs[0]:12,.0f}  {theirs[1]:12,.0f}")
    print(
        f"ratio TradingEnv / StocksEnv: wall {ours[0] / theirs[0]:.2f}, "
        f"CPU {ours[1] / theirs[1]:.2f}"
        f" (per-run CPU ratios {', '.join(f'{r:.2f}' for r in ratios)}; target >= 1.0)"
    )
    from envs import engine

    sps, n_agents = bench_hierarchical(market, args.window, args.steps, args.repeats)
    print(
        f"HierarchicalTradingEnv (envs.engine, numba {'on' if engine.COMPILED else 'off'}), "
        f"{len(SYMBOLS)} instruments, joint, {n_agents} agents: wall {sps[0]:,.0f} env steps/s "
        f"({sps[0] * n_agents:,.0f} agent steps/s), CPU {sps[1]:,.0f} env steps/s "
        f"({sps[1] * n_agents:,.0f} agent steps/s); target >= 20,000 env steps/s on one core"
    )
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
