"""One training invocation: checks, run-dir lock, data, Ray, then the requested phases.

Everything that can be checked without Ray is checked first (run dir, state.json, checkpoints,
data, MLflow), each failure a one-line error; the run dir stays locked while phases run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rl_trading.config import AppConfig
from rl_trading.errors import ConfigError, RunDirError
from rl_trading.training.env_bridge import EnvFactory, hierarchical_factory
from rl_trading.training.runner import PhaseResult, ProgressFn, previous_checkpoint, run_phase
from rl_trading.training.state import STATE_FILE, RunState, run_dir_lock


def load_splits(cfg: AppConfig) -> tuple[dict, dict, str]:
    """(train bars, validation bars, data fingerprint) from the configured source."""
    from rl_trading.data import fingerprint, split_for_env
    from rl_trading.supervised.signals import observed_market

    bars = observed_market(cfg)
    splits = split_for_env(bars, cfg)  # validation keeps its first bars (causal history)
    return splits.train, splits.val, fingerprint(bars)


def pin_periods_per_year(cfg: AppConfig, factory: EnvFactory) -> AppConfig:
    """`cfg` with the factory's resolved bars per year (one annualisation for the whole run)."""
    if cfg.data.periods_per_year is not None or factory.periods_per_year is None:
        return cfg
    out = cfg.model_copy(deep=True)
    out.data.periods_per_year = float(factory.periods_per_year)
    return out


def find_run_dir(
    cfg: AppConfig, run_dir: str | Path | None, resume: bool, resume_or_start: bool = False
) -> Path:
    """The run directory (absolute): given, else the newest with a state file (resume), else a
    new one. `resume` needs a run to resume (RunDirError otherwise) unless `resume_or_start`."""
    if run_dir is not None:
        path = Path(run_dir).expanduser().resolve()
        if resume and not resume_or_start and not RunState.load(path).phases:
            what = "does not exist" if not path.exists() else f"has no {STATE_FILE} (no run)"
            raise RunDirError(
                f"--resume: run dir {path} {what}; start it without --resume, "
                "or use --resume-or-start"
            )
        return path
    if resume:
        parent = cfg.resolved_run_dir().parent
        candidates = sorted(parent.glob(f"*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
        if candidates:
            return candidates[-1].parent.resolve()
        if not resume_or_start:
            raise RunDirError(f"--resume: no run with {STATE_FILE} under {parent}")
    return cfg.resolved_run_dir().resolve()


def check_phase_inputs(
    state: RunState,
    phases: tuple[int, ...],
    resume: bool,
    from_checkpoint: str | Path | None,
) -> None:
    """Before any expensive work: the first phase's starting checkpoint exists and is one."""
    from rl_trading.training.checkpoints import check_checkpoint

    if from_checkpoint is not None:
        check_checkpoint(from_checkpoint)
    first = phases[0]
    own = state.phases.get(f"phase{first}") if resume else None
    if own is not None and own.status == "done":
        return
    if own is not None and own.last_checkpoint:
        check_checkpoint(own.last_checkpoint)
    elif first > 1 and from_checkpoint is None:
        check_checkpoint(previous_checkpoint(state.run_dir, first))


def check_encoder_continuity(
    state: RunState,
    phases: tuple[int, ...],
    resume: bool,
    from_checkpoint: str | Path | None,
    want: dict[str, Any] | None,
) -> None:
    """ConfigError unless the checkpoint the first phase resumes or starts from was trained
    with the CNN-LSTM encoder the config asks for (`want`: `encoder_lineage`, None: none).

    Another encoder (or none) cannot take those weights; a resumed phase also keeps its mode
    (its optimizers are restored). A new phase may switch frozen <-> fine-tuned.
    """
    from rl_trading.training.checkpoints import read_metadata

    first = phases[0]
    own = state.phases.get(f"phase{first}") if resume else None
    if own is not None and own.status == "done":
        return
    if own is not None and own.last_checkpoint:
        ckpt, same_phase = Path(own.last_checkpoint), True
    elif from_checkpoint is not None:
        ckpt, same_phase = Path(from_checkpoint), False
    elif first > 1:
        ckpt, same_phase = Path(previous_checkpoint(state.run_dir, first)), False
    else:
        return
    have = read_metadata(ckpt).get("encoder")
    if not have and not want:
        return

    def said(enc: dict[str, Any] | None) -> str:
        return f"--cnn-lstm-model {enc['name']} ({enc['mode']})" if enc else "no CNN-LSTM encoder"

    differs = not have or not want or have.get("sha256") != want.get("sha256")
    if same_phase and not differs:
        differs = (have.get("mode"), have.get("encoder_lr")) != (
            want.get("mode"),
            want.get("encoder_lr"),
        )
    if differs:
        raise ConfigError(
            f"{ckpt} was trained with {said(have)}, this run asks for {said(want)}; "
            "pass the same --cnn-lstm-model / --fine-tune-lr (policy.cnn_lstm_model, encoder_lr)"
        )


def check_checkpoint_policies(
    factory: EnvFactory, phase: int, checkpoint: str | Path | None
) -> None:
    """The checkpoint a phase starts from holds every policy the phase loads from it."""
    if checkpoint is None:
        return
    from rl_trading.training.algo_config import phase_policies
    from rl_trading.training.checkpoints import check_checkpoint
    from rl_trading.training.mapping import is_specialist

    pids, _ = phase_policies(factory, phase)
    for pid in [p for p in pids if is_specialist(p)] if phase == 2 else pids:
        check_checkpoint(checkpoint, pid)


def train(
    cfg: AppConfig,
    phases: tuple[int, ...] = (1, 2, 3),
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    resume_or_start: bool = False,
    from_checkpoint: str | Path | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    progress: ProgressFn | None = None,
    factory: EnvFactory | None = None,
    stop: Any = None,
    quiet_workers: bool = True,
    notify: Callable[[str], None] | None = None,
    dashboard: bool = False,
) -> tuple[Path, dict[str, PhaseResult]]:
    """Run `phases` in order in one run dir; `from_checkpoint` seeds the first of them.

    Each phase is a one-trial Tune experiment in `<run_dir>/tune/phaseN` (see `run_phase`).
    `resume_or_start` resumes a run when there is one, else starts it; `notify` gets one-line
    messages (which Ray cluster is used; with `dashboard`, the Ray dashboard's URL: a local Ray
    starts it on 127.0.0.1).
    """
    from rl_trading.data import synthetic_symbols
    from rl_trading.ray_utils import check_env_runner_cpus, init_ray, resolve_address

    resume = resume or resume_or_start
    if dashboard and resolve_address(address or cfg.resources.address) is None:
        from rl_trading.ray_utils import check_dashboard_available

        check_dashboard_available()  # a local dashboard needs Ray's extras: say so before work
    run_dir = find_run_dir(cfg, run_dir, resume, resume_or_start)
    check_phase_inputs(RunState.load(run_dir), phases, resume, from_checkpoint)
    encoder = None
    if factory is None and cfg.policy.cnn_lstm_model:  # registry, sha256, preprocessing
        from rl_trading.supervised.encoder import resolve_encoder

        encoder = resolve_encoder(cfg, tracking_uri)
    if factory is None:
        from rl_trading.supervised.encoder import encoder_lineage

        want = encoder_lineage(encoder, cfg.policy.encoder_lr) if encoder else None
        check_encoder_continuity(RunState.load(run_dir), phases, resume, from_checkpoint, want)
    with run_dir_lock(run_dir):
        state = RunState.load(run_dir)  # again: another run may have changed it meanwhile
        check_phase_inputs(state, phases, resume, from_checkpoint)
        tags: dict[str, str] = {}
        if factory is None:
            train_bars, val_bars, fp = load_splits(cfg)
            factory = hierarchical_factory(  # data by reference
                cfg, train_bars, val_bars, source=cfg, encoder=encoder
            )
            tags["data_fingerprint"] = fp
            tags["synthetic_symbols"] = ",".join(synthetic_symbols(train_bars)) or "none"
        cfg = pin_periods_per_year(cfg, factory)
        check_checkpoint_policies(factory, phases[0], from_checkpoint)
        if tracking:  # an unreachable MLflow server fails here, before Ray starts or work begins
            from rl_trading.tracking import check_tracking, resolve_tracking_uri

            check_tracking(resolve_tracking_uri(tracking_uri or cfg.tracking.tracking_uri))
        addr = address or cfg.resources.address
        local = resolve_address(addr) is None
        quiet = {"log_to_driver": not quiet_workers} if local else {}
        cluster = init_ray(
            addr, num_cpus=cfg.resources.num_cpus, notify=notify, dashboard=dashboard, **quiet
        )
        res = cfg.resources
        if local:  # a cluster may add nodes; a local Ray cannot
            check_env_runner_cpus(res.num_env_runners, res.num_cpus_per_env_runner, cluster)
        if notify is not None:
            notify(
                f"training: {res.num_env_runners} env runner(s) x "
                f"{res.num_cpus_per_env_runner:g} CPU beside the trial's own process "
                f"(Ray has {float(cluster.get('CPU', 0.0)):g} CPUs)"
            )
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
