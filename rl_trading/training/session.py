"""One training invocation: data, Ray, run directory, then the requested phases (CLI + API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl_trading.config import AppConfig
from rl_trading.errors import CheckpointError
from rl_trading.training.env_bridge import EnvFactory, hierarchical_factory
from rl_trading.training.runner import PhaseResult, ProgressFn, run_phase
from rl_trading.training.state import STATE_FILE


def load_splits(cfg: AppConfig) -> tuple[dict, dict, str]:
    """(train bars, validation bars, data fingerprint) from the configured source."""
    from rl_trading.data import fingerprint, split_by_time
    from rl_trading.supervised.signals import observed_market

    bars = observed_market(cfg)
    d = cfg.data
    splits = split_by_time(bars, d.train_frac, d.val_frac, d.embargo_bars)
    return splits.train, splits.val, fingerprint(bars)


def find_run_dir(cfg: AppConfig, run_dir: str | Path | None, resume: bool) -> Path:
    """The run directory (absolute, so checkpoint paths stay valid from any cwd): given, else
    the newest with a state file (resume), else a new one."""
    if run_dir is not None:
        return Path(run_dir).resolve()
    if resume:
        parent = cfg.resolved_run_dir().parent
        candidates = sorted(parent.glob(f"*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise CheckpointError(f"--resume: no run with {STATE_FILE} under {parent}")
        return candidates[-1].parent.resolve()
    return cfg.resolved_run_dir().resolve()


def train(
    cfg: AppConfig,
    phases: tuple[int, ...] = (1, 2, 3),
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    from_checkpoint: str | Path | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    progress: ProgressFn | None = None,
    factory: EnvFactory | None = None,
    stop: Any = None,
    quiet_workers: bool = True,
) -> tuple[Path, dict[str, PhaseResult]]:
    """Run `phases` in order in one run dir; `from_checkpoint` seeds the first of them."""
    from rl_trading.data import synthetic_symbols
    from rl_trading.ray_utils import check_env_runner_cpus, init_ray, resolve_address

    run_dir = find_run_dir(cfg, run_dir, resume)
    tags: dict[str, str] = {}
    if factory is None:
        train_bars, val_bars, fp = load_splits(cfg)
        factory = hierarchical_factory(cfg, train_bars, val_bars)
        tags["data_fingerprint"] = fp
        tags["synthetic_symbols"] = ",".join(synthetic_symbols(train_bars)) or "none"
    if tracking:  # an unreachable MLflow server fails here, before Ray starts or work begins
        from rl_trading.tracking import check_tracking, resolve_tracking_uri

        check_tracking(resolve_tracking_uri(tracking_uri or cfg.tracking.tracking_uri))
    addr = address or cfg.resources.address
    local = resolve_address(addr) is None
    quiet = {"log_to_driver": not quiet_workers} if local else {}
    cluster = init_ray(addr, num_cpus=cfg.resources.num_cpus, **quiet)
    if local:  # a cluster may add nodes; a local Ray cannot
        res = cfg.resources
        check_env_runner_cpus(res.num_env_runners, res.num_cpus_per_env_runner, cluster)
    run_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for i, num in enumerate(phases):
        init = from_checkpoint if i == 0 else None
        results[f"phase{num}"] = run_phase(
            cfg,
            num,
            factory,
            run_dir,
            resume=resume,
            init_checkpoint=init,
            progress=progress,
            tracking=tracking,
            tracking_uri=tracking_uri,
            tags=tags,
            stop=stop,
        )
    return run_dir, results
