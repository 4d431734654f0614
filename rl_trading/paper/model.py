"""The one place a paper session turns `--model NAME` into a policy and its config.

It calls the same registry / backtest loading API as `rl-trading backtest --model`
(`ModelRegistry.load_training_config` for the stored training config, then
`evaluation.backtest.load_policy` for the verified modules and their preprocessing), so a
change of registry naming is followed here by re-pointing this one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_trading.config import AppConfig, load_config
from rl_trading.errors import CheckpointError
from rl_trading.evaluation.backtest import PolicyBundle, load_policy, pin_calendar


@dataclass
class ResolvedModel:
    """A policy ready to trade: its modules, stored preprocessing and the config to run with."""

    name: str
    bundle: PolicyBundle
    cfg: AppConfig

    @property
    def symbols(self) -> list[str]:
        """The instruments the policy was trained on (its stored preprocessing, else config)."""
        stored = self.bundle.preprocessing.get("symbols")
        return [str(s) for s in (stored or self.cfg.data.symbols)]

    @property
    def timeframe(self) -> str:
        return str(self.bundle.preprocessing.get("timeframe") or self.cfg.data.timeframe)


def resolve_model(
    name: str, config: Path | None = None, sets: list[str] | None = None
) -> ResolvedModel:
    """Load a registered model (or a checkpoint path) with its stored training config
    (`-c` replaces it, `--set` goes on top), as `backtest --model` does. RegistryError (one
    line) for an unknown name; CheckpointError for a policy the paper loop cannot run."""
    base = load_config(config, sets or [])
    cfg = base
    if config is None:
        stored: dict[str, Any] | None
        if Path(name).expanduser().exists():
            from rl_trading.training.checkpoints import stored_config

            stored = stored_config(name)
        else:
            from rl_trading.registry import ModelRegistry

            stored = ModelRegistry(cfg=base).load_training_config(name)
        if stored:
            stored = dict(stored)
            stored["tracking"] = base.model_dump(mode="json")["tracking"]
            stored["paper"] = base.model_dump(mode="json")["paper"]
            cfg = load_config(None, sets or [], extra=stored)
    bundle = load_policy(name, cfg)
    if not bundle.hierarchical:
        raise CheckpointError(
            f"model '{name}' is a single-instrument policy; paper trading runs hierarchical "
            "policies (specialists + meta)"
        )
    cfg, _ = pin_calendar(cfg, bundle.preprocessing)  # bars per year as its backtest has them
    return ResolvedModel(name=bundle.source or name, bundle=bundle, cfg=cfg)
