"""Training throughput: RLlib phase 1 (8 specialists) vs Stable-Baselines3 PPO, 1 env and n envs.

Matched PPO hyperparameters (rollout 4000, minibatch 256, 4 epochs, [64, 64] tanh MLPs, same
TradingEnv and bars), same process, interleaved repeats with ratios per repeat, the machine
load before and after each row. Rows per repeat:

- RLlib with driver sampling (`num_env_runners=0`, `--num-envs` vectorised hierarchical envs in
  the driver) and with the shipped resource defaults of configs/default.yaml (2 env runners x 8
  envs); each with a profile of where an iteration's time goes (sampling, learner update,
  weight sync, the rest) and one validation pass;
- SB3 PPO on one TradingEnv, and on `n_envs` TradingEnvs (default: RLlib's total vectorised
  env count of the shipped row) in a `DummyVecEnv` (on torch's default threads, one per core,
  and on 1 thread) and in a `SubprocVecEnv`, all with the same 4000-step rollout
  (`n_steps = 4000 / n_envs`); the fastest vectorised row is "SB3 vectorised", the baseline of
  the ratios (agent steps/s: 8 per hierarchical env step, 1 per SB3 env step). RLlib's learner
  runs on `resources.learner_threads` (default: one torch thread per env-runner CPU).

Then a default phase 1 (500k env steps, configs/default.yaml as shipped: 10 epochs, 2 env
runners x 8 envs) is projected from a short run of that exact config plus one validation pass,
with its profile, next to the bare-torch floor of its learner (forward + backward + Adam of the
same MLPs on the same number of minibatches, no RLlib: one network per policy, and the 8 stacked
into batched matmuls); `--full-default` instead runs `rl-trading train phase1` on the defaults
and times it. `--quick` is a smoke run of every path at a tiny budget (its figures mean nothing).

    .venv/bin/python benchmarks/training_throughput.py [--iterations 3] [--repeats 2]
        [--num-envs 8] [--sb3-envs N] [--baseline] [--shared] [--full-default] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

from bench_profile import PhaseProfile, describe
from bench_profile import load as _load

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "WTIUSD", "SPX500", "NAS100", "US30"]
MATCHED = {
    "ppo": {"train_batch_size": 4000, "minibatch_size": 256, "num_epochs": 4},
    "policy": {"hidden_sizes": [64, 64]},
}
QUICK_PPO = {"train_batch_size": 800, "minibatch_size": 128, "num_epochs": 1}


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


def _env_count(cfg) -> int:
    """Vectorised hierarchical envs sampling at once (driver sampling: one env runner)."""
    res = cfg.resources
    return max(1, res.num_env_runners) * res.num_envs_per_env_runner


def _spec_modules(algo) -> dict:
    return {pid: algo.get_module(pid) for pid in algo.config.policies if pid.startswith("spec")}


def rllib_phase1(cfg, splits, iterations: int) -> dict:
    """Agent and env steps/s of `iterations` phase-1 iterations (after one warm-up), the time
    per part of those iterations, and one validation pass."""
    import torch

    from rl_trading.training.algo_config import build_phase_config, learner_threads
    from rl_trading.training.env_bridge import hierarchical_factory
    from rl_trading.training.validation import validate

    factory = hierarchical_factory(cfg, splits.train, splits.val)
    algo = build_phase_config(cfg, 1, factory).build_algo()
    threads = learner_threads(cfg.resources)  # as a phase run sets them
    torch.set_num_threads(threads)
    load_before = _load()
    try:
        algo.train()  # warm-up (first sampling + learner build costs)
        with PhaseProfile() as prof:
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
            parts = prof.snapshot()
        env_steps = runners["num_env_steps_sampled_lifetime"] - steps0
        t0 = time.perf_counter()
        validate(factory, "specialists", _spec_modules(algo), seed=cfg.seed)
        val_s = time.perf_counter() - t0
    finally:
        algo.stop()
    agents = len(cfg.data.symbols)
    return {
        "env_steps_per_s": env_steps / wall,
        "agent_steps_per_s": env_steps * agents / wall,
        "wall_s": wall,
        "env_steps": env_steps,
        "parts": {k: v for k, v in parts.items() if k in ("sampling", "learner", "weight_sync")},
        "iterations": iterations,
        "val_s": val_s,
        "threads": threads,
        "eval_interval": cfg.phases.eval_interval,
        "load": f"before {load_before}, after {_load()}",
    }


def sb3_run(
    cfg, splits, iterations: int, n_envs: int = 1, vec: str = "single", threads: int = 1
) -> dict:
    """SB3 PPO steps/s with matched hyperparameters on `n_envs` TradingEnvs (env i trades
    instrument i mod 8) in a `DummyVecEnv` ("single": one env, "dummy") or `SubprocVecEnv`
    ("subproc"), torch on `threads` threads; the rollout per update stays `train_batch_size`
    (`n_steps * n_envs`)."""
    import warnings

    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from envs import TradingEnv

    # SB3 warns when the rollout is not a multiple of the minibatch (its last one is short)
    warnings.filterwarnings("ignore", message="You have specified a mini-batch size")
    rollout = cfg.ppo.train_batch_size
    if rollout % n_envs:
        raise SystemExit(f"train_batch_size {rollout} is not a multiple of n_envs {n_envs}")

    def make(i: int):
        bars = splits.train[SYMBOLS[i % len(SYMBOLS)]]
        return lambda: TradingEnv(cfg, bars=bars, seed=i)

    fns = [make(i) for i in range(n_envs)]
    torch.set_num_threads(threads)
    env = SubprocVecEnv(fns) if vec == "subproc" else DummyVecEnv(fns)
    load_before = _load()
    try:
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=rollout // n_envs,
            batch_size=cfg.ppo.minibatch_size,
            n_epochs=cfg.ppo.num_epochs,
            learning_rate=cfg.ppo.lr,
            gamma=cfg.ppo.gamma,
            gae_lambda=cfg.ppo.gae_lambda,
            clip_range=cfg.ppo.clip_param,
            policy_kwargs={
                "net_arch": list(cfg.policy.hidden_sizes),
                "activation_fn": torch.nn.Tanh,
            },
            device="cpu",
            seed=0,
            verbose=0,
        )
        model.learn(rollout)  # warm-up
        t0 = time.perf_counter()
        model.learn(rollout * iterations, reset_num_timesteps=False)
        wall = time.perf_counter() - t0
    finally:
        env.close()
    return {
        "agent_steps_per_s": rollout * iterations / wall,
        "wall_s": wall,
        "load": f"before {load_before}, after {_load()}",
    }


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
        f"steps/s ({r['env_steps']:.0f} env steps in {r['wall_s']:.1f}s), learner torch "
        f"threads {r['threads']}, {r['load']}"
    )


def _profile_row(r: dict) -> str:
    n = r["iterations"]
    val_per_it = r["val_s"] / r["eval_interval"]
    return (
        f"    profile per iteration: {describe(r['parts'], r['wall_s'], per=n)}; one validation "
        f"pass {r['val_s']:.2f}s (every {r['eval_interval']} iterations in a run: "
        f"+{val_per_it:.2f}s per iteration, not in the steps/s above)"
    )


def _ratios(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f}, "
        f"per repeat {' / '.join(f'{v:.2f}' for v in values)})"
    )


def matched_comparison(args, splits) -> None:
    """Interleaved RLlib / SB3 repeats with matched hyperparameters; ratios per repeat against
    SB3 vectorised (the fastest of its vectorised rows) and SB3 with one env."""
    matched = _with(MATCHED, ppo=QUICK_PPO) if args.quick else MATCHED
    shipped = _default_cfg().resources
    driver = _cfg(
        _with(matched, resources={"num_env_runners": 0, "num_envs_per_env_runner": args.num_envs})
    )
    defaults = _cfg(
        _with(
            matched,
            resources={
                "num_env_runners": shipped.num_env_runners,
                "num_envs_per_env_runner": shipped.num_envs_per_env_runner,
                "num_cpus_per_env_runner": shipped.num_cpus_per_env_runner,
            },
        )
    )
    variants = {
        f"RLlib driver sampling (0 env runners x {args.num_envs} envs)": driver,
        f"RLlib shipped resources ({shipped.num_env_runners} env runners x "
        f"{shipped.num_envs_per_env_runner} envs)": defaults,
    }
    if args.baseline:
        variants["RLlib 1 env, driver sampling (baseline)"] = _cfg(
            _with(matched, resources={"num_envs_per_env_runner": 1})
        )
    if args.shared:
        variants["RLlib shared specialist, driver sampling"] = _cfg(
            _with(
                matched,
                resources={"num_envs_per_env_runner": args.num_envs},
                phases={"shared_specialist_policy": True},
            )
        )
    n_envs = args.sb3_envs or _env_count(defaults)
    for label, c in variants.items():
        print(f"matched config, {label}: {_describe(c)}")
    print(
        f"matched SB3 config: PPO MlpPolicy n_steps={driver.ppo.train_batch_size} // n_envs "
        f"batch_size={driver.ppo.minibatch_size} n_epochs={driver.ppo.num_epochs} "
        f"net_arch={list(driver.policy.hidden_sizes)} tanh, TradingEnv (env i trades symbol i "
        f"mod 8); n_envs 1 and {n_envs} (= RLlib's {_env_count(defaults)} vectorised envs of the "
        f"shipped row unless --sb3-envs)"
    )
    many = args.torch_threads  # torch's default: one per core
    sb3_rows = {
        "SB3 PPO, 1 env": (1, "single", many),
        f"SB3 PPO, DummyVecEnv x {n_envs}, {many} torch threads": (n_envs, "dummy", many),
        f"SB3 PPO, DummyVecEnv x {n_envs}, 1 torch thread": (n_envs, "dummy", 1),
        f"SB3 PPO, SubprocVecEnv x {n_envs}, {many} torch threads": (n_envs, "subproc", many),
    }
    ratios: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}:")
        results = {k: rllib_phase1(c, splits, args.iterations) for k, c in variants.items()}
        sb = {k: sb3_run(driver, splits, args.iterations, *row) for k, row in sb3_rows.items()}
        for label, r in results.items():
            print(_row(label, r))
            print(_profile_row(r))
        for label, r in sb.items():
            print(f"  {label}: {r['agent_steps_per_s']:.0f} agent steps/s {r['load']}")
        vec_label = max(list(sb)[1:], key=lambda k: sb[k]["agent_steps_per_s"])
        vec = sb[vec_label]["agent_steps_per_s"]
        one = sb["SB3 PPO, 1 env"]["agent_steps_per_s"]
        print(f"  SB3 vectorised (the fastest of the three): {vec_label}, {vec:.0f} agent steps/s")
        for label, r in results.items():
            rv, r1 = r["agent_steps_per_s"] / vec, r["agent_steps_per_s"] / one
            ratios.setdefault(f"{label} / SB3 vectorised", []).append(rv)
            ratios.setdefault(f"{label} / SB3 1 env", []).append(r1)
            print(f"  ratio {label}: {rv:.2f} against SB3 vectorised, {r1:.2f} against SB3 1 env")
    for label, values in ratios.items():
        print(f"ratio {label}, agent steps/s, {len(values)} repeats: {_ratios(values)}")


def _default_cfg(sets: list[str] | None = None):
    """configs/default.yaml as shipped (8 symbols, synthetic 1m bars), MLflow system metrics off."""
    from rl_trading.config import CONFIG_DIR, load_config

    return load_config(
        CONFIG_DIR / "default.yaml", ["tracking.system_metrics=false", *(sets or [])]
    )


def _time_iterations(cfg, factory, n: int, learner_class: type | None = None) -> tuple:
    """(iteration walls, seconds per part over the `n` iterations, one validation pass in s) of
    `n` phase-1 iterations after a warm-up one, the learner on a phase run's torch threads."""
    from rl_trading.training.algo_config import build_phase_config, learner_thread_count
    from rl_trading.training.validation import validate

    config = build_phase_config(cfg, 1, factory)
    if learner_class is not None:
        config = config.learners(learner_class=learner_class)
    algo = config.build_algo()
    try:
        with learner_thread_count(cfg.resources):
            algo.train()  # warm-up
            walls = []
            with PhaseProfile() as prof:
                for _ in range(n):
                    t0 = time.perf_counter()
                    algo.train()
                    walls.append(time.perf_counter() - t0)
                parts = prof.snapshot()
            t0 = time.perf_counter()
            validate(factory, "specialists", _spec_modules(algo), seed=cfg.seed)
            val_s = time.perf_counter() - t0
    finally:
        algo.stop()
    parts = {k: v for k, v in parts.items() if k in ("sampling", "learner", "weight_sync")}
    return walls, parts, val_s


def default_phase1(args) -> None:
    """Measured (`--full-default`) or projected wall time of a default phase 1, with its
    profile and the bare-torch floor of its learner."""
    import subprocess
    import sys

    from rl_trading.data import load_market
    from rl_trading.training.env_bridge import hierarchical_factory
    from rl_trading.training.fast.learner import FastPPOTorchLearner
    from rl_trading.training.mapping import phase_iterations

    quick = [f"ppo.{k}={v}" for k, v in QUICK_PPO.items()] if args.quick else []
    quick += ["phases.phase1_timesteps=4000"] if args.quick else []
    default = _default_cfg(quick)
    total_steps = default.phases.phase1_timesteps
    n_iter = phase_iterations(default, 1)
    print(f"default phase 1 config (configs/default.yaml{' + --quick' if quick else ''}): "
          f"{_describe(default)}")  # fmt: skip
    if args.full_default:
        # the app itself, as a user runs it: `rl-trading train phase1` on the defaults, with
        # validation, checkpoints and MLflow tracking, in a throw-away workspace
        cli = os.path.join(os.path.dirname(sys.executable), "rl-trading")
        sets = ["--set", "tracking.system_metrics=false"]
        for item in quick:
            sets += ["--set", item]
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "RL_TRADING_WORKSPACE": tmp}
            load_before = _load()
            t0 = time.perf_counter()
            proc = subprocess.run(
                [cli, "train", "phase1", "--run-dir", "run", *sets],
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
            f"{wall / 60:.1f} min (load before {load_before}, after {_load()})"
        )
        return

    bars = load_market(default)
    from rl_trading.data import split_for_env

    splits = split_for_env(bars, default)  # validation keeps its first bars (causal history)
    factory = hierarchical_factory(default, splits.train, splits.val)
    n_runs = 1 if args.quick else max(args.iterations, 3)
    load_before = _load()
    walls, parts, val_s = _time_iterations(default, factory, n_runs)
    it_s = statistics.median(walls)
    n_val = n_iter // default.phases.eval_interval
    total = n_iter * it_s + n_val * val_s
    print(
        f"  per iteration ({default.ppo.train_batch_size} env steps): median {it_s:.2f}s; "
        f"profile per iteration: {describe(parts, sum(walls), per=n_runs)}; one validation "
        f"pass {val_s:.2f}s (load before {load_before}, after {_load()})"
    )
    print(
        f"  -> projected {total / 60:.1f} min for {total_steps:,} env steps: {n_iter} iterations "
        f"+ {n_val} validations (checkpoints and tracking not counted; --full-default measures)"
    )
    # the same phase with RLlib's per-module PPO update (FastPPOTorchLearner, identical to
    # PPOTorchLearner bit for bit) instead of the default stacked one, in the same run
    stock_walls, stock_parts, _ = _time_iterations(default, factory, n_runs, FastPPOTorchLearner)
    stock_s = statistics.median(stock_walls)
    print(
        f"  baseline, RLlib's per-module PPO update: median iteration {stock_s:.2f}s (profile "
        f"{describe(stock_parts, sum(stock_walls), per=n_runs)}); default stacked learner "
        f"(GroupedPPOTorchLearner) {it_s:.2f}s: ratio {stock_s / it_s:.2f} {_load()}"
    )
    obs, act = factory.spaces("specialists")
    aid = next(a for a in obs if a.startswith("specialist_"))
    per_module = default.ppo.train_batch_size  # env steps per iteration = samples per policy
    minibatches = math.ceil(per_module / default.ppo.minibatch_size) * default.ppo.num_epochs
    floor = learner_floor_s(
        default, obs[aid].shape[0], act[aid].shape[0], len(SYMBOLS), steps=3 if args.quick else 20
    )
    for name, step_s in floor.items():
        print(
            f"learner floor, bare torch ({name}): {step_s * 1000:.1f} ms per SGD step of "
            f"{len(SYMBOLS)} policies x minibatch {default.ppo.minibatch_size} (obs "
            f"{obs[aid].shape[0]}, {list(default.policy.hidden_sizes)} actor+critic) x "
            f"{minibatches} per iteration = {minibatches * step_s:.2f}s per iteration (RLlib's "
            f"learner above: {parts['learner'] / n_runs:.2f}s) x {n_iter} iterations = "
            f"{n_iter * minibatches * step_s / 60:.1f} min, before any sampling {_load()}"
        )


def main() -> None:
    """Run the measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-envs", type=int, default=8, help="envs of the driver-sampling row")
    parser.add_argument(
        "--sb3-envs", type=int, default=None, help="SB3 n_envs (default: RLlib shipped env count)"
    )
    parser.add_argument("--n-bars", type=int, default=20_000)
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="SB3's torch threads (0: torch's default)"
    )
    parser.add_argument("--baseline", action="store_true", help="add the 1-env RLlib row")
    parser.add_argument("--shared", action="store_true", help="add the shared-specialist row")
    parser.add_argument("--skip-default", action="store_true")
    parser.add_argument("--skip-matched", action="store_true", help="only the default phase 1")
    parser.add_argument("--full-default", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 iteration, 1 repeat, tiny PPO batch"
    )
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.repeats, args.n_bars = 1, 1, 5_000

    import ray
    import torch

    app_threads = torch.get_num_threads()  # what the app runs with (torch's default)
    args.torch_threads = args.torch_threads or app_threads
    print(f"cpus={os.cpu_count()} {_load()} (1/5/15 min)")
    if not args.skip_matched:
        ray.init(include_dashboard=False, log_to_driver=False)
        print(
            f"matched comparison: RLlib's learner on resources.learner_threads (0: one torch "
            f"thread per env-runner CPU, at least 1), SB3 on {args.torch_threads} torch threads "
            f"(torch's default) and, vectorised, also on 1; Ray CPUs "
            f"{ray.cluster_resources().get('CPU', 0):.0f}"
        )
        matched_comparison(args, _bars(args.n_bars))
        ray.shutdown()
    if not args.skip_default:
        torch.set_num_threads(app_threads)
        print(f"default phase 1: torch_threads={app_threads} (the app's default)")
        if not args.full_default:
            ray.init(include_dashboard=False, log_to_driver=False)
        default_phase1(args)
        ray.shutdown()


if __name__ == "__main__":
    main()
