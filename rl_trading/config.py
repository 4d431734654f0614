"""The one typed configuration schema, loaded from ``configs/*.yaml`` with dotted CLI overrides.

Every section is a strict pydantic model: an unknown key or a value of the wrong type raises
:class:`~rl_trading.errors.ConfigError` naming the dotted key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rl_trading import metrics
from rl_trading.artifacts import MOVED_KEYS
from rl_trading.errors import ConfigError, DataError
from rl_trading.tracking import redact

DEFAULT_SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "WTIUSD", "SPX500", "NAS100", "US30"]
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Test / CI switch: `RL_TRADING_FAST_PATHS=0` runs everything on stock RLlib classes (it sets
# `resources.rllib_fast_paths` over the config files; an explicit `--set` still wins).
FAST_PATHS_ENV = "RL_TRADING_FAST_PATHS"


# One symbol pattern for file names, SQLite and PostgreSQL: letters, digits and . _ - = ^
# (e.g. 9988.HK, BRK-B, ES=F, ^GSPC), starting with a letter, digit or ^, at most 32
# characters: no path separators, nothing empty, nothing that escapes a folder.
SYMBOL_MAX_LEN = 32
SYMBOL_RE = re.compile(rf"[A-Za-z0-9^][A-Za-z0-9._=^\-]{{0,{SYMBOL_MAX_LEN - 1}}}")


def check_symbol(symbol: object) -> str:
    """`symbol` if it matches the one symbol pattern (`SYMBOL_RE`), else DataError."""
    text = str(symbol)
    if not SYMBOL_RE.fullmatch(text):
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise DataError(
            f"invalid symbol {shown!r}: use 1-{SYMBOL_MAX_LEN} letters, digits or . _ - = ^ "
            "(starting with a letter, digit or ^; no path separators)"
        )
    return text


def zone(tz: str) -> ZoneInfo:
    """The IANA time zone `tz` (e.g. America/New_York), or DataError."""
    try:
        return ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise DataError(
            f"unknown time zone '{tz}' (use an IANA name, e.g. America/New_York)"
        ) from None


def fast_paths_from_env() -> bool | None:
    """`RL_TRADING_FAST_PATHS` as a bool (1/0, true/false), None when unset; ConfigError else."""
    raw = os.environ.get(FAST_PATHS_ENV, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{FAST_PATHS_ENV}={raw!r}: expected 1 (fast paths) or 0 (stock RLlib)")


def _fast_paths_default() -> bool:
    env = fast_paths_from_env()
    return True if env is None else env


_NUMBERS = (int, float, int | None, float | None)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and
    no float is inf or nan (`--set ppo.lr=inf` would otherwise train on nonsense)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """A bool for a number field is an error, not 1 or 0 (`seed: true` is a typo)."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if field.annotation in _NUMBERS and isinstance(data.get(name), bool):
                    raise ValueError(f"{name}: expected a number, got {data[name]}")
        return data


class SyntheticConfig(Section):
    """Seeded synthetic market (GBM with volatility regimes), used where no real file exists."""

    n_bars: int = Field(20_000, gt=0)
    seed: int = 7
    start: str = "2024-01-01 00:00:00+00:00"
    correlation: float = Field(0.3, ge=-1.0, le=1.0)
    regimes: bool = True
    annual_vol: float = Field(0.15, gt=0)
    # Strength of the planted, learnable signal (0 = none); used by learning tests.
    signal_strength: float = Field(0.0, ge=0.0)


class DataConfig(Section):
    """Where bars come from, how instruments are aligned and how time is split."""

    # synthetic: seeded synthetic bars for every symbol (the built-in default, said out loud);
    # auto: files from `paths`; a symbol without one is an error unless `synthetic_fallback`.
    source: Literal["auto", "files", "sql", "synthetic", "sample"] = "synthetic"
    symbols: list[str] = Field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    paths: dict[str, str] = Field(default_factory=dict)
    # Opt-in: seeded synthetic bars for symbols without data (auto: no file; sql: no rows).
    synthetic_fallback: bool = False
    timeframe: str = "1m"
    tz: str | None = None  # IANA zone of naive / fixed-offset exchange-local file timestamps
    max_price: float = Field(1e9, gt=0)  # validation ceiling: higher prices are refused
    db_url: str | None = None  # SQLAlchemy URL; None -> embedded SQLite in the workspace
    table: str = "historical_bars"
    gap_policy: Literal["ffill", "drop", "inner"] = "ffill"
    max_ffill_bars: int = Field(5, ge=0)
    train_frac: float = Field(0.7, gt=0, lt=1)
    val_frac: float = Field(0.15, gt=0, lt=1)
    embargo_bars: int = Field(50, ge=0)
    walk_forward_folds: int = Field(4, ge=1)
    # Annualisation calendar: auto measures bars per year from the training bars' timestamps;
    # crypto 365 x 24 h, fx 260 x 24 h, equity 252 x 6.5 h (rl_trading.metrics).
    calendar: Literal["auto", "crypto", "fx", "equity"] = "auto"
    # Bars per year used by every metric of a run; null: resolved from `calendar` when the
    # run starts (resolve_calendar), a number overrides the calendar.
    periods_per_year: float | None = Field(None, gt=0)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @model_validator(mode="after")
    def _check_names(self) -> DataConfig:
        """Symbols and `paths` keys match the one symbol pattern; every path key is a symbol
        (exact case); `tz` is a known zone. Checked at load time, before anything starts."""
        try:
            for symbol in [*self.symbols, *self.paths]:
                check_symbol(symbol)
            if self.tz is not None:
                zone(self.tz)
        except DataError as exc:
            raise ValueError(str(exc)) from None
        dupes = sorted({s for s in self.symbols if self.symbols.count(s) > 1})
        if dupes:
            raise ValueError(
                f"data.symbols lists {', '.join(dupes)} more than once (each symbol once)"
            )
        if self.paths and self.source in ("synthetic", "sample", "sql"):
            raise ValueError(
                f"data.paths is set but data.source is '{self.source}', which ignores it "
                "(use data.source=auto or files to read the files)"
            )
        unknown = [k for k in self.paths if k not in self.symbols]
        if unknown:
            hints = []
            for key in unknown:
                same = [s for s in self.symbols if s.lower() == key.lower()]
                hints.append(f"{key!r} (did you mean {same[0]!r}?)" if same else repr(key))
            raise ValueError(
                f"data.paths has key(s) that are not in data.symbols: {', '.join(hints)}"
            )
        return self


def _refuse_moved(section: str, data: Any) -> Any:
    """ValueError naming the key that does the job when `data` holds a moved or never-read key
    of `section` (artifacts.MOVED_KEYS): accepting it would silently change nothing."""
    if isinstance(data, dict):
        for (sec, old), new in MOVED_KEYS.items():
            if sec != section or old not in data:
                continue
            if new is None:
                raise ValueError(
                    f"{section}.{old} is not supported (nothing reads it): remove it; MLflow "
                    "keeps artifacts at the tracking store's default location"
                )
            raise ValueError(f"{section}.{old} is now {new} (one key per concept)")
    return data


class TrainingConfig(Section):
    """Reference-design training knobs (single-instrument env, supervised NN, parallelism)."""

    num_epochs: int = Field(100, gt=0)
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(3e-4, gt=0, validation_alias=AliasChoices("learning_rate", "lr"))
    window_size: int = Field(20, gt=0)
    experiment_name: str = "trading_bot"

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """One key per concept: capital and fee are the env's, gamma the PPO's ..."""
        return _refuse_moved("train", data)

    @model_validator(mode="before")
    @classmethod
    def _lr_alias_wins(cls, data: Any) -> Any:
        """`train.lr` (e.g. from --set) replaces a `learning_rate` already in the YAML."""
        if isinstance(data, dict) and "lr" in data:
            data = {k: v for k, v in data.items() if k != "learning_rate"}
            data["learning_rate"] = data.pop("lr")
        return data


class EnvironmentConfig(Section):
    """Execution, cost and risk model shared by the single and hierarchical environments."""

    episode_length: int = Field(1000, gt=0)
    initial_capital: float = Field(100_000.0, gt=0)
    # Costs are fractions of the traded notional (bps: 1e-4): each below 10% per trade.
    transaction_cost: float = Field(0.003, ge=0, lt=0.1)
    slippage_bps: float = Field(1.0, ge=0, lt=1000)
    spread_bps: float = Field(0.0, ge=0, lt=1000)
    # Fraction of equity one instrument's position may take (no leverage: at most 1; leverage
    # comes from vol_target with vol_target_max_leverage).
    max_position_size: float = Field(0.1, gt=0, le=1)
    stop_loss_pct: float = Field(0.02, ge=0)
    # Yearly borrow fee of short positions in bps of their notional, charged every bar
    # (envs/execution.py); 0 = free shorting.
    borrow_bps_per_year: float = Field(0.0, ge=0)
    max_portfolio_var: float = Field(0.02, gt=0)
    var_confidence: float = Field(0.95, gt=0, lt=1)
    risk_window: int = Field(60, gt=1)
    max_correlation_exposure: float = Field(0.7, gt=0)
    max_sector_allocation: float | None = Field(0.4, gt=0)
    sectors: dict[str, str] = Field(default_factory=dict)
    action_type: Literal["continuous", "discrete"] = "continuous"
    allow_short: bool = True
    meta_interval: int = Field(1, ge=1)
    random_start: bool = True
    # Options for issue 14's benchmark (hierarchical env; default off = today's behaviour):
    # specialist rewards on the executed position's P&L in risk units instead of the proposal;
    specialist_reward: Literal["proposal", "executed"] = "proposal"
    # volatility-targeted sizing: a proposal of 1 at full meta weight means this annualised
    # volatility of the instrument's position (fraction of equity), instead of
    # max_position_size of equity; the position is capped at vol_target_max_leverage x equity.
    vol_target: float | None = Field(None, gt=0)
    vol_target_max_leverage: float = Field(1.0, gt=0)
    # Horizon of the volatility that sizes positions under vol_target, in years of bars
    # (x periods per year; at least risk_window bars, fewer at a block's start): the same
    # time on every bar size (0.25: 63 daily bars, 4,380 30-minute crypto bars). null: the
    # last risk_window bars (60 bars: a quarter on daily bars, an hour on minute bars, where
    # the size swings with the intraday volatility and re-trades at every swing). The risk
    # limits (VaR, correlation) keep risk_window.
    vol_horizon_years: float | None = Field(None, gt=0, le=10)
    # No-trade band (both envs): an instrument is re-traded only when its target exposure
    # differs from the exposure it holds at the close (as prices moved it) by more than this
    # fraction of its full position size, or when the target is flat (exits always fill).
    # 0 = rebalance to the target every bar.
    rebalance_band: float = Field(0.0, ge=0, lt=1)
    # Benchmark-relative agents (hierarchical env): the specialists' proposals and the meta's
    # weights become active tilts around a benchmark portfolio, so the neutral action holds
    # the benchmark, not cash; rewards are active returns (reward.tracking_error_weight).
    # equal_weight: 1/n of equity per instrument; vol_target: 1/n of each instrument's
    # vol-targeted full size (needs env.vol_target); buy_and_hold: 1/n of equity bought at the
    # env's first tradable bar and left to drift (the benchmark never trades; the book holding
    # it re-trades its small drift from the benchmark's weights unless env.rebalance_band > 0,
    # as default.yaml's 0.2); none: absolute positions.
    benchmark: Literal["none", "equal_weight", "vol_target", "buy_and_hold"] = "none"
    # What the sector and correlation limits cap in benchmark-relative mode: the whole book
    # (the benchmark's own positions included), or only the active weights around the
    # benchmark (over- and underweights alike: cutting an underweight buys toward the
    # benchmark), so that the neutral action holds the benchmark whole. VaR caps the book.
    # Needs env.benchmark (without one there are no active weights).
    risk_limits: Literal["book", "active"] = "book"
    # The active-risk budget of benchmark-relative mode: a tilt is this fraction of meta
    # weight x proposal x full size (1: a full-weight proposal of 1 adds a full position). The
    # tilts are what the agents learn; a smaller budget keeps unskilled tilts, and the costs
    # of trading them, small next to the benchmark they tilt. Needs env.benchmark.
    active_scale: float = Field(1.0, gt=0, le=1)
    # Cross-sectional observations (hierarchical env): each specialist also sees its features
    # minus the mean of all instruments' features at the same bar (data.features
    # .cross_sectional), so it can tell "my market moved" from "every market moved".
    cross_sectional: bool = False
    # Trend observations (hierarchical env): each specialist also sees, for each k here, the
    # sum of its last k one-bar returns over their volatility x sqrt(k), a t-statistic of the
    # drift clipped to +-5 (data.features.trend_strength): momentum over longer memories than
    # the features' 20-26 bars. The env decides after the longest (validation and test blocks
    # carry that much warm-up). []: off.
    trend_windows: list[int] = Field(default_factory=list)

    @field_validator("trend_windows")
    @classmethod
    def _trend_windows_are_lengths(cls, v: list[int]) -> list[int]:
        """Distinct windows of 2 or more bars (a 1-bar trend is the feature log_ret_1)."""
        if any(k < 2 for k in v) or len(set(v)) != len(v):
            raise ValueError(f"env.trend_windows must be distinct bar counts >= 2, got {v}")
        return v

    @model_validator(mode="after")
    def _benchmark_needs_its_sizing(self) -> EnvironmentConfig:
        """The vol_target benchmark sizes each instrument by env.vol_target; active risk
        limits and an active scale need a benchmark to be active against (else they would
        silently do nothing)."""
        if self.benchmark == "vol_target" and self.vol_target is None:
            raise ValueError("env.benchmark vol_target needs env.vol_target (e.g. 0.1)")
        if self.risk_limits == "active" and self.benchmark == "none":
            raise ValueError("env.risk_limits active needs an env.benchmark (active weights)")
        if self.active_scale != 1.0 and self.benchmark == "none":
            raise ValueError("env.active_scale needs an env.benchmark (the tilts it scales)")
        if self.benchmark != "none" and self.stop_loss_pct > 0:
            # a stop sells the whole position, the benchmark's part included, and the target
            # buys it back at the next bar: round trips the neutral action cannot avoid
            raise ValueError(
                f"env.stop_loss_pct {self.stop_loss_pct:g} would sell the benchmark on every "
                "dip: set env.stop_loss_pct 0 with an env.benchmark"
            )
        if self.vol_horizon_years is not None and self.vol_target is None:
            # it sizes nothing without a target: never a silently ignored setting
            raise ValueError("env.vol_horizon_years needs env.vol_target (the sizes it measures)")
        return self


class RewardConfig(Section):
    """Reward shaping; the terms themselves live in :mod:`rl_trading.metrics`."""

    kind: Literal["log_return", "differential_sharpe", "sortino", "drawdown"] = "log_return"
    risk_penalty_weight: float = Field(0.1, ge=0)
    transaction_cost_weight: float = Field(1.0, ge=0)
    diversification_bonus_weight: float = Field(0.01, ge=0)
    drawdown_penalty_weight: float = Field(0.0, ge=0)
    downside_penalty_weight: float = Field(0.0, ge=0)
    dsr_eta: float = Field(0.01, gt=0, lt=1)
    # Trading costs in the rewards paid off over time: each cost joins a debt of which 1/k is
    # charged per bar (the rest at the episode's last step, so the sum is unchanged); 1 = on
    # the bar it is paid. Keeps one trade's cost from drowning a tiny per-bar signal.
    cost_amortization_bars: int = Field(1, ge=1)
    # Benchmark-relative mode (env.benchmark): the penalty on active risk, te_w x z^2 in risk
    # units (z = active return / per-bar volatility), which replaces the VaR penalty there.
    tracking_error_weight: float = Field(0.0, ge=0)
    # Every agent's reward is multiplied by this (per-bar log returns are ~1e-3, so the
    # value targets are tiny next to PPO's value clip and gradient clip).
    scale: float = Field(1.0, gt=0)
    # Every policy's rewards divided by their running standard deviation in the learner
    # (RLlib learner connector, training/reward_norm.py): the value targets at unit scale on any
    # market; the env's rewards and their reconciliation with P&L are unchanged.
    normalize: bool = False
    sharpe_target: float = 2.0
    max_drawdown_target: float = Field(0.15, gt=0)


class PPOSettings(Section):
    """PPO hyperparameters for the RL phases (RLlib new API stack).

    The reference design's PPO numbers use Stable-Baselines3's names: its `batch_size` 256 is
    the SGD minibatch (`minibatch_size`), `n_epochs` 10 the passes over each rollout; the
    rollout (`train_batch_size`, env steps per iteration, SB3's `n_steps`) is RLlib's 4000.
    """

    lr: float = Field(3e-4, gt=0)
    train_batch_size: int = Field(4000, gt=0)
    minibatch_size: int = Field(256, gt=0)
    num_epochs: int = Field(10, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_param: float = Field(0.2, gt=0)
    # A number, or a schedule [[env_step, value], ...] interpolated linearly (RLlib's form).
    entropy_coeff: float | list[tuple[int, float]] = Field(0.0)
    vf_loss_coeff: float = Field(0.5, ge=0)
    grad_clip: float | None = Field(0.5, gt=0)

    @field_validator("entropy_coeff")
    @classmethod
    def _entropy_schedule(
        cls, v: float | list[tuple[int, float]]
    ) -> float | list[tuple[int, float]]:
        """A coefficient >= 0, or a schedule starting at step 0 with increasing steps."""
        if isinstance(v, list):
            steps = [s for s, _ in v]
            if not v or steps[0] != 0 or steps != sorted(set(steps)):
                raise ValueError("ppo.entropy_coeff schedule must start at step 0, steps rising")
            if any(c < 0 for _, c in v):
                raise ValueError("ppo.entropy_coeff values must be >= 0")
        elif v < 0:
            raise ValueError("ppo.entropy_coeff must be >= 0")
        return v

    @model_validator(mode="after")
    def _minibatch_fits(self) -> PPOSettings:
        """A minibatch is a slice of one rollout: it cannot be larger than the rollout."""
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(
                f"ppo.minibatch_size ({self.minibatch_size}) must not exceed "
                f"ppo.train_batch_size ({self.train_batch_size})"
            )
        return self


class PolicyConfig(Section):
    """Which torch RLModule each policy uses, and its size."""

    model: Literal["mlp", "transformer", "cnn_lstm"] = "mlp"
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)
    d_model: int = Field(64, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    cnn_channels: int = Field(32, gt=0)
    lstm_hidden: int = Field(64, gt=0)
    # Per-policy override of `model`, e.g. {"meta": "mlp", "specialist": "transformer"}.
    per_policy: dict[str, Literal["mlp", "transformer", "cnn_lstm"]] = Field(default_factory=dict)
    # Registered supervised CNN-LSTM (registry name or family, e.g. `cnn_lstm_1d`) whose
    # conv + LSTM body encodes the specialists' observation window (policies/pretrained.py);
    # None: no pretrained encoder. `encoder_lr` None keeps it frozen (stage 2), a value
    # fine-tunes it at that learning rate in its own optimizer (stage 3, model type `hybrid`).
    cnn_lstm_model: str | None = None
    encoder_lr: float | None = Field(None, gt=0)

    @field_validator("hidden_sizes")
    @classmethod
    def _layers_not_empty(cls, sizes: list[int]) -> list[int]:
        """Every hidden layer has at least one unit (0 or -64 would build a broken network)."""
        bad = [s for s in sizes if s < 1]
        if bad:
            raise ValueError("every layer size must be at least 1")
        return sizes

    @model_validator(mode="after")
    def _encoder_lr_needs_model(self) -> PolicyConfig:
        """A fine-tuning rate without an encoder to fine-tune is a mistake, not a no-op."""
        if self.encoder_lr is not None and not self.cnn_lstm_model:
            raise ValueError(
                "policy.encoder_lr (--fine-tune-lr) needs policy.cnn_lstm_model (--cnn-lstm-model)"
            )
        if self.cnn_lstm_model is not None and not self.cnn_lstm_model.strip():
            raise ValueError("policy.cnn_lstm_model is empty (a registered CNN-LSTM name)")
        return self


class PhasesConfig(Section):
    """The three training phases: budgets, cadence and what trains."""

    algorithm: Literal["ppo", "sac"] = "ppo"
    phase1_timesteps: int = Field(500_000, gt=0)
    phase2_timesteps: int = Field(300_000, gt=0)
    phase3_timesteps: int = Field(1_000_000, gt=0)
    shared_specialist_policy: bool = False
    eval_interval: int = Field(5, gt=0)
    checkpoint_interval: int = Field(5, gt=0)
    specialist_lr: float = Field(1e-4, gt=0)
    meta_lr: float = Field(3e-4, gt=0)
    # Phase-2 discount / GAE lambda (None: ppo's). The meta's allocation only earns until its
    # next decision, so a short horizon cuts the market noise of later bars from its advantages.
    meta_gamma: float | None = Field(None, gt=0, le=1)
    meta_gae_lambda: float | None = Field(None, ge=0, le=1)
    # Curriculum over episode difficulty (rl_trading/training/curriculum.py): training episodes
    # come from the easiest `curriculum_start` fraction of starts (by realised volatility),
    # widening linearly to all of them over the first `curriculum_ramp` of the phase.
    curriculum: bool = False
    curriculum_phases: list[Literal[1, 2, 3]] = Field(default_factory=lambda: [3])
    curriculum_start: float = Field(0.25, gt=0, le=1)
    curriculum_ramp: float = Field(0.5, gt=0, le=1)


class ResourcesConfig(Section):
    """Ray resources: local by default, an existing cluster via `address` / RAY_ADDRESS."""

    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    num_env_runners: int = Field(2, ge=0)
    num_envs_per_env_runner: int = Field(8, gt=0)
    num_cpus_per_env_runner: float = Field(1.0, gt=0)
    num_learners: int = Field(0, ge=0)
    num_gpus_per_learner: float = Field(0.0, ge=0)
    # torch threads of a learner in the phase's own process (num_learners 0); 0: one per CPU
    # reserved for the env runners (num_env_runners x num_cpus_per_env_runner, at least 1).
    # PPO samples, then learns: the learner uses the runners' cores while they wait.
    learner_threads: int = Field(0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    # The project's RLlib speed-ups (rl_trading/training/fast/: env runner, learners, module-side
    # acting); false trains with RLlib's stock MultiAgentEnvRunner / PPOTorchLearner. Same
    # numbers either way. Default true, or RL_TRADING_FAST_PATHS (see FAST_PATHS_ENV).
    rllib_fast_paths: bool = Field(default_factory=_fast_paths_default)
    # Custom Ray resources each env runner needs, e.g. {"worker_node": 1} to place the env
    # runners on nodes started with `ray start --resources '{"worker_node": 4}'`.
    custom_resources_per_env_runner: dict[str, float] = Field(default_factory=dict)
    # Env-runner fault tolerance: a crashed env runner is recreated and training continues.
    restart_failed_env_runners: bool = True
    max_env_runner_restarts: int = Field(100, ge=0)
    env_runner_restart_delay_s: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _bf16_needs_fast_paths(self) -> ResourcesConfig:
        if self.precision == "bf16" and not self.rllib_fast_paths:
            raise ValueError(
                "precision bf16 runs in the project's bf16 learner: it needs rllib_fast_paths true"
            )
        return self


class TrackingConfig(Section):
    """MLflow tracking: embedded SQLite store in the workspace unless a URI is given."""

    tracking_uri: str | None = None  # None -> MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    system_metrics: bool = True

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return _refuse_moved("tracking", data)


class SupervisedConfig(Section):
    """Analyst (RandomForest), tactician (GradientBoosting) and CNN-LSTM models."""

    models: list[Literal["analyst", "tactician", "cnn_lstm"]] = Field(
        default_factory=lambda: ["analyst", "tactician", "cnn_lstm"]
    )
    timeframes: list[str] = Field(default_factory=lambda: ["1h", "15m", "5m", "1m"])
    n_estimators: int = Field(100, gt=0)
    max_depth: int = Field(10, gt=0)
    test_size: float = Field(0.2, gt=0, lt=1)
    random_state: int = 42
    horizon: int = Field(1, gt=0)
    dead_zone: float = Field(0.0, ge=0)
    cv_splits: int = Field(5, ge=2)
    signals_enabled: bool = False


class TuningConfig(Section):
    """Population-Based Training for the RL phases and search for the supervised models."""

    population: int = Field(4, gt=0)
    perturbation_interval: int = Field(2, gt=0)
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    # Synchronous PBT: exploit / explore once every trial reached the interval, so which trial
    # clones which depends on the seeded results only, not on trial timing or free CPUs.
    synch: bool = True
    lr: tuple[float, float] = (1e-5, 1e-3)
    gamma: tuple[float, float] = (0.95, 0.999)
    clip_param: tuple[float, float] = (0.1, 0.3)
    gae_lambda: tuple[float, float] = (0.9, 1.0)
    entropy_coeff: tuple[float, float] = (0.0, 0.01)
    metric: str = "val_sharpe"
    mode: Literal["max", "min"] = "max"
    iterations: int = Field(10, gt=0)
    cpus_per_trial: float = Field(1.0, gt=0)
    n_trials: int = Field(10, gt=0)


class EvaluationConfig(Section):
    """Backtests, baselines and the grading benchmarks used by the registry."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    sharpe_excellent: float = 2.0
    sharpe_poor: float = 0.5
    max_drawdown_excellent: float = 0.05
    max_drawdown_poor: float = 0.30
    win_rate_target: float = 0.5
    var_compliance_target: float = 0.95
    # Grading compares drawdowns at this annualised volatility (a policy in cash gets no credit)
    grade_volatility: float = Field(0.10, gt=0)
    # A grade above C needs a DSR at least this high on data no selection step saw.
    grade_min_dsr: float = Field(0.95, gt=0, lt=1)
    # Supervised score: accuracy edge over the best own baseline (majority / previous
    # direction) that counts as excellent (0 edge or less is poor).
    accuracy_edge_excellent: float = Field(0.10, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return _refuse_moved("evaluation", data)


class PaperConfig(Section):
    """Paper trading (rl_trading.paper): feed limits, kill switch, drift warning."""

    # a feed with no new bar for this many seconds halts the session (stale-data breaker)
    stale_after_s: float = Field(300.0, gt=0)
    poll_s: float = Field(1.0, gt=0)  # seconds between polls of a sql / file feed
    # kill switch (fractions of equity; null = off): flatten the book and halt the session
    max_daily_loss: float | None = Field(None, gt=0, lt=1)
    max_drawdown: float | None = Field(None, gt=0, lt=1)
    drift_psi: float = Field(0.25, gt=0)  # warn: a live feature's or action's PSI passes it
    drift_every: int = Field(50, ge=1)  # bars between drift checks


class AppConfig(Section):
    """The whole application configuration."""

    run_dir: str = "runs/{timestamp}"
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainingConfig = Field(default_factory=TrainingConfig)
    env: EnvironmentConfig = Field(default_factory=EnvironmentConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    ppo: PPOSettings = Field(default_factory=PPOSettings)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    phases: PhasesConfig = Field(default_factory=PhasesConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    supervised: SupervisedConfig = Field(default_factory=SupervisedConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    paper: PaperConfig = Field(default_factory=PaperConfig)

    @model_validator(mode="after")
    def _batches_split_over_learners(self) -> AppConfig:
        """With `resources.num_learners` N > 1 each learner takes 1/N of the rollout and of every
        minibatch (`algo_config`), so the phase budget and the update are those of one learner;
        both must divide by N."""
        n, ppo = self.resources.num_learners, self.ppo
        if n > 1 and (ppo.train_batch_size % n or ppo.minibatch_size % n):
            raise ValueError(
                f"ppo.train_batch_size ({ppo.train_batch_size}) and ppo.minibatch_size "
                f"({ppo.minibatch_size}) must be multiples of resources.num_learners ({n}): each "
                f"learner takes an equal share of both"
            )
        return self

    def resolved_run_dir(self, now: _dt.datetime | None = None) -> Path:
        """`run_dir` with `{timestamp}` filled in (UTC, second resolution)."""
        stamp = (now or _dt.datetime.now(_dt.UTC)).strftime("%Y%m%d-%H%M%S")
        return Path(self.run_dir.replace("{timestamp}", stamp))

    def flat(self) -> dict[str, Any]:
        """Flattened `{"section.key": value}` view, e.g. for MLflow params."""
        return flatten(self.model_dump(mode="json"))


def periods_per_year_of(cfg: AppConfig, bars: Mapping[str, Any] | Any | None = None) -> float:
    """Bars per year of this run: `data.periods_per_year` if set, else from `data.calendar`.

    `auto` measures it from `bars` (the training bars; one frame or `{symbol: frame}`) with
    `metrics.measure_periods_per_year`; ConfigError when there are no bars to measure.
    """
    d = cfg.data
    if d.periods_per_year is not None:
        return float(d.periods_per_year)
    if d.calendar != "auto":
        try:
            return metrics.periods_per_year(d.timeframe, d.calendar)
        except ValueError as exc:
            raise ConfigError(f"data.timeframe: {exc}") from None
    frame = next(iter(bars.values())) if isinstance(bars, Mapping) and bars else bars
    index = getattr(frame, "index", None)
    if index is None or len(index) < 2:
        raise ConfigError(
            "data.calendar=auto needs at least two training bars to measure bars per year; "
            "set data.calendar (crypto, fx, equity) or data.periods_per_year"
        )
    try:
        return metrics.measure_periods_per_year(index)
    except ValueError as exc:
        raise ConfigError(f"data.calendar=auto: {exc}") from None


def resolve_calendar(cfg: AppConfig, train_bars: Mapping[str, Any] | Any | None) -> AppConfig:
    """A copy of `cfg` with `data.periods_per_year` pinned (one number for the whole run).

    Environments, validation, reports and the registry then all annualise with it.
    """
    if cfg.data.periods_per_year is not None:
        return cfg
    out = cfg.model_copy(deep=True)
    out.data.periods_per_year = periods_per_year_of(cfg, train_bars)
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core typing instead of PyYAML's YAML 1.1: only true/false are
    bools (yes/no/on/off stay strings), `0042` is not octal 34 nor `1:30` base-60 90 (both
    stay strings, so a ticker `0700` survives), and `1e-4` is a float."""


_TYPED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _TYPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:(?:0|[1-9][0-9_]*)(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$"
        r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Parse one CLI override value as YAML (`1e-4`, `true`, `[1h, 5m]`, `null`, strings)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError:
        return text


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _section_type(model: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    """The Section class of `model.key`, or None when that field is a plain value or mapping."""
    field = model.model_fields.get(key) if model is not None else None
    ann = field.annotation if field is not None else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _deep_merge(
    base: dict[str, Any], extra: Mapping[str, Any], model: type[BaseModel] | None = None
) -> dict[str, Any]:
    """Merge `extra` into `base` section by section.

    Only config sections are merged key by key; a user mapping such as `env.sectors` or
    `data.paths` given in `extra` replaces the base one whole, so a child config never inherits
    stale entries (e.g. the default symbols' sectors).
    """
    model = model or AppConfig
    for key, value in extra.items():
        sub = _section_type(model, key)
        if sub is not None and isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value, sub)
        else:
            base[key] = value
    return base


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    if first["type"] == "value_error" and isinstance(first.get("input"), dict):
        # a section's own check (e.g. DataConfig._check_names): its message is complete
        return f"config key '{key}': {first['msg'].removeprefix('Value error, ')}"
    given = first.get("input")
    given_txt = "" if isinstance(given, dict) else f" (got {given!r})"
    msg = first["msg"].removeprefix("Value error, ")
    return f"config key '{key}': {msg[:1].lower()}{msg[1:]}{given_txt}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML config file into a dict; a clear error if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """Split `key.path=value` strings; a clear error for a malformed one."""
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        pairs.append((key, parse_value(raw.strip())))
    return pairs


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> AppConfig:
    """Load `path` (or built-in defaults), apply `extra` then dotted `overrides`, validate.

    A file may name a parent with a top-level `base: other.yaml` (relative to itself), so
    `quickstart.yaml` only lists what it changes from `default.yaml`.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        tree = _read_with_bases(Path(path))
    if extra:
        _deep_merge(tree, dict(extra))
    env_fast = fast_paths_from_env()
    if env_fast is not None:  # the test / CI switch, over the files, under --set
        _set_dotted(tree, "resources.rllib_fast_paths", env_fast)
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    try:
        return AppConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'base' reference")
    tree = read_yaml(path)
    base = tree.pop("base", None)
    if base is None:
        return tree
    merged = _read_with_bases((path.parent / str(base)), seen + (path,))
    return _deep_merge(merged, tree)


def save_config(cfg: AppConfig, path: str | Path) -> Path:
    """Write the fully-resolved config as YAML (what a run really used); URL passwords are
    masked (`${VAR}` references are kept, so configs using them still work when reloaded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_dump(cfg), sort_keys=False))
    return path


def config_dump(cfg: AppConfig) -> dict[str, Any]:
    """The config as plain JSON-able data with URL passwords masked (what `save_config`
    writes, so a saved config and a live one compare key by key)."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return redact(node) if isinstance(node, str) and "://" in node else node

    return clean(cfg.model_dump(mode="json"))
