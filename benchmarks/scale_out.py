"""Scale-out: phase-1 sampling throughput on one node and on a two-node loopback Ray cluster.

Phase 1 of configs/default.yaml (8 specialists, `resources.num_env_runners` x
`num_envs_per_env_runner` as shipped, overridable with `--set`) runs a warm-up iteration and then
`--iterations` timed ones, in one run:

- on ONE node: a fresh local Ray with `head CPUs + worker CPUs` CPUs (the same CPU total as
  the cluster), env runners wherever Ray puts them (on that node);
- on TWO nodes: a `ray.cluster_utils.Cluster` on loopback (as `tests/test_cluster.py` builds
  it): a head node with `--head-cpus` CPUs (the driver and, with `num_learners: 0`, the
  learner) and a worker node with the env runners' CPUs and a `worker_node` resource (one per
  env runner); the config asks `resources.custom_resources_per_env_runner={worker_node: 1}`,
  so RLlib's `custom_resources_per_env_runner` puts every env runner on the worker node. The
  run FAILS (exit 1) unless every env runner reports the worker node's id (each actor's
  `ray.get_runtime_context().get_node_id()`), before and after the timed iterations.

`--repeats` (2) interleaves the layouts, the order alternating per repeat, and prints the
two / one sampling ratio per repeat and its median. `--address HOST:PORT` measures the two-node
row on a running cluster of real machines instead of the loopback one (its worker nodes offer
`worker_node`; the address is checked before anything runs).

Printed per layout (and written as JSON to `--out`, default `runs/bench/scale_out.json`):
sampling throughput (env and agent steps/s of sampling alone, from RLlib's
`timers/env_runner_sampling_timer` in the result dicts, cross-checked against the benchmark's
own timing of the same call), whole-iteration steps/s (sampling + learner + weight sync), the
learner's seconds per iteration, the machine load before and after, the config and the node
layout (nodes, their resources, where the driver, learner and env runners ran). Agent steps =
env steps x the 8 specialists (each acts on every step in phase 1).

On one machine a loopback cluster shares the same cores, so the two-node row measures the
overhead of a second raylet and object store, not a speed-up; the speed-up needs a second
machine (docs/scaling.md).

    .venv/bin/python benchmarks/scale_out.py [--iterations 3] [--repeats 2] [--nodes 1,2]
        [--head-cpus 1] [--object-store-mib 512] [--address HOST:PORT]
        [--out runs/bench/scale_out.json] [--quick] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_profile import PhaseProfile
from bench_profile import load as _load

WORKER_RESOURCE = "worker_node"
# RLlib's default EMA coefficient of `MetricsLogger.log_time` (the `timers/*` in a result dict)
RLLIB_TIMER_EMA = 0.01
# tiny settings of `--quick` (a smoke run; its figures mean nothing)
QUICK_SETS = [
    "data.synthetic.n_bars=4000",
    "env.episode_length=200",
    "ppo.train_batch_size=400",
    "ppo.minibatch_size=200",
    "ppo.num_epochs=1",
    "resources.num_envs_per_env_runner=2",
]


class PlacementError(AssertionError):
    """The env runners did not run where the layout says: the two-node figure would be void."""


def load_cfg(sets: Sequence[str] = ()) -> Any:
    """configs/default.yaml as shipped plus `sets` (dotted key=value), MLflow system metrics off."""
    from rl_trading.config import CONFIG_DIR, load_config

    return load_config(CONFIG_DIR / "default.yaml", ["tracking.system_metrics=false", *sets])


def worker_node_args(cfg: Any) -> dict[str, Any]:
    """Ray node arguments of the worker node: the env runners' CPUs and one `worker_node` per
    env runner (so exactly the configured runners fit on it)."""
    from rl_trading.errors import ConfigError

    res = cfg.resources
    if res.num_env_runners < 1:
        raise ConfigError(
            "scale-out needs resources.num_env_runners >= 1 (0 samples in the driver: nothing "
            "to place on the worker node)"
        )
    cpus = res.num_env_runners * res.num_cpus_per_env_runner
    return {
        "num_cpus": max(1, math.ceil(cpus - 1e-9)),
        "resources": {WORKER_RESOURCE: float(res.num_env_runners)},
    }


def two_node_cfg(cfg: Any) -> Any:
    """A copy of `cfg` whose env runners each need one `worker_node`: placed on the worker node
    only (`resources.custom_resources_per_env_runner`)."""
    out = cfg.model_copy(deep=True)
    out.resources.custom_resources_per_env_runner = {
        **cfg.resources.custom_resources_per_env_runner,
        WORKER_RESOURCE: 1.0,
    }
    return out


@contextmanager
def two_node_cluster(
    head_cpus: int, worker_args: dict[str, Any], object_store_bytes: int | None = None
) -> Iterator[dict[str, Any]]:
    """A head and a worker node on loopback, this process connected as the driver; yields
    `{"address", "head_node", "worker_node"}` (node ids). Always shuts its nodes down."""
    import ray
    from ray.cluster_utils import Cluster

    store = {"object_store_memory": object_store_bytes} if object_store_bytes else {}
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": head_cpus, "include_dashboard": False, **store},
    )
    try:
        worker = cluster.add_node(**worker_args, **store)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield {
            "address": cluster.address,
            "head_node": cluster.head_node.node_id,
            "worker_node": worker.node_id,
            "worker_nodes": [worker.node_id],
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


@contextmanager
def existing_cluster(address: str) -> Iterator[dict[str, Any]]:
    """Join a running cluster (other machines); its worker nodes are the alive nodes that offer
    the `worker_node` resource (`ray start ... --resources '{"worker_node": N}'`)."""
    import ray

    from rl_trading.errors import ConfigError

    ray.init(address=address, log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        workers = [n["NodeID"] for n in alive if n["Resources"].get(WORKER_RESOURCE, 0) > 0]
        if not workers:
            raise ConfigError(
                f"no node of the cluster at {address} offers the {WORKER_RESOURCE!r} resource: "
                f"start the worker nodes with --resources '{{\"{WORKER_RESOURCE}\": N}}'"
            )
        driver = ray.get_runtime_context().get_node_id()
        yield {"address": address, "head_node": driver, "worker_nodes": workers}
    finally:
        ray.shutdown()


@contextmanager
def one_node(num_cpus: int, object_store_bytes: int | None = None) -> Iterator[dict[str, Any]]:
    """A fresh local Ray (the app's `init_ray`, loopback only) with `num_cpus` CPUs."""
    import ray

    from rl_trading.ray_utils import init_ray

    store = {"object_store_memory": object_store_bytes} if object_store_bytes else {}
    init_ray("local", num_cpus=num_cpus, log_to_driver=False, **store)  # never RAY_ADDRESS
    try:
        node = ray.get_runtime_context().get_node_id()
        yield {"address": "local", "head_node": node, "worker_node": node}
    finally:
        ray.shutdown()


def runner_nodes(algo: Any) -> list[str]:
    """Node id of every remote env runner, as each actor reports it itself."""

    def node_of(_runner: Any) -> str:  # nested: pickled by value for the actors
        import ray

        return ray.get_runtime_context().get_node_id()

    return list(algo.env_runner_group.foreach_env_runner(node_of, local_env_runner=False))


def learner_nodes(algo: Any) -> list[str]:
    """Node ids of the learners (the driver's node when `num_learners` is 0)."""
    import ray

    group = algo.learner_group
    if group.is_local:
        return [ray.get_runtime_context().get_node_id()]

    def node_of(_learner: Any) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    return [r.get() for r in group.foreach_learner(node_of)]  # RemoteCallResults


def check_placement(nodes: Sequence[str], expected: str | Collection[str], n_runners: int) -> None:
    """Raise PlacementError unless exactly `n_runners` env runners ran, all on the node
    `expected` (or on nodes of the collection `expected`)."""
    allowed = {expected} if isinstance(expected, str) else set(expected)
    if len(nodes) != n_runners:
        raise PlacementError(f"expected {n_runners} env runners, {len(nodes)} answered: {nodes}")
    away = [n for n in nodes if n not in allowed]
    if away:
        raise PlacementError(
            f"{len(away)} of {n_runners} env runners ran on {sorted(set(away))}, not on the "
            f"worker node(s) {sorted(allowed)}: the figure would not measure scale-out"
        )


def per_iteration(emas: Sequence[float], coeff: float = RLLIB_TIMER_EMA) -> list[float]:
    """Each iteration's own value from the EMA RLlib reports after each iteration: the first
    EMA is the first value, then E_k = (1 - c) E_(k-1) + c x_k, so x_k = (E_k - (1-c) E_(k-1))
    / c. Returns x_1.. (the first, warm-up, value dropped)."""
    return [(e - (1 - coeff) * prev) / coeff for prev, e in zip(emas[:-1], emas[1:], strict=True)]


def measure(
    cfg: Any, factory: Any, iterations: int, expected_node: str | Collection[str]
) -> dict[str, Any]:
    """Build phase 1, check that the env runners run on `expected_node`(s), time `iterations`
    iterations after a warm-up one, check again; the figures and the layout."""
    import ray
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        ENV_RUNNER_SAMPLING_TIMER,
        LEARNER_UPDATE_TIMER,
        NUM_ENV_STEPS_SAMPLED,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
        TIMERS,
    )

    from rl_trading.training.algo_config import build_phase_config

    n_runners = cfg.resources.num_env_runners
    t0 = time.perf_counter()
    algo = build_phase_config(cfg, 1, factory).build_algo()
    build_s = time.perf_counter() - t0
    try:
        placed = runner_nodes(algo)
        layout = {
            "driver_node": ray.get_runtime_context().get_node_id(),
            "learner_nodes": learner_nodes(algo),
            "env_runner_nodes": placed,
            "nodes": [
                {"node_id": n["NodeID"], "resources": n["Resources"]}
                for n in ray.nodes()
                if n.get("Alive")
            ],
        }
        check_placement(placed, expected_node, n_runners)
        out: dict[str, Any] = {"build_s": build_s, "layout": layout, "iterations": iterations}
        if iterations < 1:
            return out
        load_before = _load()
        res = algo.train()  # warm-up: first sampling and the learner's build
        sampling_ema = [res[TIMERS][ENV_RUNNER_SAMPLING_TIMER]]
        learner_ema = [res[TIMERS][LEARNER_UPDATE_TIMER]]
        steps, walls = [], []
        with PhaseProfile() as prof:
            for _ in range(iterations):
                t0 = time.perf_counter()
                res = algo.train()
                walls.append(time.perf_counter() - t0)
                steps.append(res[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED])
                sampling_ema.append(res[TIMERS][ENV_RUNNER_SAMPLING_TIMER])
                learner_ema.append(res[TIMERS][LEARNER_UPDATE_TIMER])
            parts = prof.snapshot()
        lifetime = res[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]
        check_placement(runner_nodes(algo), expected_node, n_runners)  # a restart could move one
    finally:
        algo.stop()
    agents = len(cfg.data.symbols)
    sampling = per_iteration(sampling_ema)
    learner = per_iteration(learner_ema)
    env_steps, sampling_s, wall_s = sum(steps), sum(sampling), sum(walls)
    own_s, source = parts["sampling"], "rllib timers/env_runner_sampling_timer"
    if abs(sampling_s - own_s) > 0.1 * own_s + 0.05:  # e.g. a Ray with another EMA coefficient
        print(
            f"WARNING: RLlib's sampling timer gives {sampling_s:.2f}s, the benchmark's own timer "
            f"of the same call {own_s:.2f}s: the timers' EMA is not the one assumed "
            f"({RLLIB_TIMER_EMA}); the sampling figures use the benchmark's timer"
        )
        sampling_s, source = own_s, "the benchmark's timer (PhaseProfile)"
    return {
        **out,
        "env_steps": env_steps,
        "env_steps_lifetime": lifetime,
        "sampling_env_steps_per_s": env_steps / sampling_s,
        "sampling_agent_steps_per_s": env_steps * agents / sampling_s,
        "iteration_env_steps_per_s": env_steps / wall_s,
        "iteration_agent_steps_per_s": env_steps * agents / wall_s,
        "sampling_s_per_iteration": sampling,
        "sampling_s_benchmark_timer": own_s,
        "sampling_figures_from": source,
        "learner_s_per_iteration": learner,
        "iteration_s": walls,
        "load": f"before {load_before}, after {_load()}",
    }


def describe_cfg(cfg: Any) -> dict[str, Any]:
    """The settings that decide the figures."""
    res, ppo = cfg.resources, cfg.ppo
    return {
        "symbols": len(cfg.data.symbols),
        "data.synthetic.n_bars": cfg.data.synthetic.n_bars,
        "env.episode_length": cfg.env.episode_length,
        "ppo.train_batch_size": ppo.train_batch_size,
        "ppo.minibatch_size": ppo.minibatch_size,
        "ppo.num_epochs": ppo.num_epochs,
        "policy.model": cfg.policy.model,
        "policy.hidden_sizes": list(cfg.policy.hidden_sizes),
        "resources.num_env_runners": res.num_env_runners,
        "resources.num_envs_per_env_runner": res.num_envs_per_env_runner,
        "resources.num_cpus_per_env_runner": res.num_cpus_per_env_runner,
        "resources.num_learners": res.num_learners,
        "resources.num_gpus_per_learner": res.num_gpus_per_learner,
        "resources.precision": res.precision,
        "resources.rllib_fast_paths": res.rllib_fast_paths,
    }


def _print_row(label: str, r: dict[str, Any]) -> None:
    lay = r["layout"]
    print(
        f"{label}: {len(lay['nodes'])} node(s); driver on {lay['driver_node'][:8]}, learner(s) on "
        f"{[n[:8] for n in lay['learner_nodes']]}, env runners on "
        f"{[n[:8] for n in lay['env_runner_nodes']]}; build {r['build_s']:.1f}s"
    )
    for node in lay["nodes"]:
        shown = {k: v for k, v in node["resources"].items() if not k.startswith("node:")}
        print(f"  node {node['node_id'][:8]}: {shown}")
    if r["iterations"] < 1:
        print("  0 iterations: placement only")
        return
    rllib_s = sum(r["sampling_s_per_iteration"])
    print(
        f"  sampling: {r['sampling_env_steps_per_s']:.0f} env steps/s, "
        f"{r['sampling_agent_steps_per_s']:.0f} agent steps/s ({r['env_steps']:.0f} env steps, "
        f"RLlib's sampling timer {rllib_s:.2f}s; the benchmark's own timer of the same call "
        f"{r['sampling_s_benchmark_timer']:.2f}s)"
    )
    print(
        f"  whole iteration: {r['iteration_env_steps_per_s']:.0f} env steps/s, "
        f"{r['iteration_agent_steps_per_s']:.0f} agent steps/s (iterations "
        f"{' / '.join(f'{w:.2f}' for w in r['iteration_s'])}s; learner "
        f"{' / '.join(f'{s:.2f}' for s in r['learner_s_per_iteration'])}s) {r['load']}"
    )


def _run_layout(
    args: argparse.Namespace, layout: str, cfg: Any, cluster_cfg: Any, factory: Any
) -> tuple[str, str, dict[str, Any]]:
    """One layout ("1": local Ray, "2": loopback or `--address` cluster) measured:
    (results key, printed label, figures)."""
    worker_args = worker_node_args(cfg)
    store = args.object_store_mib * 1024**2 if args.object_store_mib else None
    if layout == "1":
        total_cpus = args.head_cpus + worker_args["num_cpus"]
        with one_node(total_cpus, store) as node:
            r = measure(cfg, factory, args.iterations, node["worker_node"])
        return (
            "one_node",
            f"ONE node (local Ray, {total_cpus} CPUs)",
            {
                "ray": f"local, {total_cpus} CPUs",
                **r,
            },
        )
    if args.address:
        cluster = existing_cluster(args.address)
        what = f"the cluster at {args.address}"
    else:
        cluster = two_node_cluster(args.head_cpus, worker_args, store)
        what = f"loopback cluster: head {args.head_cpus} CPU(s), worker node {worker_args}"
    with cluster as nodes:
        r = measure(cluster_cfg, factory, args.iterations, nodes["worker_nodes"])
    label = (
        f"TWO nodes ({what}); env runners checked on the worker node(s) "
        f"{[n[:8] for n in nodes['worker_nodes']]}"
    )
    pinned = f"custom_resources_per_env_runner {{{WORKER_RESOURCE}: 1}}"
    return "two_nodes", label, {"ray": f"{what} ({pinned})", **nodes, **r}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both layouts in one process, one after the other; the figures as a dict."""
    from rl_trading.training.env_bridge import hierarchical_factory
    from rl_trading.training.session import load_splits

    sets = [*(QUICK_SETS if args.quick else []), *args.set]
    cfg = load_cfg(sets)
    worker_args = worker_node_args(cfg)  # ConfigError before any Ray starts
    cluster_cfg = two_node_cfg(cfg)
    if args.address:  # an unreachable address fails here, in seconds, before anything runs
        from rl_trading.ray_utils import check_address, check_gcs

        check_address(args.address)
        check_gcs(args.address)
    train, val, _ = load_splits(cfg)
    report: dict[str, Any] = {
        "benchmark": "scale_out",
        "machine": {"cpus": os.cpu_count(), "load_start": _load()},
        "config": describe_cfg(cfg),
        "sets": sets,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "head_cpus": args.head_cpus,
        "worker_node_args": worker_args,
        "object_store_mib": args.object_store_mib,
        "agents_per_env_step": len(cfg.data.symbols),
        "results": {},
    }
    print(f"cpus={os.cpu_count()} {_load()} (1/5/15 min)")
    print(f"config (configs/default.yaml + {sets}): {json.dumps(report['config'])}")
    factories = {
        "1": hierarchical_factory(cfg, train, val, source=cfg),
        "2": hierarchical_factory(cluster_cfg, train, val, source=cluster_cfg),
    }
    for rep in range(args.repeats):
        # interleaved, the order alternating per repeat: no layout always runs on a warmer or
        # cooler machine
        order = [n for n in ("1", "2") if n in args.nodes]
        order = order if rep % 2 == 0 else order[::-1]
        print(f"repeat {rep + 1}/{args.repeats} (order: {' then '.join(order)} node(s))")
        for layout in order:
            key, label, r = _run_layout(args, layout, cfg, cluster_cfg, factories[layout])
            report["results"].setdefault(key, []).append(r)
            _print_row(label, r)
    one, two = report["results"].get("one_node"), report["results"].get("two_nodes")
    if one and two and args.iterations > 0:
        ratios = [
            b["sampling_env_steps_per_s"] / a["sampling_env_steps_per_s"]
            for a, b in zip(one, two, strict=True)
        ]
        report["sampling_ratio_two_over_one"] = ratios
        report["sampling_ratio_two_over_one_median"] = statistics.median(ratios)
        print(
            f"sampling throughput two nodes / one node: median {statistics.median(ratios):.2f}, "
            f"per repeat {' / '.join(f'{x:.2f}' for x in ratios)}"
        )
    report["machine"]["load_end"] = _load()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, write the JSON; exit 1 when the env runners were not where they belong."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (0: placement)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats per layout (2; --quick 1)"
    )
    parser.add_argument("--nodes", default="1,2", help="layouts to run: 1, 2 or 1,2")
    parser.add_argument("--head-cpus", type=int, default=1, help="CPUs of the head node")
    parser.add_argument(
        "--object-store-mib", type=int, default=512, help="object store per node, both layouts"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="two-node row on this running cluster (worker nodes offer worker_node) instead of "
        "the loopback one",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/scale_out.json"))
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batch, 2 envs")
    args = parser.parse_args(argv)
    args.nodes = {n.strip() for n in args.nodes.split(",") if n.strip()}
    if not args.nodes or args.nodes - {"1", "2"} or min(args.iterations, args.head_cpus) < 0:
        parser.error("--nodes takes 1, 2 or 1,2; --iterations and --head-cpus are >= 0")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.repeats < 1:
        parser.error("--repeats is >= 1")

    from rl_trading.errors import RLTradingError

    try:
        report = run(args)
    except RLTradingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PlacementError as exc:
        print(f"PLACEMENT FAILED: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"figures written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
