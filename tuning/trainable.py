"""The Tune class trainable that PBT drives: one RL phase, its validation and its objective.

`PhaseTrainable` wraps any :class:`PhaseRunner` (an RLlib Algorithm plus its validation, see
:class:`RLlibRunner`) so that EVERY iteration reports the objective metric (PBT needs it to rank
trials), the hyperparameters in effect (`hp/<name>`, for the lineage plot) and the learning rate
the learners really use. `reset_config` rebuilds the runner with the new hyperparameters, so
`reuse_actors=True` saves the actor start-up on every exploit.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ray import tune

from rl_trading.config import AppConfig
from rl_trading.rllib_adapter import reapply_config_lr

logger = logging.getLogger(__name__)

# Hyperparameters PBT mutates: trial-config key -> field of `cfg.ppo` (RLlib spells it `lambda`).
HPARAM_FIELDS: dict[str, str] = {
    "lr": "lr",
    "gamma": "gamma",
    "clip_param": "clip_param",
    "lambda": "gae_lambda",
    "entropy_coeff": "entropy_coeff",
}
STATE_FILE = "pbt_trainable_state.json"


class PhaseRunner(Protocol):
    """What the trainable needs from one phase: train, validate, save, restore, stop."""

    def train(self) -> Mapping[str, Any]:
        """Run one training iteration; return the (nested) RLlib result dict."""

    def validate(self) -> Mapping[str, float]:
        """Validation metrics (e.g. `val_sharpe`) of the current policies; may be empty."""

    def save(self, path: str) -> None:
        """Write the full training state (weights, optimizers, connectors) under `path`."""

    def restore(self, path: str) -> None:
        """Load the state written by `save` into this runner (keeps its own hyperparameters)."""

    def stop(self) -> None:
        """Release the runner's resources."""


# (hyperparameters, seed) -> runner. Must be picklable (it travels in Ray's object store).
RunnerFactory = Callable[[Mapping[str, float], int], PhaseRunner]


class RLlibRunner:
    """A built RLlib Algorithm plus an optional validation function, as a `PhaseRunner`."""

    def __init__(
        self,
        algo_config: Any,
        validate_fn: Callable[[Any], Mapping[str, float]] | None = None,
    ) -> None:
        self.algo = algo_config.build_algo()
        self._validate_fn = validate_fn

    def train(self) -> Mapping[str, Any]:
        """One `algo.train()` iteration."""
        return self.algo.train()

    def validate(self) -> Mapping[str, float]:
        """Run the validation function on the algorithm (empty when there is none)."""
        return dict(self._validate_fn(self.algo)) if self._validate_fn else {}

    def save(self, path: str) -> None:
        """`algo.save_to_path(path)`."""
        self.algo.save_to_path(path)

    def restore(self, path: str) -> None:
        """`algo.restore_from_path(path)`, then re-apply this runner's learning rates.

        The checkpoint carries the optimizer state of the trial it came from (with that trial's
        lr); the config of this runner is the explored one, so its lr must win at once.
        """
        self.algo.restore_from_path(path)
        self.algo.learner_group.foreach_learner(reapply_config_lr)

    def stop(self) -> None:
        """`algo.stop()` (its empty log folder removed)."""
        from rl_trading.training.algo_config import release_algorithm  # heavy: ray, torch

        release_algorithm(self.algo)


def flatten_result(result: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested RLlib result into `a/b/c` keys (numbers only)."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_result(value, name + "/"))
        elif isinstance(value, bool | int | float) and not isinstance(value, bool):
            out[name] = value
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            out[name] = value.item()
    return out


def summarize_result(result: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers worth reporting per iteration from an RLlib new-stack result.

    `episode_return_mean`, `policy_return/<module>` (mean episode return of each module),
    `lr/<module>` (the learning rate its optimizer really used) and the sampled timesteps.
    """
    flat = flatten_result(result)
    out: dict[str, float] = {}
    for key, value in flat.items():
        if key == "env_runners/episode_return_mean":
            out["episode_return_mean"] = float(value)
        elif key.startswith("env_runners/module_episode_returns_mean/"):
            out["policy_return/" + key.rsplit("/", 1)[1]] = float(value)
        elif key.startswith("learners/") and key.endswith(
            ("default_optimizer_lr", "default_optimizer_learning_rate")
        ):
            out["lr/" + key.split("/")[1]] = float(value)
        elif key in (
            "env_runners/num_env_steps_sampled_lifetime",
            "num_env_steps_sampled_lifetime",
        ):
            out["env_steps"] = float(value)
    return out


def trial_index(trial_name: str) -> int:
    """Index of a trial in its experiment from Tune's `<name>_<id>_<NNNNN>` trial name."""
    match = re.search(r"_(\d+)$", trial_name or "")
    return int(match.group(1)) if match else 0


class PhaseTrainable(tune.Trainable):
    """Tune class trainable for one RL phase; reports the objective every iteration.

    Trial config: the PBT hyperparameters (`lr, gamma, clip_param, lambda, entropy_coeff`),
    `seed` and `metric`. Setup kwargs (via `tune.with_parameters`): `runner_factory`.
    """

    def setup(self, config: dict[str, Any], runner_factory: RunnerFactory | None = None) -> None:
        """Build the runner for this trial's hyperparameters and seed."""
        if runner_factory is None:
            raise ValueError("PhaseTrainable needs a runner_factory (use tune.with_parameters)")
        self._factory = runner_factory
        self._metric = str(config.get("metric", "val_sharpe"))
        self._seed = int(config.get("seed", 0)) + trial_index(self.trial_name)
        self._last: dict[str, float] = {}
        self._runner: PhaseRunner = self._build(config)

    def _build(self, config: Mapping[str, Any]) -> PhaseRunner:
        """The runner for `config`; RLlib Algorithms built meanwhile log under the trial folder
        (not an empty `~/ray_results/<timestamp>`)."""
        from rl_trading.training.algo_config import algo_logdir  # heavy: ray, torch

        with algo_logdir(self.logdir):
            return self._factory(self.hparams(config), self._seed)

    @staticmethod
    def hparams(config: Mapping[str, Any]) -> dict[str, float]:
        """The mutated hyperparameters present in a trial config."""
        return {k: float(config[k]) for k in HPARAM_FIELDS if k in config}

    def step(self) -> dict[str, Any]:
        """One training iteration + validation; the objective is always in the result.

        A runner with its own `step()` (a whole phase iteration, e.g.
        `rl_trading.training.runner.PhaseLoop`: validation every `eval_interval`, checkpoints,
        state.json, MLflow) reports its metrics as they are; before its first validation the
        objective is NaN.
        """
        loop_step = getattr(self._runner, "step", None)
        if callable(loop_step):
            metrics = dict(loop_step())
        else:
            raw = self._runner.train()
            metrics = summarize_result(raw)
            metrics.update({k: float(v) for k, v in self._runner.validate().items()})
        # Episode-based metrics are missing in an iteration where no episode ended: carry the
        # last value forward so the objective is present in every result.
        for key, value in self._last.items():
            metrics.setdefault(key, value)
        if self._metric not in metrics:
            if callable(loop_step) or self._metric.startswith(("policy_return/", "episode_return")):
                metrics[self._metric] = math.nan  # not measured yet; PBT skips NaN
            else:
                raise KeyError(
                    f"objective '{self._metric}' not reported; available: {sorted(metrics)}"
                )
        self._last = {k: v for k, v in metrics.items() if isinstance(v, float)}
        metrics.update({f"hp/{k}": v for k, v in self.hparams(self.config).items()})
        metrics["trial_seed"] = self._seed
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Full runner state plus the carried-forward metrics."""
        self._runner.save(checkpoint_dir)
        Path(checkpoint_dir, STATE_FILE).write_text(json.dumps({"last": self._last}))

    def load_checkpoint(self, checkpoint: str | dict | None) -> None:
        """Restore a checkpoint (possibly another trial's, after a PBT exploit)."""
        if not isinstance(checkpoint, str):
            raise TypeError(f"expected a checkpoint directory, got {type(checkpoint)}")
        self._runner.restore(checkpoint)
        state_file = os.path.join(checkpoint, STATE_FILE)
        if os.path.exists(state_file):
            self._last = json.loads(Path(state_file).read_text()).get("last", {})

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Rebuild the runner with the explored hyperparameters (actor reused, not restarted)."""
        self._runner.stop()
        self._metric = str(new_config.get("metric", self._metric))
        self._seed = int(new_config.get("seed", 0)) + trial_index(self.trial_name)
        self._last = {}
        self._runner = self._build(new_config)
        self.config = new_config
        return True

    def cleanup(self) -> None:
        """Stop the runner when the trial ends."""
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.stop()


def ppo_overrides(hparams: Mapping[str, float]) -> dict[str, float]:
    """Trial hyperparameters as `cfg.ppo` field names (`lambda` -> `gae_lambda`)."""
    return {HPARAM_FIELDS[k]: float(v) for k, v in hparams.items() if k in HPARAM_FIELDS}


def apply_hparams(cfg: AppConfig, hparams: Mapping[str, float]) -> AppConfig:
    """A copy of `cfg` whose `ppo` section carries the trial's hyperparameters."""
    ppo = cfg.ppo.model_copy(update=ppo_overrides(hparams))
    return cfg.model_copy(update={"ppo": ppo})
