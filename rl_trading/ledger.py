"""The trial ledger: every configuration evaluated on a market, keyed by the data fingerprint.

A DSR deflates a Sharpe for the trials tried before it was picked; counted by hand they are
forgotten (a PBT run's members x rounds, an ablation's configs, earlier test-split choices).
The ledger keeps them: table ``trial_ledger`` in the SQL store (``data.db_url``,
``RL_TRADING_DB_URL``, else ``rl_trading.db`` in the workspace), one row per configuration
evaluated, keyed by the fingerprint of the market it was evaluated on
(:func:`market_fingerprint`: the configured market's OHLCV bars, whatever part of them a step
used). Recording is idempotent: the same (fingerprint, kind, source, configuration) is one row,
so a resumed run is not counted twice. Every DSR of the project reads :func:`count_trials`;
``--extra-trials`` stays for work done outside the tool.

Writers: the walk-forward (one row per fold x seed: its validation passes, plus its seeds),
PBT (members x rounds), the supervised Optuna search, ``models benchmark``, registrations graded
on the test split, a training run's checkpoint selection passes, benchmark / ablation scripts
(:func:`record_trials`). ``rl-trading evaluate trials [--data FINGERPRINT]`` lists it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from rl_trading.data import fingerprint, load_market
from rl_trading.data.store import default_db_url
from rl_trading.errors import ConfigError, ConnectionFailure
from rl_trading.tracking import expand_env_vars, redact

if TYPE_CHECKING:
    import pandas as pd

    from rl_trading.config import AppConfig

TABLE = "trial_ledger"
KINDS = (
    "training",  # checkpoint selection passes of a training run (validation)
    "walk_forward",  # fold x seed validation passes of a retraining walk-forward, its seeds
    "pbt",  # members x perturbation rounds
    "optuna",  # supervised hyperparameter search trials
    "models_benchmark",  # models compared by `models benchmark`
    "test_selection",  # a registration graded on the test split
    "ensemble",  # an ensemble built from registered models
    "benchmark",  # benchmark / ablation configurations (benchmarks/*.py)
    "ablation",
    "external",
)

_META = sa.MetaData()
_LEDGER = sa.Table(
    TABLE,
    _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("source", sa.String(512), nullable=False),
    sa.Column("config_key", sa.String(64), nullable=False),
    sa.Column("trials", sa.Integer, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("created", sa.String(40), nullable=False),
    sa.UniqueConstraint("fingerprint", "kind", "source", "config_key", name="uq_trial_ledger"),
)


@dataclass(frozen=True)
class LedgerRow:
    """One recorded configuration (`trials`: the evaluations it stands for, usually 1)."""

    fingerprint: str
    kind: str
    source: str
    config_key: str
    trials: int
    config: dict[str, Any]
    created: str


def ledger_url(cfg: AppConfig | None = None) -> str:
    """The SQL store's URL: `data.db_url` of `cfg`, else RL_TRADING_DB_URL, else the workspace's
    embedded SQLite file."""
    url = cfg.data.db_url if cfg is not None and cfg.data.db_url else default_db_url()
    return expand_env_vars(url)


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    try:
        engine = sa.create_engine(url)
    except Exception as exc:  # noqa: BLE001 - a malformed URL or a missing driver
        raise ConfigError(f"trial ledger: bad SQL store URL ({exc.__class__.__name__})") from None
    return engine


def _connect(url: str | None, create: bool) -> tuple[sa.Engine, bool]:
    """(engine, table exists) for the ledger at `url`; ConnectionFailure in one line."""
    url = url or ledger_url()
    engine = _engine(url)
    db = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not create and db and db != ":memory:" and not Path(db).exists():
        return engine, False  # reading never creates the embedded store
    try:
        if create:
            _META.create_all(engine, tables=[_LEDGER], checkfirst=True)
            return engine, True
        return engine, sa.inspect(engine).has_table(TABLE)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        raise ConnectionFailure(
            f"trial ledger at {redact(url)} unavailable: {reason[0] if reason else exc}"
        ) from None


def config_key(config: Mapping[str, Any] | str) -> str:
    """Stable 16-hex key of a configuration (a dict, hashed as sorted JSON, or a name)."""
    text = config if isinstance(config, str) else json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_trials(
    fingerprint: str,
    kind: str,
    configs: Sequence[Mapping[str, Any] | str],
    source: str = "",
    trials_each: int | Sequence[int] = 1,
    url: str | None = None,
) -> int:
    """Record the configurations evaluated on the data `fingerprint`; returns the rows added.

    `kind` is one of :data:`KINDS`; `source` says where they come from (a run folder, a script
    name); `trials_each` the evaluations each configuration stands for (one number or one per
    configuration). Rows already recorded (same fingerprint, kind, source and configuration)
    are kept as they are, so recording a resumed run again adds nothing.
    """
    if kind not in KINDS:
        raise ConfigError(f"trial ledger: unknown kind '{kind}' (one of {', '.join(KINDS)})")
    if not fingerprint:
        raise ConfigError("trial ledger: a data fingerprint is required")
    counts = [int(trials_each)] * len(configs) if isinstance(trials_each, int) else trials_each
    if len(counts) != len(configs):
        raise ConfigError("trial ledger: one trial count per configuration")
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    rows = []
    for config, n in zip(configs, counts, strict=True):
        body = {"name": config} if isinstance(config, str) else dict(config)
        rows.append(
            LedgerRow(fingerprint, kind, str(source), config_key(config), max(0, int(n)), body, now)
        )
    return len(_insert(rows, url, "record"))


def _insert(rows: Sequence[LedgerRow], url: str | None, what: str) -> list[LedgerRow]:
    """Insert the rows not yet in the ledger (same fingerprint, kind, source and configuration
    key), in one transaction; returns the rows added."""
    engine, _ = _connect(url, create=True)
    added = []
    try:
        with engine.begin() as conn:
            for row in rows:
                where = (
                    (_LEDGER.c.fingerprint == row.fingerprint)
                    & (_LEDGER.c.kind == row.kind)
                    & (_LEDGER.c.source == row.source)
                    & (_LEDGER.c.config_key == row.config_key)
                )
                if conn.execute(sa.select(_LEDGER.c.id).where(where)).first() is not None:
                    continue
                conn.execute(
                    _LEDGER.insert().values(
                        fingerprint=row.fingerprint,
                        kind=row.kind,
                        source=row.source,
                        config_key=row.config_key,
                        trials=row.trials,
                        config=json.dumps(row.config, sort_keys=True, default=str),
                        created=row.created,
                    )
                )
                added.append(row)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        raise ConnectionFailure(
            f"trial ledger: could not {what} ({reason[0] if reason else exc})"
        ) from None
    return added


def count_trials(fingerprint: str | None, url: str | None = None) -> int:
    """Every trial recorded on the data `fingerprint` (0 for none, or no ledger yet)."""
    if not fingerprint:
        return 0
    engine, exists = _connect(url, create=False)
    if not exists:
        return 0
    with engine.connect() as conn:
        total = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(_LEDGER.c.trials), 0)).where(
                _LEDGER.c.fingerprint == fingerprint
            )
        ).scalar_one()
    return int(total)


def list_trials(fingerprint: str | None = None, url: str | None = None) -> list[LedgerRow]:
    """The recorded rows (of one fingerprint, or a prefix of it), oldest first."""
    engine, exists = _connect(url, create=False)
    if not exists:
        return []
    query = sa.select(_LEDGER).order_by(_LEDGER.c.id)
    if fingerprint:
        query = query.where(_LEDGER.c.fingerprint.startswith(fingerprint))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        LedgerRow(
            r["fingerprint"],
            r["kind"],
            r["source"],
            r["config_key"],
            int(r["trials"]),
            json.loads(r["config"]),
            r["created"],
        )
        for r in rows
    ]


def summary(fingerprint: str | None = None, url: str | None = None) -> list[dict[str, Any]]:
    """Per fingerprint and kind: trials, configurations and sources (what the CLI prints)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in list_trials(fingerprint, url):
        item = out.setdefault(
            (row.fingerprint, row.kind),
            {"fingerprint": row.fingerprint, "kind": row.kind, "trials": 0, "configs": 0},
        )
        item["trials"] += row.trials
        item["configs"] += 1
        item.setdefault("sources", set()).add(row.source)
        item["last"] = row.created
    return [{**v, "sources": len(v["sources"])} for v in out.values()]


EXPORT_FORMAT = "rl-trading trial ledger 1"


def export_rows(
    path: str | Path,
    fingerprints: Sequence[str] | None = None,
    url: str | None = None,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write the ledger's rows (of `fingerprints`, or all) to a JSON file; returns (rows,
    trials). The file carries the ledger to another workspace or a fresh clone
    (:func:`import_rows`), so a DSR computed there counts the same trials. An existing file is
    replaced only with `overwrite` (atomically: never half written)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"trial ledger: {path} exists; not replaced (--overwrite replaces it)")
    rows = list_trials(None, url)
    if fingerprints is not None:
        keep = set(fingerprints)
        rows = [r for r in rows if r.fingerprint in keep]
    body = {"format": EXPORT_FORMAT, "rows": [asdict(r) for r in rows]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return len(rows), sum(r.trials for r in rows)


def read_export(path: str | Path) -> list[LedgerRow]:
    """The rows of an :func:`export_rows` file, each checked; a malformed file is a one-line
    ConfigError naming the file and the row."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"trial ledger file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"trial ledger file {path}: not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != EXPORT_FORMAT:
        raise ConfigError(f"trial ledger file {path}: not an exported ledger ({EXPORT_FORMAT!r})")
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise ConfigError(f"trial ledger file {path}: 'rows' must be a list")
    out = []
    for i, r in enumerate(rows):
        try:
            row = LedgerRow(
                str(r["fingerprint"]),
                str(r["kind"]),
                str(r["source"]),
                str(r["config_key"]),
                int(r["trials"]),
                dict(r["config"]),
                str(r["created"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"trial ledger file {path}: row {i} is malformed ({exc})") from None
        if row.kind not in KINDS or not row.fingerprint or row.trials < 0:
            raise ConfigError(
                f"trial ledger file {path}: row {i} has a bad kind, fingerprint or trial count"
            )
        out.append(row)
    return out


def import_rows(path: str | Path, url: str | None = None) -> tuple[int, int]:
    """Merge an :func:`export_rows` file into the ledger; returns (rows added, trials added).
    Rows already there are kept as they are, so importing the same file twice adds nothing.
    The whole file is checked before anything is written."""
    added = _insert(read_export(path), url, "import")
    return len(added), sum(r.trials for r in added)


_MARKET_FINGERPRINTS: dict[str, str] = {}


def market_fingerprint(cfg: AppConfig, bars: dict[str, pd.DataFrame] | None = None) -> str:
    """The ledger's key: fingerprint of the OHLCV bars of `bars` or of the configured market
    (`load_market(cfg)`, once per data section and process; signal columns do not enter a
    fingerprint)."""
    if bars is not None:
        return fingerprint(bars)
    key = cfg.data.model_dump_json()
    if key not in _MARKET_FINGERPRINTS:
        _MARKET_FINGERPRINTS[key] = fingerprint(load_market(cfg))
    return _MARKET_FINGERPRINTS[key]
