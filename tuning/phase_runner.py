"""The RLlib phase of the hierarchy as a PBT runner: `build_phase_config` + driver validation.

`PhaseRunnerFactory(cfg, phase, train_bars, val_bars, init_checkpoint)` is the default
`runner_factory` of :func:`tuning.pbt.run_pbt`. Each trial gets the phase's PPO config with its
own hyperparameters, zero remote env runners (one trial = one CPU) and, for phases 2 and 3, the
policies of `init_checkpoint` (phase 2: the specialists, then frozen; phase 3: all policies).
Every iteration ends with a deterministic validation episode, so `val_sharpe` is always there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rl_trading.config import AppConfig
from rl_trading.errors import ConfigError
from rl_trading.training.checkpoints import restore_policies
from rl_trading.training.env_bridge import hierarchical_factory
from rl_trading.training.mapping import PHASE_MODES, is_specialist
from tuning.trainable import RLlibRunner, apply_hparams


def phase_config_for_trial(
    cfg: AppConfig, phase: int, hparams: Mapping[str, float], seed: int
) -> AppConfig:
    """`cfg` with the trial's hyperparameters, seed and in-trial resources applied.

    The mutated `lr` is the learning rate of the policies the phase trains: `ppo.lr` in
    phase 1, `phases.meta_lr` in phase 2, and in phase 3 `meta_lr` with `specialist_lr`
    scaled by the same factor (their configured ratio is kept). Likewise `gamma` / `lambda`
    in phase 2 set `phases.meta_gamma` / `meta_gae_lambda` when those are pinned (phase 2
    trains with them instead of `ppo.gamma` / `gae_lambda`, so the mutation would do nothing).
    """
    tuned = apply_hparams(cfg, hparams)
    phases = tuned.phases
    update: dict[str, float] = {}
    if "lr" in hparams and phase in (2, 3):
        lr = float(hparams["lr"])
        update["meta_lr"] = lr
        if phase == 3:
            update["specialist_lr"] = phases.specialist_lr * lr / phases.meta_lr
    if phase == 2:
        for key, field in (("gamma", "meta_gamma"), ("lambda", "meta_gae_lambda")):
            if key in hparams and getattr(phases, field) is not None:
                update[field] = float(hparams[key])
    if update:
        phases = phases.model_copy(update=update)
    resources = tuned.resources.model_copy(update={"num_env_runners": 0, "num_learners": 0})
    return tuned.model_copy(update={"phases": phases, "resources": resources, "seed": seed})


class PhaseRunnerFactory:
    """Picklable `(hparams, seed) -> RLlibRunner` for one phase on the given bars."""

    def __init__(
        self,
        cfg: AppConfig,
        phase: int,
        train_bars: Mapping[str, Any],
        val_bars: Mapping[str, Any],
        init_checkpoint: str | None = None,
    ) -> None:
        if phase in (2, 3) and not init_checkpoint:
            prev = "phase-1" if phase == 2 else "phase-2"
            raise ConfigError(f"PBT of phase {phase} needs the {prev} checkpoint to start from")
        self.cfg = cfg
        self.phase = phase
        self.train_bars = dict(train_bars)
        self.val_bars = dict(val_bars)
        self.init_checkpoint = init_checkpoint

    def __call__(self, hparams: Mapping[str, float], seed: int) -> RLlibRunner:
        """Build the phase's algorithm for these hyperparameters, restore the start policies."""
        # heavy: ray, torch
        from rl_trading.training.algo_config import build_phase_config, phase_policies

        # heavy: ray, torch
        from rl_trading.training.runner import driver_modules, sync_driver_modules
        from rl_trading.training.validation import validate  # heavy: ray, torch

        cfg = phase_config_for_trial(self.cfg, self.phase, hparams, seed)
        factory = hierarchical_factory(cfg, self.train_bars, self.val_bars)
        modules = driver_modules(cfg, factory, self.phase)
        mode = PHASE_MODES[self.phase]
        val_seed = self.cfg.seed  # same validation episode for every trial: comparable scores

        def validate_fn(algo: Any) -> dict[str, float]:
            sync_driver_modules(algo, modules)
            return validate(factory, mode, modules, seed=val_seed)

        runner = RLlibRunner(build_phase_config(cfg, self.phase, factory), validate_fn)
        if self.init_checkpoint:
            pids, _ = phase_policies(factory, self.phase)
            to_load = [p for p in pids if is_specialist(p)] if self.phase == 2 else pids
            restore_policies(runner.algo, self.init_checkpoint, to_load)
        return runner
