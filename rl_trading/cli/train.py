"""`rl-trading train phase1|phase2|phase3|pipeline`: hierarchical RLlib training."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli.common import ConfigOpt, SetOpt, cli_config, console
from rl_trading.cli.logs import attach_run_dir
from rl_trading.cli.progress import phase_progress
from rl_trading.cli.supervised import supervised
from rl_trading.training.signals import TrainingInterrupted

app = typer.Typer(
    help="Train the hierarchical agents (phases 1-3) with RLlib PPO.", no_args_is_help=True
)

ResumeOpt = Annotated[
    bool,
    typer.Option("--resume", help="Continue the run in --run-dir (or the newest run); must exist."),
]
ResumeOrStartOpt = Annotated[
    bool,
    typer.Option("--resume-or-start", help="Continue the run if there is one, else start it."),
]
RunDirOpt = Annotated[
    Path | None, typer.Option("--run-dir", help="Run directory (state, checkpoints).")
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster host:port, or 'auto' for the one running on this machine "
        "(default: RAY_ADDRESS, else a fresh local Ray).",
    ),
]
TrackingOpt = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI.")]
CnnLstmOpt = Annotated[
    str | None,
    typer.Option(
        "--cnn-lstm-model",
        help="Registered supervised CNN-LSTM (NAME, NAME/VERSION or NAME@ALIAS, e.g. "
        "cnn_lstm_1d) whose conv+LSTM body encodes the specialists' window; frozen unless "
        "--fine-tune-lr (policy.cnn_lstm_model).",
    ),
]
FineTuneOpt = Annotated[
    float | None,
    typer.Option(
        "--fine-tune-lr",
        help="Fine-tune the --cnn-lstm-model encoder at this learning rate in its own optimizer "
        "(stage 3, model type hybrid; policy.encoder_lr).",
    ),
]
DashboardOpt = Annotated[
    bool,
    typer.Option(
        "--dashboard",
        help="Start the Ray dashboard (local Ray: on 127.0.0.1) and print its URL; the phases "
        "are Tune runs under <run-dir>/tune (also: tensorboard --logdir <run-dir>/tune).",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Start afresh in a --run-dir that already holds these phases: the old ones move "
        "to <run-dir>/replaced/<time>/ (nothing is deleted).",
    ),
]
AllowChangeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-config-change",
        help="With --resume: continue with changed settings (the run keeps both configs, "
        "config.before-<time>.yaml, and MLflow records the change).",
    ),
]
FromCkptOpt = Annotated[
    Path | None,
    typer.Option("--from-checkpoint", help="Checkpoint of the previous phase (default: run dir)."),
]


@dataclass(frozen=True)
class PhaseCommand:
    """One `train` phase command: its name, the phases it runs, its help, and whether it takes
    --from-checkpoint (phases 2 and 3 start from the previous phase's checkpoint)."""

    name: str
    phases: tuple[int, ...]
    help: str
    from_checkpoint: bool = False


_SAME_ENCODER = (
    "A run whose specialists use a CNN-LSTM encoder needs the same --cnn-lstm-model here."
)
PHASE_COMMANDS = (
    PhaseCommand(
        "phase1",
        (1,),
        "Phase 1: train the specialists (one per instrument, or one shared) on fixed equal "
        "weights.\n\nWith --cnn-lstm-model the specialists encode their window with a registered "
        "supervised\nCNN-LSTM: frozen (stage 2), or fine-tuned with --fine-tune-lr (stage 3, "
        '"hybrid").',
    ),
    PhaseCommand(
        "phase2",
        (2,),
        "Phase 2: train the meta allocator over the frozen phase-1 specialists.\n\n"
        + _SAME_ENCODER,
        from_checkpoint=True,
    ),
    PhaseCommand(
        "phase3",
        (3,),
        "Phase 3: fine-tune everything jointly (separate specialist / meta learning rates).\n\n"
        + _SAME_ENCODER,
        from_checkpoint=True,
    ),
    PhaseCommand(
        "pipeline",
        (1, 2, 3),
        "Phases 1, 2 and 3 in one run directory (resumable); --cnn-lstm-model as in phase1.",
    ),
)


def add_phase_command(spec: PhaseCommand) -> Callable[..., None]:
    """Register `train <spec.name>` with the one option signature all phase commands share
    (--from-checkpoint only where `spec.from_checkpoint`); returns the command function."""

    def command(
        config: ConfigOpt = None,
        sets: SetOpt = None,
        resume: ResumeOpt = False,
        resume_or_start: ResumeOrStartOpt = False,
        run_dir: RunDirOpt = None,
        address: AddressOpt = None,
        tracking_uri: TrackingOpt = None,
        from_checkpoint: FromCkptOpt = None,
        cnn_lstm_model: CnnLstmOpt = None,
        fine_tune_lr: FineTuneOpt = None,
        dashboard: DashboardOpt = False,
        overwrite: OverwriteOpt = False,
        allow_config_change: AllowChangeOpt = False,
    ) -> None:
        run_phases(
            spec.phases,
            config=config,
            sets=sets,
            resume=resume,
            resume_or_start=resume_or_start,
            run_dir=run_dir,
            address=address,
            tracking_uri=tracking_uri,
            from_checkpoint=from_checkpoint,
            cnn_lstm_model=cnn_lstm_model,
            fine_tune_lr=fine_tune_lr,
            dashboard=dashboard,
            overwrite=overwrite,
            allow_config_change=allow_config_change,
        )

    command.__name__ = command.__qualname__ = spec.name
    command.__doc__ = spec.help
    if not spec.from_checkpoint:
        sig = inspect.signature(command, eval_str=True)  # typer reads the evaluated types
        params = [p for p in sig.parameters.values() if p.name != "from_checkpoint"]
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    app.command(spec.name)(command)
    return command


def run_phases(
    phases: tuple[int, ...],
    *,
    config: Path | None = None,
    sets: list[str] | None = None,
    resume: bool = False,
    resume_or_start: bool = False,
    run_dir: Path | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    from_checkpoint: Path | None = None,
    cnn_lstm_model: str | None = None,
    fine_tune_lr: float | None = None,
    dashboard: bool = False,
    overwrite: bool = False,
    allow_config_change: bool = False,
) -> None:
    """What every phase command does: check the flags, load the config, train, print."""
    from rl_trading.training.session import check_resume_flags, train  # heavy: ray, torch

    check_resume_flags(resume, resume_or_start)
    encoder = {"policy.cnn_lstm_model": cnn_lstm_model, "policy.encoder_lr": fine_tune_lr}
    cfg = cli_config(config, sets, **encoder)
    if cfg.policy.cnn_lstm_model:
        mode = (
            "frozen"
            if cfg.policy.encoder_lr is None
            else f"fine-tuned, lr {cfg.policy.encoder_lr:g}"
        )
        console.print(f"specialist encoder: {cfg.policy.cnn_lstm_model} ({mode})", soft_wrap=True)
    with phase_progress(console) as progress:
        try:
            out_dir, results = train(
                cfg,
                phases,
                run_dir=run_dir,
                resume=resume,
                resume_or_start=resume_or_start,
                from_checkpoint=from_checkpoint,
                address=address,
                tracking_uri=tracking_uri,
                progress=progress,
                notify=console.print,
                dashboard=dashboard,
                overwrite=overwrite,
                allow_config_change=allow_config_change,
            )
        except TrainingInterrupted as stop:
            console.print(f"[yellow]{stop}[/]")
            raise typer.Exit(130) from None
    log = attach_run_dir(out_dir)
    for name, res in results.items():
        sharpe = "n/a" if res.best_val_sharpe is None else f"{res.best_val_sharpe:.3f}"
        console.print(
            f"[green]{name}[/] {res.iterations} iterations, {res.env_steps:,} env steps, "
            f"best val Sharpe {sharpe}, best checkpoint {res.best_checkpoint}"
        )
    console.print(f"run dir: {out_dir}")
    if log is not None:
        console.print(f"library log: {log}", soft_wrap=True)
    best = next(reversed(results.values())).best_checkpoint if results else None
    if best:
        console.print(f"next: rl-trading backtest --checkpoint {best} --split val", soft_wrap=True)
        console.print(f"      rl-trading models register --checkpoint {best}", soft_wrap=True)


for _spec in PHASE_COMMANDS:
    add_phase_command(_spec)


app.command("supervised")(supervised)
