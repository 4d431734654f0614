"""Training throughput: RLlib phase 1 (8 specialists) vs Stable-Baselines3 PPO (one instrument).

Matched PPO hyperparameters (batch 4000, minibatch 256, 4 epochs, [64, 64] tanh MLPs,
sampling in the driver process for both), same process, same synthetic market. Prints agent
steps/s of each, their ratio, and an estimate of a default phase 1 (500k env steps, 8
specialists, configs/default.yaml PPO settings) from a short run of that exact config;
`--full-default` runs the whole default phase 1 instead of estimating.

    .venv/bin/python benchmarks/training_throughput.py [--iterations 3] [--full-default]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "WTIUSD", "SPX500", "NAS100", "US30"]


def _cfg(overrides: dict):
    from rl_trading.config import load_config

    base = {
        "data": {"symbols": SYMBOLS, "embargo_bars": 10},
        "env": {"episode_length": 1000},
        "resources": {"num_env_runners": 0},
        "tracking": {"system_metrics": False},
    }
    for key, value in overrides.items():
        base.setdefault(key, {}).update(value)
    return load_config(None, extra=base)


def _bars(n_bars: int):
    from rl_trading.data import split_by_time, synthetic_market

    return split_by_time(synthetic_market(SYMBOLS, n_bars=n_bars, seed=7), 0.7, 0.15, 10)


def rllib_phase1(cfg, splits, iterations: int) -> dict:
    """Agent and env steps/s of `iterations` phase-1 iterations (after one warm-up)."""
    from rl_trading.training.algo_config import build_phase_config
    from rl_trading.training.env_bridge import hierarchical_factory

    factory = hierarchical_factory(cfg, splits.train, splits.val)
    algo = build_phase_config(cfg, 1, factory).build_algo()
    try:
        algo.train()  # warm-up (first sampling + learner build costs)
        t0 = time.perf_counter()
        steps0 = None
        for _ in range(iterations):
            res = algo.train()
            runners = res["env_runners"]
            if steps0 is None:
                steps0 = (
                    runners["num_env_steps_sampled_lifetime"] - runners["num_env_steps_sampled"]
                )
        wall = time.perf_counter() - t0
        env_steps = runners["num_env_steps_sampled_lifetime"] - steps0
    finally:
        algo.stop()
    agents = len(cfg.data.symbols)
    return {
        "env_steps_per_s": env_steps / wall,
        "agent_steps_per_s": env_steps * agents / wall,
        "wall_s": wall,
        "env_steps": env_steps,
    }


def sb3_single(cfg, splits, iterations: int) -> dict:
    """SB3 PPO steps/s on the single-instrument TradingEnv with matched hyperparameters."""
    import torch
    from stable_baselines3 import PPO

    from envs import TradingEnv

    env = TradingEnv(cfg, bars=splits.train[SYMBOLS[0]], seed=0)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=4000,
        batch_size=256,
        n_epochs=4,
        learning_rate=cfg.ppo.lr,
        gamma=cfg.ppo.gamma,
        gae_lambda=cfg.ppo.gae_lambda,
        clip_range=cfg.ppo.clip_param,
        policy_kwargs={"net_arch": [64, 64], "activation_fn": torch.nn.Tanh},
        device="cpu",
        seed=0,
        verbose=0,
    )
    model.learn(4000)  # warm-up
    t0 = time.perf_counter()
    model.learn(4000 * iterations, reset_num_timesteps=False)
    wall = time.perf_counter() - t0
    return {"agent_steps_per_s": 4000 * iterations / wall, "wall_s": wall}


def main() -> None:
    """Run both measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--n-bars", type=int, default=20_000)
    parser.add_argument("--full-default", action="store_true")
    args = parser.parse_args()

    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    splits = _bars(args.n_bars)
    matched = _cfg(
        {
            "ppo": {"train_batch_size": 4000, "minibatch_size": 256, "num_epochs": 4},
            "policy": {"hidden_sizes": [64, 64]},
        }
    )
    print(f"cpus={os.cpu_count()} torch_threads=1 load={os.getloadavg()[0]:.1f}")
    rl = rllib_phase1(matched, splits, args.iterations)
    print(
        f"RLlib phase 1, 8 specialists: {rl['agent_steps_per_s']:.0f} agent steps/s "
        f"({rl['env_steps_per_s']:.0f} env steps/s, {rl['env_steps']} env steps "
        f"in {rl['wall_s']:.1f}s)"
    )
    sb = sb3_single(matched, splits, args.iterations)
    print(f"SB3 PPO, 1 instrument TradingEnv: {sb['agent_steps_per_s']:.0f} steps/s")
    ratio = rl["agent_steps_per_s"] / sb["agent_steps_per_s"]
    print(f"ratio RLlib agent steps/s / SB3 steps/s: {ratio:.2f}")

    default = _cfg({})
    if args.full_default:
        from rl_trading.training.env_bridge import hierarchical_factory
        from rl_trading.training.runner import run_phase

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            run_phase(default, 1, hierarchical_factory(default, splits.train, splits.val), tmp,
                      tracking=False)  # fmt: skip
        print(f"default phase 1 (500k env steps): {time.perf_counter() - t0:.0f}s wall")
    else:
        est = rllib_phase1(default, splits, max(args.iterations, 3) * 4)
        total = default.phases.phase1_timesteps / est["env_steps_per_s"]
        print(
            f"default phase 1 estimate: {est['env_steps_per_s']:.0f} env steps/s with "
            f"configs/default.yaml PPO (batch {default.ppo.train_batch_size}, "
            f"{default.ppo.num_epochs} epochs, {default.policy.hidden_sizes} MLP) -> "
            f"{total / 3600:.1f} h for {default.phases.phase1_timesteps:,} env steps "
            "(training only; validation every eval_interval adds ~1 episode per eval)"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
