"""The main job (`rl-trading demo`): data -> supervised models -> three RL phases -> registry
-> backtest against baselines, each stage calling the same plain functions as its own command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_trading import ray_utils
from rl_trading.config import AppConfig, save_config
from rl_trading.data import fingerprint, split_by_time, synthetic_symbols
from rl_trading.evaluation.registration import register_policy, register_supervised
from rl_trading.evaluation.report import write_report
from rl_trading.evaluation.selection import select_bars
from rl_trading.evaluation.walk_forward import walk_forward
from rl_trading.supervised.signals import observed_market
from rl_trading.supervised.trainables import train_supervised
from rl_trading.training.state import RunState

StageFn = Callable[[str, dict[str, Any]], None]


@dataclass
class PipelineResult:
    """What one pipeline run produced, for the final report."""

    run_dir: Path
    data: dict[str, Any] = field(default_factory=dict)
    supervised: Any = None
    supervised_models: list[Any] = field(default_factory=list)
    phases: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    backtest: Any = None
    walk_forward: Any = None
    report_paths: dict[str, Path] = field(default_factory=dict)


def run_pipeline(
    cfg: AppConfig,
    *,
    run_dir: str | Path | None = None,
    supervised: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_stage: StageFn | None = None,
    tracking_uri: str | None = None,
) -> PipelineResult:
    """Run the whole hierarchical pipeline on `cfg`; `on_stage(name, info)` reports each stage.

    Stages: data summary, supervised models as Tune trials (registered), RL phases 1-3
    (tracked in MLflow; checkpoints selected on the validation split), registration of the
    phase-3 best checkpoint graded on the untouched test split (DSR deflated for every
    validation pass of the run), and the report of that same test-split backtest next to the
    baselines, with the test split's sub-periods (not retrained) and their intervals.
    """
    from rl_trading.training.session import check_fresh_start, train  # heavy: ray, torch

    if tracking_uri:
        cfg = cfg.model_copy(
            update={"tracking": cfg.tracking.model_copy(update={"tracking_uri": tracking_uri})}
        )

    report = on_stage or (lambda name, info: None)
    out = PipelineResult(run_dir=Path(run_dir or cfg.resolved_run_dir()).resolve())
    # a run dir that already holds a run is refused now, not after the supervised stage
    check_fresh_start(RunState.load(out.run_dir), (1, 2, 3), resume=False, overwrite=False)
    out.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out.run_dir / "config.yaml")

    bars = observed_market(cfg)
    d = cfg.data
    parts = split_by_time(bars, d.train_frac, d.val_frac, d.embargo_bars)
    first = next(iter(bars.values()))
    out.data = {
        "source": d.source,
        "symbols": list(bars),
        "synthetic_symbols": synthetic_symbols(bars),
        "timeframe": d.timeframe,
        "bars": len(first),
        "start": str(first.index[0]),
        "end": str(first.index[-1]),
        "train": len(next(iter(parts.train.values()))),
        "val": len(next(iter(parts.val.values()))),
        "test": len(next(iter(parts.test.values()))),
        "fingerprint": fingerprint(bars),
    }
    report("data", out.data)

    # one Ray for every stage; workers' own logs stay in Ray's log files, not the terminal
    ray_utils.init_ray(cfg.resources.address, num_cpus=cfg.resources.num_cpus, log_to_driver=False)

    if supervised and cfg.supervised.models:
        out.supervised = train_supervised(cfg, run_dir=out.run_dir / "supervised", verbose=0)
        out.supervised_models = register_supervised(out.supervised, cfg)
        report("supervised", {"results": out.supervised, "registered": out.supervised_models})

    _, out.phases = train(cfg, (1, 2, 3), run_dir=out.run_dir, progress=progress)
    report("training", {"phases": out.phases})

    best = out.phases["phase3"].best_checkpoint
    # graded on the test split: the report below is that very backtest (one set of numbers)
    out.model, out.backtest = register_policy(best, cfg, split="test", run_dir=out.run_dir)
    report("registry", {"model": out.model})

    test_bars, train_bars, desc = select_bars(cfg, None, "test")
    out.backtest.meta["bars"] = desc
    out.backtest.meta["model"] = out.model.name
    if d.walk_forward_folds > 1:
        out.walk_forward = walk_forward(
            out.model.name,
            test_bars,
            cfg,
            n_folds=d.walk_forward_folds,
            seeds=list(cfg.evaluation.seeds),
        )
    out.report_paths = write_report(
        out.backtest, out.run_dir / "backtest", cfg, walk=out.walk_forward
    )
    report(
        "backtest", {"result": out.backtest, "walk": out.walk_forward, "paths": out.report_paths}
    )
    return out
