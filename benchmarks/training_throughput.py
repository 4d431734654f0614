"""Training throughput: RLlib phase 1 (8 specialists) vs Stable-Baselines3 PPO (one instrument).

Matched PPO hyperparameters (batch 4000, minibatch 256, 4 epochs, [64, 64] tanh MLPs,
sampling in the driver process for both), same process, same synthetic market, interleaved
repeats with a ratio per repeat. RLlib samples `--num-envs` copies of the hierarchical env in
its (local) env runner (`resources.num_envs_per_env_runner`): one batched forward per policy
for all copies instead of one per env step; what is learned per step is unchanged (same PPO,
same batch size, independent episodes). `--baseline` adds the one-env row in the same run.

Then a default phase 1 (500k env steps, 8 specialists, configs/default.yaml as shipped: PPO
rollout 4000, minibatch 256, 10 epochs, [64, 64] MLPs, 2 env runners x 8 vectorised envs) is
projected from a short run of that exact config plus one validation pass, next to the
bare-torch floor of its learner (forward + backward + Adam of the same MLPs on the same number
of minibatches, no RLlib: one network per policy, and the 8 stacked into batched matmuls);
`--full-default` instead runs `rl-trading train phase1` on the defaults and times it.

    .venv/bin/python benchmarks/training_throughput.py [--iterations 3] [--repeats 2]
        [--num-envs 8] [--baseline] [--shared] [--full-default]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "WTIUSD", "SPX500", "NAS100", "US30"]
MATCHED = {
    "ppo": {"train_batch_size": 4000, "minibatch_size": 256, "num_epochs": 4},
    "policy": {"hidden_sizes": [64, 64]},
}


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


def _with(overrides: dict, **sections: dict) -> dict:
    out = {k: dict(v) for k, v in overrides.items()}
    for key, value in sections.items():
        out.setdefault(key, {}).update(value)
    return out


def _bars(n_bars: int):
    from rl_trading.data import split_by_time, synthetic_market

    return split_by_time(synthetic_market(SYMBOLS, n_bars=n_bars, seed=7), 0.7, 0.15, 10)


def _load() -> str:
    return "load=" + "/".join(f"{x:.1f}" for x in os.getloadavg())


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
        n_steps=cfg.ppo.train_batch_size,
        batch_size=cfg.ppo.minibatch_size,
        n_epochs=cfg.ppo.num_epochs,
        learning_rate=cfg.ppo.lr,
        gamma=cfg.ppo.gamma,
        gae_lambda=cfg.ppo.gae_lambda,
        clip_range=cfg.ppo.clip_param,
        policy_kwargs={"net_arch": list(cfg.policy.hidden_sizes), "activation_fn": torch.nn.Tanh},
        device="cpu",
        seed=0,
        verbose=0,
    )
    n = cfg.ppo.train_batch_size
    model.learn(n)  # warm-up
    t0 = time.perf_counter()
    model.learn(n * iterations, reset_num_timesteps=False)
    wall = time.perf_counter() - t0
    return {"agent_steps_per_s": n * iterations / wall, "wall_s": wall}


def learner_floor_s(cfg, obs_dim: int, act_dim: int, n_policies: int, steps: int = 20) -> dict:
    """Seconds per SGD step (all `n_policies` MLP actor-critics, one minibatch each) in bare
    torch, no RLlib: forward, a PPO-shaped loss, backward, grad-norm clip and Adam. "loop": one
    network per policy (as RLlib holds them); "grouped": the policies stacked into batched
    matmuls (`baddbmm`), one Adam: the floor of a learner that updates them as one network."""
    import torch
    from torch import nn

    from policies.base import mlp

    hidden = list(cfg.policy.hidden_sizes)
    mb = cfg.ppo.minibatch_size
    nets, opts = [], []
    for _ in range(n_policies):
        net = nn.ModuleList([mlp(obs_dim, hidden, act_dim), mlp(obs_dim, hidden, 1)])
        nets.append(net)
        opts.append(torch.optim.Adam(net.parameters(), lr=cfg.ppo.lr, foreach=True))
    obs = torch.randn(mb, obs_dim)
    adv = torch.randn(mb)

    def ppo_loss(mean, value, advantage):
        logp = -(mean**2).sum(-1)
        ratio = torch.exp(logp - logp.detach())
        loss = -torch.min(ratio * advantage, ratio.clamp(0.8, 1.2) * advantage).mean(-1)
        return loss + 0.5 * ((value - advantage) ** 2).mean(-1)

    def loop_step() -> None:
        for net, opt in zip(nets, opts, strict=True):
            loss = ppo_loss(net[0](obs), net[1](obs).squeeze(-1), adv)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.ppo.grad_clip)
            opt.step()

    sizes = [obs_dim, *hidden]
    towers = []
    for out in (act_dim, 1):
        dims = [*sizes, out]
        towers.append(
            [
                (
                    (torch.randn(n_policies, i, o) / i**0.5).requires_grad_(),
                    torch.zeros(n_policies, 1, o, requires_grad=True),
                )
                for i, o in zip(dims[:-1], dims[1:], strict=True)
            ]
        )
    params = [p for tower in towers for wb in tower for p in wb]
    grouped_opt = torch.optim.Adam(params, lr=cfg.ppo.lr, foreach=True)
    gx, gadv = obs.expand(n_policies, -1, -1).contiguous(), adv.expand(n_policies, -1)

    def run_tower(tower, x):
        for k, (w, b) in enumerate(tower):
            x = torch.baddbmm(b, x, w)
            if k < len(tower) - 1:
                x = torch.tanh(x)
        return x

    def grouped_step() -> None:
        mean = run_tower(towers[0], gx)
        loss = ppo_loss(mean, run_tower(towers[1], gx).squeeze(-1), gadv).sum()
        grouped_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.ppo.grad_clip)  # (a per-policy clip costs more)
        grouped_opt.step()

    out = {}
    for name, step in (("loop", loop_step), ("grouped", grouped_step)):
        for _ in range(3):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        out[name] = (time.perf_counter() - t0) / steps
    return out


def _describe(cfg) -> str:
    res, ppo = cfg.resources, cfg.ppo
    return (
        f"ppo.train_batch_size={ppo.train_batch_size} ppo.minibatch_size={ppo.minibatch_size} "
        f"ppo.num_epochs={ppo.num_epochs} policy.model={cfg.policy.model} "
        f"policy.hidden_sizes={list(cfg.policy.hidden_sizes)} "
        f"resources.num_env_runners={res.num_env_runners} "
        f"resources.num_envs_per_env_runner={res.num_envs_per_env_runner} "
        f"phases.shared_specialist_policy={cfg.phases.shared_specialist_policy} "
        f"env.episode_length={cfg.env.episode_length} symbols={len(cfg.data.symbols)}"
    )


def _row(label: str, r: dict) -> str:
    return (
        f"  {label}: {r['agent_steps_per_s']:.0f} agent steps/s, {r['env_steps_per_s']:.0f} env "
        f"steps/s ({r['env_steps']:.0f} env steps in {r['wall_s']:.1f}s) {_load()}"
    )


def matched_comparison(args, splits) -> None:
    """Interleaved RLlib / SB3 repeats with matched hyperparameters; ratio per repeat."""
    fast = _cfg(_with(MATCHED, resources={"num_envs_per_env_runner": args.num_envs}))
    variants = {"RLlib": fast}
    if args.baseline:
        variants["RLlib 1 env (baseline)"] = _cfg(
            _with(MATCHED, resources={"num_envs_per_env_runner": 1})
        )
    if args.shared:
        variants["RLlib shared specialist"] = _cfg(
            _with(
                MATCHED,
                resources={"num_envs_per_env_runner": args.num_envs},
                phases={"shared_specialist_policy": True},
            )
        )
    print(f"matched RLlib config: {_describe(fast)}")
    print(
        f"matched SB3 config: PPO MlpPolicy n_steps={fast.ppo.train_batch_size} "
        f"batch_size={fast.ppo.minibatch_size} n_epochs={fast.ppo.num_epochs} "
        f"net_arch={list(fast.policy.hidden_sizes)} tanh, 1 TradingEnv ({SYMBOLS[0]})"
    )
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}:")
        results = {k: rllib_phase1(c, splits, args.iterations) for k, c in variants.items()}
        sb = sb3_single(fast, splits, args.iterations)
        for label, r in results.items():
            print(_row(label, r))
        print(
            f"  SB3 PPO, 1 instrument TradingEnv: {sb['agent_steps_per_s']:.0f} steps/s {_load()}"
        )
        for label, r in results.items():
            ratio = r["agent_steps_per_s"] / sb["agent_steps_per_s"]
            ratios[label].append(ratio)
            print(f"  ratio {label} agent steps/s / SB3 steps/s: {ratio:.2f}")
    for label, values in ratios.items():
        print(
            f"ratio {label} / SB3 over {len(values)} repeats: median "
            f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"
        )


def _default_cfg():
    """configs/default.yaml as shipped (8 symbols, synthetic 1m bars), MLflow system metrics off."""
    from rl_trading.config import CONFIG_DIR, load_config

    return load_config(CONFIG_DIR / "default.yaml", ["tracking.system_metrics=false"])


def _time_iterations(cfg, factory, n: int, learner_class: type | None = None) -> tuple:
    """(iteration walls, sampling timers, learner timers, one validation pass in s) of `n`
    phase-1 iterations after a warm-up one."""
    from rl_trading.training.algo_config import build_phase_config
    from rl_trading.training.validation import validate

    config = build_phase_config(cfg, 1, factory)
    if learner_class is not None:
        config = config.learners(learner_class=learner_class)
    algo = config.build_algo()
    try:
        algo.train()  # warm-up
        sample, learn, walls = [], [], []
        for _ in range(n):
            t0 = time.perf_counter()
            res = algo.train()
            walls.append(time.perf_counter() - t0)
            sample.append(res["timers"]["env_runner_sampling_timer"])
            learn.append(res["timers"]["learner_update_timer"])
        modules = {
            pid: algo.get_module(pid) for pid in algo.config.policies if pid.startswith("spec")
        }
        t0 = time.perf_counter()
        validate(factory, "specialists", modules)
        val_s = time.perf_counter() - t0
    finally:
        algo.stop()
    return walls, sample, learn, val_s


def default_phase1(args) -> None:
    """Measured (`--full-default`) or projected wall time of a default phase 1, with its
    breakdown and the bare-torch floor of its learner."""
    import subprocess
    import sys

    from rl_trading.data import load_market
    from rl_trading.training.algo_config import phase_iterations
    from rl_trading.training.env_bridge import hierarchical_factory
    from rl_trading.training.fast.learner import FastPPOTorchLearner

    default = _default_cfg()
    total_steps = default.phases.phase1_timesteps
    n_iter = phase_iterations(default, 1)
    print(f"default phase 1 config (configs/default.yaml): {_describe(default)}")
    if args.full_default:
        # the app itself, as a user runs it: `rl-trading train phase1` on the defaults, with
        # validation, checkpoints and MLflow tracking, in a throw-away workspace
        cli = os.path.join(os.path.dirname(sys.executable), "rl-trading")
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "RL_TRADING_WORKSPACE": tmp}
            t0 = time.perf_counter()
            proc = subprocess.run(
                [cli, "train", "phase1", "--run-dir", "run", "--set",
                 "tracking.system_metrics=false"],
                cwd=tmp, env=env, text=True, capture_output=True,
            )  # fmt: skip
            wall = time.perf_counter() - t0
        print(proc.stdout[-1500:])
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raise SystemExit(proc.returncode)
        print(
            f"default phase 1, `rl-trading train phase1` ({total_steps:,} env steps, {n_iter} "
            f"iterations, validation every {default.phases.eval_interval}): {wall:.0f}s wall = "
            f"{wall / 60:.1f} min {_load()}"
        )
        return

    bars = load_market(default)
    from rl_trading.data import split_by_time

    splits = split_by_time(
        bars, default.data.train_frac, default.data.val_frac, default.data.embargo_bars
    )
    factory = hierarchical_factory(default, splits.train, splits.val)
    n_runs = max(args.iterations, 3)
    walls, sample, learn, val_s = _time_iterations(default, factory, n_runs)
    it_s = statistics.median(walls)
    n_val = n_iter // default.phases.eval_interval
    total = n_iter * it_s + n_val * val_s
    print(
        f"  per iteration ({default.ppo.train_batch_size} env steps): median {it_s:.2f}s "
        f"(sampling ~{statistics.median(sample):.2f}s, learner ~{statistics.median(learn):.2f}s "
        f"RLlib timers); one validation pass {val_s:.2f}s {_load()}"
    )
    print(
        f"  -> projected {total / 60:.1f} min for {total_steps:,} env steps: {n_iter} iterations "
        f"+ {n_val} validations (checkpoints and tracking not counted; --full-default measures)"
    )
    # the same phase with RLlib's per-module PPO update (FastPPOTorchLearner, identical to
    # PPOTorchLearner bit for bit) instead of the default stacked one, in the same run
    stock_s = statistics.median(_time_iterations(default, factory, n_runs, FastPPOTorchLearner)[0])
    print(
        f"  baseline, RLlib's per-module PPO update: median iteration {stock_s:.2f}s; "
        f"default stacked learner (GroupedPPOTorchLearner) {it_s:.2f}s: ratio "
        f"{stock_s / it_s:.2f} {_load()}"
    )
    obs, act = factory.spaces("specialists")
    aid = next(a for a in obs if a.startswith("specialist_"))
    per_module = default.ppo.train_batch_size  # env steps per iteration = samples per policy
    minibatches = math.ceil(per_module / default.ppo.minibatch_size) * default.ppo.num_epochs
    floor = learner_floor_s(default, obs[aid].shape[0], act[aid].shape[0], len(SYMBOLS))
    for name, step_s in floor.items():
        print(
            f"learner floor, bare torch ({name}): {step_s * 1000:.1f} ms per SGD step of "
            f"{len(SYMBOLS)} policies x minibatch {default.ppo.minibatch_size} (obs "
            f"{obs[aid].shape[0]}, {list(default.policy.hidden_sizes)} actor+critic) x "
            f"{minibatches} per iteration x {n_iter} iterations = "
            f"{n_iter * minibatches * step_s / 60:.1f} min, before any sampling {_load()}"
        )


def main() -> None:
    """Run the measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--n-bars", type=int, default=20_000)
    parser.add_argument("--baseline", action="store_true", help="add the 1-env RLlib row")
    parser.add_argument("--shared", action="store_true", help="add the shared-specialist row")
    parser.add_argument("--skip-default", action="store_true")
    parser.add_argument("--skip-matched", action="store_true", help="only the default phase 1")
    parser.add_argument("--full-default", action="store_true")
    args = parser.parse_args()

    import ray
    import torch

    app_threads = torch.get_num_threads()  # what the app runs with (torch's default)
    torch.set_num_threads(1)
    print(f"cpus={os.cpu_count()} {_load()} (1/5/15 min)")
    if not args.skip_matched:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print("matched comparison: torch_threads=1 in both")
        matched_comparison(args, _bars(args.n_bars))
        ray.shutdown()
    if not args.skip_default:
        torch.set_num_threads(app_threads)
        print(f"default phase 1: torch_threads={app_threads} (the app's default)")
        if not args.full_default:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        default_phase1(args)
        ray.shutdown()


if __name__ == "__main__":
    main()
