"""One training invocation: checks, run-dir lock, data, Ray, then the requested phases.

Everything that can be checked without Ray is checked first (run dir, state.json, checkpoints,
data, MLflow), each failure a one-line error; the run dir stays locked while phases run.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rl_trading import ray_utils
from rl_trading.artifacts import read_metadata
from rl_trading.config import AppConfig, config_dump, flatten, save_config
from rl_trading.data import fingerprint, split_for_env, synthetic_symbols
from rl_trading.errors import ConfigError, RunDirError
from rl_trading.ray_utils import (
    check_dashboard_available,
    check_env_runner_cpus,
    resolve_address,
)
from rl_trading.supervised.encoder import encoder_lineage, resolve_encoder
from rl_trading.supervised.signals import observed_market
from rl_trading.tracking import check_tracking, resolve_tracking_uri
from rl_trading.training.algo_config import phase_policies
from rl_trading.training.checkpoints import check_checkpoint
from rl_trading.training.env_bridge import EnvFactory, hierarchical_factory
from rl_trading.training.mapping import is_specialist, phase_iterations
from rl_trading.training.phase_spec import PhaseResult, ProgressFn, previous_checkpoint
from rl_trading.training.runner import run_phase
from rl_trading.training.state import STATE_FILE, PhaseState, RunState, run_dir_lock

CONFIG_FILE = "config.yaml"  # in the run dir: the config the run trains with
REPLACED_DIR = "replaced"  # in the run dir: what `--overwrite` moved aside, one folder per time
# Keys a resumed run may change without --allow-config-change: where it runs and logs, and the
# budgets (checked on their own: a larger one extends the run, a smaller one is refused).
RESUME_FREE_KEYS = (
    "run_dir",
    "resources.",
    "tracking.",
    "phases.phase1_timesteps",
    "phases.phase2_timesteps",
    "phases.phase3_timesteps",
    "phases.checkpoint_interval",
)


def load_splits(cfg: AppConfig) -> tuple[dict, dict, str]:
    """(train bars, validation bars, data fingerprint) from the configured source."""
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


def phase_finished(ps: PhaseState | None, cfg: AppConfig | None, num: int) -> bool:
    """A phase that is done and has reached the budget `cfg` gives it (a raised budget makes a
    done phase continue); without `cfg`, done is finished."""
    if ps is None or ps.status != "done":
        return False
    return cfg is None or ps.iteration >= phase_iterations(cfg, num)


def check_resume_flags(resume: bool, resume_or_start: bool) -> None:
    """--resume (the run must exist) and --resume-or-start (it may not) exclude each other."""
    if resume and resume_or_start:
        raise ConfigError(
            "--resume and --resume-or-start exclude each other: --resume needs an existing "
            "run, --resume-or-start starts one when there is none; give one of them"
        )


def started_phases(state: RunState, phases: tuple[int, ...]) -> list[str]:
    """Phases from the first of `phases` on that already hold work in the run dir (a fresh
    start would replace them, and later phases built on them would no longer match)."""
    out = []
    for name in sorted(state.phases):
        ps = state.phases[name]
        later = int(name.removeprefix("phase")) >= phases[0]
        if later and (ps.status != "pending" or ps.iteration or ps.last_checkpoint):
            out.append(name)
    return out


def check_fresh_start(
    state: RunState, phases: tuple[int, ...], resume: bool, overwrite: bool
) -> list[str]:
    """A run without --resume on a run dir that already holds those phases is refused unless
    `overwrite`; returns the phases `overwrite` will move aside."""
    if resume:
        return []
    started = started_phases(state, phases)
    if started and not overwrite:
        done = ", ".join(f"{n} ({state.phases[n].status})" for n in started)
        raise RunDirError(
            f"run dir {state.run_dir} already holds {done}: continue it with --resume, use "
            "another --run-dir, or --overwrite to move the old run aside"
        )
    return started


def move_aside(run_dir: Path, names: list[str]) -> Path | None:
    """Move phases `names` (their folders, Tune folders, state and the config) into
    `<run_dir>/replaced/<UTC time>/` and drop them from state.json: nothing is deleted, and the
    moved folder resumes as a run dir of its own. None when there was nothing to move."""
    if not names:
        return None
    run_dir = Path(run_dir)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")
    dest = run_dir / REPLACED_DIR / stamp
    dest.mkdir(parents=True)
    for name in names:
        for rel in (Path(name), Path("tune") / name):
            if (run_dir / rel).exists():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(run_dir / rel), str(dest / rel))
    for file in (STATE_FILE, CONFIG_FILE):
        if (run_dir / file).is_file():
            shutil.copy2(run_dir / file, dest / file)
    for before in run_dir.glob("config.before-*.yaml"):  # that run's config history
        shutil.move(str(before), str(dest / before.name))
    state = RunState.load(run_dir)
    for name in names:
        state.phases.pop(name, None)
    state.save()
    return dest


def check_budgets(
    cfg: AppConfig,
    state: RunState,
    phases: tuple[int, ...],
    resume: bool,
    notify: Callable[[str], None] | None = None,
) -> None:
    """On resume, each phase's budget (`phases.phaseN_timesteps`) against what it has trained:
    below it is refused (ConfigError), above it extends the phase (said through `notify`)."""
    if not resume:
        return
    for num in phases:
        name = f"phase{num}"
        ps = state.phases.get(name)
        if ps is None or ps.status == "pending":
            continue
        total = phase_iterations(cfg, num)
        trained = ps.checkpoint_iteration if ps.last_checkpoint else 0
        too_small = total < trained if ps.status == "done" else total <= trained and trained > 0
        if too_small:
            need = (trained + (ps.status != "done")) * cfg.ppo.train_batch_size
            raise ConfigError(
                f"--resume: {name} has trained {trained} iteration(s) already, its budget "
                f"phases.{name}_timesteps={getattr(cfg.phases, f'{name}_timesteps')} gives "
                f"{total}; set it to at least {need} to continue, or start a new run"
            )
        later = started_phases(state, (num + 1,))
        if ps.status == "done" and total > trained and later:
            raise ConfigError(
                f"--resume: a larger budget would continue {name}, but {', '.join(later)} "
                f"already trained on its earlier weights; keep phases.{name}_timesteps, or "
                "train the larger budget in a new --run-dir"
            )
        if total > ps.total_iterations and notify is not None:
            notify(
                f"{name}: budget raised from {ps.total_iterations} to {total} iterations; "
                f"continuing from iteration {trained}"
            )


def config_changes(run_dir: Path, cfg: AppConfig) -> list[str]:
    """`key: old -> new` for every setting of `cfg` that differs from the config the run in
    `run_dir` was trained with (`config.yaml`), except `RESUME_FREE_KEYS`."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return []
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunDirError(f"{path} is corrupt ({exc.__class__.__name__})") from None
    if not isinstance(saved, dict):
        raise RunDirError(f"{path} is corrupt (not a mapping of sections)")
    old, new = flatten(saved), flatten(config_dump(cfg))
    defaults = flatten(config_dump(AppConfig()))
    missing = object()
    out = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUME_FREE_KEYS):
            continue
        before, after = old.get(key, missing), new.get(key, missing)
        if key == "data.periods_per_year" and after is None:
            continue  # pinned when the run started; this run pins it again the same way
        if before is missing and after == defaults.get(key, missing):
            continue  # a key newer than the saved config, at its default
        if before != after:
            show = [("(unset)" if v is missing else repr(v)) for v in (before, after)]
            out.append(f"{key}: {show[0]} -> {show[1]}")
    return out


def check_config_change(
    run_dir: Path,
    cfg: AppConfig,
    resume: bool,
    allow: bool,
    notify: Callable[[str], None] | None = None,
) -> list[str]:
    """On resume, a changed setting is refused (ConfigError) unless `allow`; returns the
    changes (empty when none, or not resuming)."""
    if not resume:
        return []
    changes = config_changes(run_dir, cfg)
    if changes and not allow:
        shown = "; ".join(changes[:3]) + (
            f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
        )
        raise ConfigError(
            f"--resume: the config differs from the one {run_dir} was trained with ({shown}); "
            "resume with the same settings, or pass --allow-config-change to record both"
        )
    if changes and notify is not None:
        notify(
            f"--allow-config-change: resuming with {len(changes)} change(s): " + "; ".join(changes)
        )
    return changes


def record_config(run_dir: Path, cfg: AppConfig, changed: bool) -> Path:
    """Write the config the run trains with as `config.yaml`; after a change the previous one
    is kept as `config.before-<UTC time>.yaml` (both go to MLflow with the phase)."""
    path = Path(run_dir) / CONFIG_FILE
    if changed and path.is_file():
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        path.rename(path.with_name(f"config.before-{stamp}.yaml"))
    return save_config(cfg, path)


def check_phase_inputs(
    state: RunState,
    phases: tuple[int, ...],
    resume: bool,
    from_checkpoint: str | Path | None,
    cfg: AppConfig | None = None,
) -> None:
    """Before any expensive work: the first phase's starting checkpoint exists and is one."""
    if from_checkpoint is not None:
        check_checkpoint(from_checkpoint)
    first = phases[0]
    own = state.phases.get(f"phase{first}") if resume else None
    if phase_finished(own, cfg, first):
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
    cfg: AppConfig | None = None,
) -> None:
    """ConfigError unless the checkpoint the first phase resumes or starts from was trained
    with the CNN-LSTM encoder the config asks for (`want`: `encoder_lineage`, None: none).

    Another encoder (or none) cannot take those weights; a resumed phase also keeps its mode
    (its optimizers are restored). A new phase may switch frozen <-> fine-tuned.
    """
    first = phases[0]
    own = state.phases.get(f"phase{first}") if resume else None
    if phase_finished(own, cfg, first):
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
    overwrite: bool = False,
    allow_config_change: bool = False,
) -> tuple[Path, dict[str, PhaseResult]]:
    """Run `phases` in order in one run dir; `from_checkpoint` seeds the first of them.

    Each phase is a one-trial Tune experiment in `<run_dir>/tune/phaseN` (see `run_phase`).
    `resume_or_start` resumes a run when there is one, else starts it; `notify` gets one-line
    messages (which Ray cluster is used; with `dashboard`, the Ray dashboard's URL: a local Ray
    starts it on 127.0.0.1).

    Without a resume flag, a run dir that already holds these phases is refused unless
    `overwrite` (the old phases move to `<run_dir>/replaced/`). A resume refuses a changed
    setting unless `allow_config_change` (both configs are kept) and a budget below what is
    trained; a larger budget extends the phases.
    """
    check_resume_flags(resume, resume_or_start)
    resume = resume or resume_or_start
    if dashboard and resolve_address(address or cfg.resources.address) is None:
        check_dashboard_available()  # a local dashboard needs Ray's extras: say so before work
    run_dir = find_run_dir(cfg, run_dir, resume, resume_or_start)
    early = RunState.load(run_dir)
    check_fresh_start(early, phases, resume, overwrite)
    check_budgets(cfg, early, phases, resume)
    continuing = resume and any(f"phase{n}" in early.phases for n in phases)
    check_config_change(run_dir, cfg, continuing, allow_config_change)
    check_phase_inputs(early, phases, resume, from_checkpoint, cfg)
    encoder = None
    if factory is None and cfg.policy.cnn_lstm_model:  # registry, sha256, preprocessing
        encoder = resolve_encoder(cfg, tracking_uri)
    if factory is None:
        want = encoder_lineage(encoder, cfg.policy.encoder_lr) if encoder else None
        check_encoder_continuity(RunState.load(run_dir), phases, resume, from_checkpoint, want, cfg)
    with run_dir_lock(run_dir):
        state = RunState.load(run_dir)  # again: another run may have changed it meanwhile
        replace = check_fresh_start(state, phases, resume, overwrite)
        check_budgets(cfg, state, phases, resume, notify)
        resuming = resume and any(f"phase{n}" in state.phases for n in phases)
        changes = check_config_change(run_dir, cfg, resuming, allow_config_change, notify)
        check_phase_inputs(state, phases, resume, from_checkpoint, cfg)
        tags: dict[str, str] = {}
        if changes:
            tags["config_changed_on_resume"] = "; ".join(changes)[:4900]
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
            check_tracking(resolve_tracking_uri(tracking_uri or cfg.tracking.tracking_uri))
        addr = address or cfg.resources.address
        local = resolve_address(addr) is None
        res = cfg.resources
        if local:  # a local Ray gets these CPUs: too few for the env runners is refused now
            have = {"CPU": float(res.num_cpus or os.cpu_count() or 1)}
            check_env_runner_cpus(res.num_env_runners, res.num_cpus_per_env_runner, have)
        # last, once every check has passed: nothing saved is touched by a refused run
        moved = move_aside(run_dir, replace)
        if moved is not None and notify is not None:
            notify(f"--overwrite: the earlier {', '.join(replace)} moved to {moved}")
        record_config(run_dir, cfg, changed=bool(changes))
        quiet = {"log_to_driver": not quiet_workers} if local else {}
        cluster = ray_utils.init_ray(
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
