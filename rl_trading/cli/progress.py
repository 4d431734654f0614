"""Rich progress display for training phases, shared by `train ...` and `demo`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rl_trading.cli import logs

_NOISY = ("ray", "ray.rllib", "ray.tune", "ray.train", "ray.data", "mlflow", "alembic")


def quiet_libraries() -> None:
    """Keep Ray's, MLflow's and Alembic's info and warning chatter off the terminal (our own
    progress and tables say what happens); RL_TRADING_DEBUG=1 or --verbose keeps everything.
    Under the CLI their output already goes to the library log (`cli/logs.py`), which keeps
    their warnings."""
    if logs.verbose_requested() or logs.routed():
        return
    # both configure their loggers when first imported: import first, then set the levels
    import mlflow  # noqa: F401
    import ray  # noqa: F401

    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def phase_progress(console: Console) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress callback for `rl_trading.training.session.train`: one bar per phase with
    iteration, env steps, mean reward, validation Sharpe, elapsed time and ETA."""
    quiet_libraries()
    tasks: dict[str, Any] = {}
    # RLlib reports NaN for an iteration in which no episode finished (long episodes, many
    # vectorised envs): show the last finished episodes' mean reward instead
    last_reward: dict[str, float] = {}

    def describe(info: dict[str, Any]) -> str:
        name = info["phase"]
        val = info.get("val_sharpe")
        reward = info.get("episode_return_mean", float("nan"))
        if reward == reward:  # not NaN
            last_reward[name] = reward
        reward = last_reward.get(name, reward)
        shown = f"{reward:.3f}" if reward == reward else "n/a"  # no episode done yet
        text = f"steps {info.get('env_steps', 0):,.0f}  reward {shown}"
        # NaN until the first validation (the runner carries the last one forward)
        return text + (f"  val_sharpe {val:.2f}" if val is not None and val == val else "")

    if not console.is_terminal:
        # redirected (CI logs, `> log`): no live bar; one plain line when a phase starts, at
        # each validation and when it ends
        started: set[str] = set()

        def lines(info: dict[str, Any]) -> None:
            name, it, total = info["phase"], info["iteration"], info["total"]
            text = describe(info)
            first = name not in started
            started.add(name)
            if first or info.get("val_sharpe") is not None or it >= total:
                console.print(f"{name} it {it:.0f}/{total:.0f}  {text}", highlight=False)

        yield lines
        return

    with Progress(
        TextColumn("[bold]{task.fields[phase]}"),
        BarColumn(),
        TextColumn("it {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:

        def progress(info: dict[str, Any]) -> None:
            name = info["phase"]
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=info["total"], phase=name, info="")
            bar.update(tasks[name], completed=info["iteration"], info=describe(info))

        yield progress
