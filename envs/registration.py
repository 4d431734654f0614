"""RLlib registration of the environments and the plain-data `env_config` they are built from.

`make_env_config` packs everything an env runner needs into picklable plain data: the config
as a dict, each instrument's bars as numpy arrays (int64 ns timestamps + float64 OHLCV, about
40 bytes per bar and instrument: 8 instruments x 20,000 bars ~ 6.4 MB), the fitted feature
scalers as dicts, the mode and flags. `env_creator` rebuilds the env from it. The hierarchical
env is wrapped in RLlib's ParallelPettingZooEnv with ``meta_obs_every_step=False`` by default,
so with meta_interval k > 1 the meta only appears on the steps where it acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from rl_trading.config import AppConfig
from rl_trading.data.features import FeatureScaler, signal_columns

__all__ = [
    "HIERARCHICAL_ENV_NAME",
    "SINGLE_ENV_NAME",
    "bars_from_config",
    "env_creator",
    "make_env_config",
    "make_hierarchical_env",
    "register_envs",
    "single_env_creator",
]

HIERARCHICAL_ENV_NAME = "rl_trading_hierarchical_v0"
SINGLE_ENV_NAME = "rl_trading_single_v0"
_COLUMNS = ["open", "high", "low", "close", "volume"]


def _pack_bars(frame: pd.DataFrame) -> dict[str, Any]:
    index = pd.DatetimeIndex(frame.index)
    tz = str(index.tz) if index.tz is not None else None
    columns = _COLUMNS + signal_columns(frame)
    return {
        "index": index.as_unit("ns").asi8.copy(),
        "tz": tz,
        "columns": columns,
        "values": np.ascontiguousarray(frame[columns].to_numpy(dtype=np.float64)),
    }


def _unpack_bars(packed: Mapping[str, Any]) -> pd.DataFrame:
    index = pd.DatetimeIndex(np.asarray(packed["index"], dtype="int64").view("M8[ns]"))
    if packed.get("tz"):
        index = index.tz_localize("UTC").tz_convert(packed["tz"])
    index = index.rename("timestamp")
    columns = list(packed.get("columns") or _COLUMNS)
    return pd.DataFrame(np.asarray(packed["values"]), index=index, columns=columns)


def make_env_config(
    cfg: AppConfig,
    bars: Mapping[str, pd.DataFrame] | pd.DataFrame,
    mode: str = "joint",
    eval_mode: bool = False,
    scalers: Mapping[str, FeatureScaler] | None = None,
    meta_obs_every_step: bool = False,
    seed: int | None = None,
) -> dict[str, Any]:
    """Plain, picklable env_config for RLlib (`.environment(env=NAME, env_config=...)`).

    `bars` is a dict of aligned frames (or one frame, stored under "bars"); `scalers` are the
    training split's fitted scalers, so validation / test envs normalise like training.
    """
    frames = {"bars": bars} if isinstance(bars, pd.DataFrame) else dict(bars)
    return {
        "cfg": cfg.model_dump(mode="json"),
        "bars": {str(sym): _pack_bars(frame) for sym, frame in frames.items()},
        "mode": mode,
        "eval_mode": bool(eval_mode),
        "scalers": {str(s): sc.to_dict() for s, sc in (scalers or {}).items()},
        "meta_obs_every_step": bool(meta_obs_every_step),
        "seed": cfg.seed if seed is None else int(seed),
    }


def bars_from_config(env_config: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """The bars carried by an env_config, as DataFrames keyed by symbol."""
    return {sym: _unpack_bars(p) for sym, p in env_config["bars"].items()}


def _common(env_config: Mapping[str, Any]) -> tuple[AppConfig, dict, dict, int | None]:
    cfg = AppConfig.model_validate(env_config.get("cfg") or {})
    bars = bars_from_config(env_config)
    scalers = {s: FeatureScaler.from_dict(d) for s, d in (env_config.get("scalers") or {}).items()}
    seed = env_config.get("seed")
    if seed is not None:
        # distinct but reproducible streams per env runner / vector slot
        worker = int(getattr(env_config, "worker_index", 0) or 0)
        vector = int(getattr(env_config, "vector_index", 0) or 0)
        seed = int(seed) + 1000 * worker + vector
    return cfg, bars, scalers, seed


def make_hierarchical_env(env_config: Mapping[str, Any]) -> Any:
    """The bare PettingZoo HierarchicalTradingEnv described by `env_config`."""
    from envs.hierarchical_env import HierarchicalTradingEnv

    cfg, bars, scalers, seed = _common(env_config)
    return HierarchicalTradingEnv(
        cfg,
        bars=bars,
        mode=env_config.get("mode", "joint"),
        eval_mode=bool(env_config.get("eval_mode", False)),
        seed=seed,
        scalers=scalers or None,
        meta_obs_every_step=bool(env_config.get("meta_obs_every_step", False)),
    )


def _ordered_pettingzoo(par_env: Any) -> Any:
    """RLlib's ParallelPettingZooEnv with the agents in the env's own order.

    The stock wrapper lists agents in `set` order, which changes with PYTHONHASHSEED and makes
    sampling / batching order (and so training) differ between processes with the same seed.
    """
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    env = ParallelPettingZooEnv(par_env)
    order = list(getattr(par_env, "possible_agents", None) or par_env.agents)
    env.agents = list(par_env.agents or order)
    env.possible_agents = list(order)
    return env


def env_creator(env_config: Mapping[str, Any]) -> Any:
    """RLlib creator: ParallelPettingZooEnv(HierarchicalTradingEnv(...)) from `env_config`,
    agents in a fixed order (see `_ordered_pettingzoo`)."""
    return _ordered_pettingzoo(make_hierarchical_env(env_config))


def single_env_creator(env_config: Mapping[str, Any]) -> Any:
    """RLlib creator of the single-instrument TradingEnv (symbol `env_config["symbol"]` or the
    first one carried)."""
    from envs.trading_env import TradingEnv

    cfg, bars, scalers, seed = _common(env_config)
    symbol = env_config.get("symbol") or next(iter(bars))
    return TradingEnv(
        cfg,
        bars=bars[symbol],
        eval_mode=bool(env_config.get("eval_mode", False)),
        seed=seed,
        scaler=scalers.get(symbol),
    )


def register_envs() -> tuple[str, str]:
    """Register both envs with Ray Tune's registry (idempotent); returns their names."""
    from ray.tune.registry import register_env

    register_env(HIERARCHICAL_ENV_NAME, env_creator)
    register_env(SINGLE_ENV_NAME, single_env_creator)
    return HIERARCHICAL_ENV_NAME, SINGLE_ENV_NAME
