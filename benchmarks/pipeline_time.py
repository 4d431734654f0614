"""The whole default pipeline, timed: phases 1-3 at the shipped budgets, as `train pipeline` runs.

Runs `rl_trading.training.session.train` (the function behind `rl-trading train pipeline`, with
validation, checkpoints and MLflow tracking on, in a throw-away workspace unless
`--workspace`) on configs/default.yaml (500k / 300k / 1M env steps, 8 instruments), and prints:

- the wall time of each phase (algorithm build to stop) and of the whole command (data, Ray
  start, the three phases);
- where each phase's time goes (algorithm build, checkpoint restore, sampling, learner update,
  weight sync, validation, checkpoint writes, algorithm stop, the rest - MLflow, state files:
  see `bench_profile.PhaseProfile`);
- the learner's seconds per 1000 env steps and per 1000 trained agent steps of phases 2 and 3
  against phase 1 (the meta-controller's updates should be as fast per step as the
  specialists');
- the peak resident memory of the driver and of the Ray workers (psutil over the process tree,
  polled in a background thread; local Ray only: a cluster's workers are not descendants).

`--scale F` multiplies the three budgets (e.g. 0.01 for a smoke run); `--set` overrides config
keys as on the CLI.

    .venv/bin/python benchmarks/pipeline_time.py [--scale 1.0] [--config configs/default.yaml]
        [--set key=value ...] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_profile import PeakMemory, PhaseProfile, describe, diff, load

PHASE_KEYS = ("phase1_timesteps", "phase2_timesteps", "phase3_timesteps")


def _config(path: str | None, sets: list[str], scale: float):
    """The config as the CLI builds it, with the phase budgets multiplied by `scale`."""
    from rl_trading.config import CONFIG_DIR, load_config

    cfg = load_config(Path(path) if path else CONFIG_DIR / "default.yaml", sets)
    if scale != 1.0:
        budgets = [
            f"phases.{k}={max(1, round(getattr(cfg.phases, k) * scale))}" for k in PHASE_KEYS
        ]
        cfg = load_config(Path(path) if path else CONFIG_DIR / "default.yaml", [*sets, *budgets])
    return cfg


def _describe(cfg) -> str:
    res, ppo, ph = cfg.resources, cfg.ppo, cfg.phases
    return (
        f"budgets {ph.phase1_timesteps:,} / {ph.phase2_timesteps:,} / {ph.phase3_timesteps:,} env "
        f"steps, symbols={len(cfg.data.symbols)} ({cfg.data.source}), "
        f"ppo.train_batch_size={ppo.train_batch_size} minibatch_size={ppo.minibatch_size} "
        f"num_epochs={ppo.num_epochs}, policy.model={cfg.policy.model} "
        f"hidden_sizes={list(cfg.policy.hidden_sizes)}, resources.num_env_runners="
        f"{res.num_env_runners} x num_envs_per_env_runner={res.num_envs_per_env_runner}, "
        f"num_learners={res.num_learners}, num_gpus_per_learner={res.num_gpus_per_learner}, "
        f"precision={res.precision}, eval_interval={ph.eval_interval}, checkpoint_interval="
        f"{ph.checkpoint_interval}, tracking.system_metrics={cfg.tracking.system_metrics}, "
        f"env.meta_interval={cfg.env.meta_interval}"
    )


def run(args: argparse.Namespace) -> None:
    """Time the pipeline and print the figures."""
    import torch

    from rl_trading.training import session
    from rl_trading.training.algo_config import phase_policies

    cfg = _config(args.config, args.set or [], args.scale)
    print(f"cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} {load()} (1/5/15 min)")
    print(f"config: {_describe(cfg)}" + (f" (--scale {args.scale})" if args.scale != 1 else ""))

    phases: dict[str, dict] = {}
    original_run_phase = session.run_phase

    def timed_run_phase(cfg, num, factory, run_dir, **kwargs):
        # the pipeline's own run_phase, timed from the algorithm build to its stop
        before, load_before = prof.snapshot(), load()
        t0 = time.perf_counter()
        # in-process, so the profile's hooks see the algorithm (`train pipeline` runs each phase
        # as a one-trial Tune run, ~5 s more per phase, the same loop)
        kwargs["in_process"] = True
        result = original_run_phase(cfg, num, factory, run_dir, **kwargs)
        wall = time.perf_counter() - t0
        phases[f"phase{num}"] = {
            "wall": wall,
            "parts": diff(prof.snapshot(), before),
            "trained": len(phase_policies(factory, num)[1]),
            "result": result,
            "load": f"before {load_before}, after {load()}",
        }
        print(
            f"  phase{num} done: {result.iterations} iterations, {result.env_steps:,} env steps "
            f"in {wall:.0f}s ({wall / 60:.1f} min) {load()}",
            flush=True,
        )
        return result

    last_print = [0.0]

    def progress(info: dict) -> None:
        now = time.monotonic()
        if now - last_print[0] > args.print_every_s or info["iteration"] == info["total"]:
            last_print[0] = now
            print(
                f"    {info['phase']} iteration {int(info['iteration'])}/{info['total']}, "
                f"{info['elapsed_s']:.0f}s, eta {info['eta_s']:.0f}s",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(args.workspace or tmp).resolve()
        workspace.mkdir(parents=True, exist_ok=True)
        os.environ["RL_TRADING_WORKSPACE"] = str(workspace)  # MLflow's sqlite store and runs
        os.chdir(workspace)
        session.run_phase = timed_run_phase
        try:
            with PeakMemory(args.poll_s) as mem, PhaseProfile() as prof:
                t0 = time.perf_counter()
                run_dir, _ = session.train(cfg, (1, 2, 3), progress=progress, notify=print)
                total = time.perf_counter() - t0
        finally:
            session.run_phase = original_run_phase
            import ray

            ray.shutdown()
        print(
            f"run dir: {run_dir} (workspace {workspace}{', deleted' if not args.workspace else ''})"
        )

    print("\nwall time per phase (algorithm build, iterations, validation, checkpoints, MLflow):")
    for name, p in phases.items():
        res = p["result"]
        print(
            f"  {name}: {p['wall']:.0f}s = {p['wall'] / 60:.1f} min, {res.iterations} iterations, "
            f"{res.env_steps:,} env steps, {res.env_steps / p['wall']:.0f} env steps/s, "
            f"{p['trained']} trained policies; {describe(p['parts'], p['wall'])} ({p['load']})"
        )
    in_phases = sum(p["wall"] for p in phases.values())
    print(
        f"total: {total:.0f}s = {total / 60:.1f} min (phases {in_phases:.0f}s, the rest - data, "
        f"Ray start, checks - {total - in_phases:.0f}s); target < 20 min on 2 cores {load()}"
    )
    print(
        "learner update time per step (phases 2-3 against phase 1; trained agent steps = env "
        f"steps x trained policies / env.meta_interval for the meta, meta_interval="
        f"{cfg.env.meta_interval}):"
    )
    base = None
    for name, p in phases.items():
        steps = max(1, p["result"].env_steps)
        num = int(name[-1])
        n_spec = p["trained"] - (1 if num > 1 else 0)
        agent_steps = steps * n_spec + (steps / cfg.env.meta_interval if num > 1 else 0)
        per_env = 1000 * p["parts"]["learner"] / steps
        per_agent = 1000 * p["parts"]["learner"] / agent_steps
        if base is None:
            base = (per_env, per_agent)
        print(
            f"  {name}: {per_env:.3f}s per 1000 env steps ({per_env / base[0]:.2f}x phase 1), "
            f"{per_agent:.3f}s per 1000 trained agent steps ({per_agent / base[1]:.2f}x phase 1)"
        )
    print(mem.report())


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the phase budgets")
    parser.add_argument("--config", default=None, help="config file (default: default.yaml)")
    parser.add_argument("--set", action="append", help="override a config key (key=value)")
    parser.add_argument("--workspace", default=None, help="keep the run here (default: temp)")
    parser.add_argument("--poll-s", type=float, default=0.5, help="memory poll interval")
    parser.add_argument("--print-every-s", type=float, default=30.0)
    args = parser.parse_args()
    if args.scale <= 0:
        raise SystemExit("--scale must be > 0")
    run(args)


if __name__ == "__main__":
    main()
