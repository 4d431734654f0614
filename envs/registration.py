"""The RLlib-facing environments and the plain-data `env_config` they are built from.

RLlib gets an importable env *class* (:class:`HierarchicalRLlibEnv`, ``config -> env``), so a
checkpoint re-creates its env in any process that can import the project, without a
name registered at run time: ``Algorithm.from_checkpoint(path)`` works in a fresh process.

`make_env_config` packs what an env runner needs into picklable plain data: the config as a
dict, the fitted feature scalers as dicts, the mode and flags, and the bars (OHLCV, any `sig_*`
columns and align's `filled` marks). With a data
reference (`data_reference`: the source config, the time range and a fingerprint) the bars are
*not* carried: they are kept in a per-process cache keyed by fingerprint, and a process that
lacks them (a remote env runner, a restore) reloads them through the data layer and verifies
the fingerprint (one-line DataError when they differ). Without one (bars made in memory), the
bars travel inline as numpy arrays (about 40 bytes per bar and instrument), and so do their
checkpoints. The hierarchical env is wrapped in RLlib's ParallelPettingZooEnv with
``meta_obs_every_step=False`` by default, so with meta_interval k > 1 the meta only appears on
the steps where it acts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

from envs.hierarchical_env import HierarchicalTradingEnv
from envs.trading_env import TradingEnv
from rl_trading.config import AppConfig
from rl_trading.data.features import FeatureScaler, signal_columns
from rl_trading.data.loader import load_market
from rl_trading.data.resample import FILLED_COLUMN
from rl_trading.data.store import default_db_url
from rl_trading.errors import DataError
from rl_trading.tracking import redact

__all__ = [
    "HIERARCHICAL_ENV_NAME",
    "SINGLE_ENV_NAME",
    "HierarchicalRLlibEnv",
    "bars_fingerprint",
    "bars_from_config",
    "data_reference",
    "env_creator",
    "load_reference",
    "redact_db_url",
    "safe_config",
    "make_env_config",
    "make_hierarchical_env",
    "register_envs",
    "single_env_creator",
]

HIERARCHICAL_ENV_NAME = "rl_trading_hierarchical_v0"
SINGLE_ENV_NAME = "rl_trading_single_v0"
_COLUMNS = ["open", "high", "low", "close", "volume"]
# fingerprint -> bars of this process (the driver's training data, or bars a worker reloaded)
_BARS_CACHE: dict[str, dict[str, pd.DataFrame]] = {}
_BARS_CACHE_MAX = 8
# cfg -> {symbol: bars the agents observe}; the training layer's adds signal columns
MarketLoader = Callable[[AppConfig], dict[str, pd.DataFrame]]


def _pack_bars(frame: pd.DataFrame) -> dict[str, Any]:
    index = pd.DatetimeIndex(frame.index)
    tz = str(index.tz) if index.tz is not None else None
    columns = _COLUMNS + signal_columns(frame)
    if FILLED_COLUMN in frame.columns:  # forward-filled bars (no fills there): 1.0 / 0.0
        columns.append(FILLED_COLUMN)
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
    frame = pd.DataFrame(np.asarray(packed["values"]), index=index, columns=columns)
    if FILLED_COLUMN in frame.columns:
        frame[FILLED_COLUMN] = frame[FILLED_COLUMN].to_numpy() != 0.0
    return frame


def bars_fingerprint(frames: Mapping[str, pd.DataFrame]) -> str:
    """sha256 of the bars exactly as an env sees them (symbols, index, tz, every column)."""
    digest = hashlib.sha256()
    for sym in sorted(frames):
        packed = _pack_bars(frames[sym])
        digest.update(f"{sym}|{packed['tz']}|{','.join(packed['columns'])}|".encode())
        digest.update(packed["index"].tobytes())
        digest.update(packed["values"].tobytes())
    return digest.hexdigest()


def safe_config(cfg: AppConfig) -> dict[str, Any]:
    """The config as JSON data with a credential in `data.db_url` redacted (it is pickled into
    checkpoints, see `redact_db_url`); a redacted URL is taken from RL_TRADING_DB_URL on reload."""

    raw = cfg.model_dump(mode="json")
    url = raw.get("data", {}).get("db_url")
    if url:
        raw["data"]["db_url"] = redact_db_url(url)
    return raw


def redact_db_url(url: str) -> str:
    """A database URL safe to store: `${VAR}` references kept (they expand again on reload),
    a literal password (whatever characters it holds) and secret query values as `***`; the one
    parser is `rl_trading.tracking.redact`."""
    return redact(url)


def data_reference(source_cfg: AppConfig, frames: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """Where `frames` come from: `observed_market(source_cfg)` (files, SQL table, bundled sample
    or synthetic parameters, plus the signal settings) cut to their time range, and their
    fingerprint. Plain data, a few KB whatever the number of bars."""
    first = next(iter(frames.values()))
    index = pd.DatetimeIndex(first.index)
    data = source_cfg.data
    update: dict[str, Any] = {
        "paths": {s: os.path.abspath(os.path.expanduser(p)) for s, p in data.paths.items()}
    }
    if data.source == "sql" and not data.db_url:  # the workspace's DB, whatever the cwd later
        update["db_url"] = default_db_url()
    cfg = source_cfg.model_copy(update={"data": data.model_copy(update=update)})
    return {
        "cfg": safe_config(cfg),
        "symbols": [str(s) for s in frames],
        "start": int(index[0].value),
        "end": int(index[-1].value),
        "n_bars": len(index),
        "fingerprint": bars_fingerprint(frames),
    }


def describe_reference(ref: Mapping[str, Any]) -> str:
    """One line naming a data reference's source (credentials redacted)."""
    data = ref.get("cfg", {}).get("data", {})
    source = data.get("source", "?")
    where = {
        "sql": f"table {data.get('table')} at {redact(str(data.get('db_url') or 'default DB'))}",
        "files": ", ".join(sorted((data.get("paths") or {}).values())),
        "sample": "bundled sample",
        "synthetic": f"synthetic seed {data.get('synthetic', {}).get('seed')}",
    }.get(source, f"{source} source")
    return f"{','.join(ref.get('symbols', []))} {data.get('timeframe', '')} from {where}"


def load_reference(
    ref: Mapping[str, Any], observe: MarketLoader | None = None
) -> dict[str, pd.DataFrame]:
    """Reload the bars of a data reference through the data layer; DataError unless they match
    its fingerprint (changed files, table or settings are never silently substituted).

    `observe(cfg)` loads the bars the agents observe (default `data.load_market`): the training
    layer hands in the one that adds the supervised signal columns, so the envs never import
    the supervised stage (see `make_env_config`)."""
    raw = dict(ref["cfg"])
    url = (raw.get("data") or {}).get("db_url")
    if url and "***" in url:
        env_url = os.environ.get("RL_TRADING_DB_URL")
        if not env_url:
            raise DataError(
                f"the training data's database URL is redacted ({url}): set RL_TRADING_DB_URL"
            )
        raw["data"] = {**raw["data"], "db_url": env_url}
    cfg = AppConfig.model_validate(raw)
    market = (observe or load_market)(cfg)
    lo, hi = pd.Timestamp(int(ref["start"]), tz="UTC"), pd.Timestamp(int(ref["end"]), tz="UTC")
    frames = {}
    for sym in ref["symbols"]:
        if sym not in market:
            raise DataError(f"training data: no bars for {sym} in {describe_reference(ref)}")
        frame = market[sym]
        index = pd.DatetimeIndex(frame.index)
        stamps = index.tz_convert("UTC") if index.tz is not None else index.tz_localize("UTC")
        frames[sym] = frame[(stamps >= lo) & (stamps <= hi)]
    got = bars_fingerprint(frames)
    if got != ref["fingerprint"]:
        raise DataError(
            f"training data changed: {describe_reference(ref)} has fingerprint {got[:12]}, "
            f"the checkpoint was trained on {str(ref['fingerprint'])[:12]}"
        )
    return frames


def _cache_bars(fp: str, frames: Mapping[str, pd.DataFrame]) -> None:
    """Keep `frames` for this process, as the envs see inline bars (OHLCV + signals, float64)."""
    if fp in _BARS_CACHE:
        return
    if len(_BARS_CACHE) >= _BARS_CACHE_MAX:
        _BARS_CACHE.pop(next(iter(_BARS_CACHE)))
    _BARS_CACHE[fp] = {sym: _unpack_bars(_pack_bars(f)) for sym, f in frames.items()}


def make_env_config(
    cfg: AppConfig,
    bars: Mapping[str, pd.DataFrame] | pd.DataFrame,
    mode: str = "joint",
    eval_mode: bool = False,
    scalers: Mapping[str, FeatureScaler] | None = None,
    meta_obs_every_step: bool = False,
    seed: int | None = None,
    data_ref: Mapping[str, Any] | None = None,
    observe: MarketLoader | None = None,
) -> dict[str, Any]:
    """Plain, picklable env_config for RLlib (`.environment(env=HierarchicalRLlibEnv, ...)`).

    `bars` is a dict of aligned frames (or one frame, stored under "bars"); `scalers` are the
    training split's fitted scalers, so validation / test envs normalise like training. With
    `data_ref` (see `data_reference`, made for exactly these bars) the bars stay out of the
    env_config (cached in this process, reloaded elsewhere); without, they travel inline.
    `observe` (a module-level function, pickled by reference) is how a process that reloads
    the bars rebuilds what the agents observe from the reference (`load_reference`).
    """
    frames = {"bars": bars} if isinstance(bars, pd.DataFrame) else dict(bars)
    out: dict[str, Any] = {
        "cfg": safe_config(cfg),
        "mode": mode,
        "eval_mode": bool(eval_mode),
        "scalers": {str(s): sc.to_dict() for s, sc in (scalers or {}).items()},
        "meta_obs_every_step": bool(meta_obs_every_step),
        "seed": cfg.seed if seed is None else int(seed),
    }
    if data_ref is not None:
        if list(data_ref["symbols"]) != [str(s) for s in frames]:
            raise DataError(
                f"data reference symbols {list(data_ref['symbols'])} != bars {list(frames)}"
            )
        _cache_bars(str(data_ref["fingerprint"]), frames)
        out["data_ref"] = dict(data_ref)
        if observe is not None:
            out["observe"] = observe
    else:
        out["bars"] = {str(sym): _pack_bars(frame) for sym, frame in frames.items()}
    return out


def bars_from_config(env_config: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """The bars of an env_config as DataFrames keyed by symbol: carried inline, else from this
    process's cache, else reloaded (and verified) through the data reference."""
    if env_config.get("bars") is not None:
        return {sym: _unpack_bars(p) for sym, p in env_config["bars"].items()}
    ref = env_config.get("data_ref")
    if not ref:
        raise DataError("env_config carries neither bars nor a data reference")
    fp = str(ref["fingerprint"])
    if fp not in _BARS_CACHE:
        _cache_bars(fp, load_reference(ref, env_config.get("observe")))
    return dict(_BARS_CACHE[fp])


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


class HierarchicalRLlibEnv(ParallelPettingZooEnv):
    """RLlib's view of the hierarchical env, built from an env_config alone (`config -> env`):
    pass the class to `config.environment(env=...)` and every process (env runners, a fresh
    `Algorithm.from_checkpoint`) can re-create it by importing this module.

    Agents are listed in the env's own order: the stock wrapper lists them in `set` order, which
    changes with PYTHONHASHSEED and makes sampling / batching order (and so training) differ
    between processes with the same seed.
    """

    def __init__(self, config: Mapping[str, Any] | None = None):
        par_env = make_hierarchical_env(config or {})
        super().__init__(par_env)
        order = list(getattr(par_env, "possible_agents", None) or par_env.agents)
        self.agents = list(par_env.agents or order)
        self.possible_agents = list(order)


def env_creator(env_config: Mapping[str, Any]) -> Any:
    """RLlib creator (registered name): the same env as :class:`HierarchicalRLlibEnv`."""
    return HierarchicalRLlibEnv(env_config)


def single_env_creator(env_config: Mapping[str, Any]) -> Any:
    """RLlib creator of the single-instrument TradingEnv (symbol `env_config["symbol"]` or the
    first one carried)."""
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
    from ray.tune.registry import register_env  # heavy: ray

    register_env(HIERARCHICAL_ENV_NAME, env_creator)
    register_env(SINGLE_ENV_NAME, single_env_creator)
    return HIERARCHICAL_ENV_NAME, SINGLE_ENV_NAME
