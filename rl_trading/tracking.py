"""MLflow tracking: where the store is, checking it is reachable, and starting tagged runs.

The default store is an SQLite-backed MLflow database in the workspace (the current
directory), so every run there and later commands (`models list`) see each other, and the
Model Registry works without a server.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import socket
import sqlite3
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy

from rl_trading.errors import ConfigError, ConnectionFailure
from rl_trading.version import __version__

DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
_SECRET_KEYS = ("password", "passwd", "secret", "token", "api_key", "apikey")
# Tracking URI schemes MLflow understands without plugins (`check_tracking` refuses others).
_TRACKING_SCHEMES = (
    "http",
    "https",
    "file",
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "databricks-uc",
)


def workspace() -> Path:
    """The workspace directory: where the embedded stores live (the current directory)."""
    return Path(os.environ.get("RL_TRADING_WORKSPACE", os.getcwd())).resolve()


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Tracking URI: explicit value, else MLFLOW_TRACKING_URI, else the workspace SQLite store."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return expand_env_vars(uri)
    return f"sqlite:///{workspace() / DEFAULT_DB_NAME}"


def default_artifact_location() -> str:
    """Artifact root used for experiments created in the embedded store."""
    return (workspace() / DEFAULT_ARTIFACT_DIR).as_uri()


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_ONLY = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def expand_env_vars(text: str) -> str:
    """Fill `${VAR}` references (e.g. a password in a DB URL) from the environment at use time.

    Configs keep the reference, so saved YAML, MLflow params and logs never hold the secret.
    """

    def sub(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1))
        if value is None:
            raise ConfigError(f"environment variable {match.group(1)} is not set (used in a URL)")
        return urllib.parse.quote(value, safe="") if "@" in text else value

    return _ENV_REF.sub(sub, text)


_URL_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)", re.DOTALL)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")


def split_url(text: str) -> tuple[str, str | None, str | None, str, str] | None:
    """(scheme, user, password, host[:port], tail) of a URL, or None if `text` is not one.

    The credentials end at the *last* `@`, so a raw password may hold `/`, `#`, `?` or `@`
    (`urlsplit` and SQLAlchemy's `make_url` end them at the first `/`/`#`/`?` or `@` and
    would show the rest as the host). `tail` is the path, query and fragment as written.
    """
    match = _URL_RE.fullmatch(text.strip())
    if match is None:
        return None
    scheme, rest = match.group("scheme"), match.group("rest")
    user = password = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, sep, pw = userinfo.partition(":")
        password = pw if sep else None
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return scheme, user, password, rest[:cut], rest[cut:]


def _redact_query(tail: str) -> str:
    """Mask the values of secret-named query parameters (password=, token=, ...)."""
    path, sep, query = tail.partition("?")
    if not sep:
        return tail
    query, hash_, fragment = query.partition("#")
    parts = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        secret = eq and any(s in key.lower() for s in _SECRET_KEYS)
        parts.append(f"{key}=***" if secret else item)
    return f"{path}?{'&'.join(parts)}{hash_}{fragment}"


def redact(text: str) -> str:
    """Hide credentials in a URL: the password of user:password@, secret query values.

    Parsed with `split_url`, so passwords holding `/`, `#`, `?` or `@` are hidden whole.
    Text that is not a URL is returned unchanged.
    """
    parts = split_url(text)
    if parts is None:
        return text
    scheme, user, password, host, tail = parts
    auth = ""
    if user is not None:
        if password is not None and not _ENV_ONLY.fullmatch(password):
            password = "***"  # a `${VAR}` reference is no secret: kept so the URL still works
        auth = f"{user}:{password}@" if password is not None else f"{user}@"
    return f"{scheme}://{auth}{host}{_redact_query(tail)}"


_PG_SCHEMES = ("postgresql", "postgres")


def postgres_driver() -> str | None:
    """The PostgreSQL driver SQLAlchemy should use for a plain `postgresql://` URL: None when
    psycopg 3 is installed (SQLAlchemy 2.1's default), else `psycopg2` when that is (the
    `postgres` extra), else None (SQLAlchemy then names the missing module)."""
    if importlib.util.find_spec("psycopg") is not None:
        return None
    return "psycopg2" if importlib.util.find_spec("psycopg2") is not None else None


def sqlalchemy_url(url: str) -> str:
    """`url` with the installed PostgreSQL driver named when it says plain `postgresql://`
    (`postgres_driver`); any other URL unchanged."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in _PG_SCHEMES and (driver := postgres_driver()):
        return f"postgresql+{driver}://{rest}"
    return url


def scrub_secret(text: str, password: str | None) -> str:
    """`redact_text`, and no piece of `password` left: a driver's message may quote it whole,
    percent-encoded, or cut at a `/`, `#`, `?`, `@`, `:` or space."""
    text = redact_text(text)
    if not password:
        return text
    raw = urllib.parse.unquote(password)
    pieces = {password, raw, urllib.parse.quote(raw, safe="")}
    pieces.update(p for p in re.split(r"[/#?@:\s]+", raw) if len(p) > 2)
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


def check_sql_store(uri: str, timeout: float = 5.0) -> None:
    """ConnectionFailure (one line, no secret) unless the SQL database of an MLflow tracking
    URI (postgresql://, mysql://, ...) accepts a connection within `timeout` seconds; MLflow
    itself retries for minutes and then fails with a raw OperationalError."""
    import sqlalchemy as sa  # only for database-backed tracking stores

    parts = split_url(uri)
    password = parts[2] if parts else None
    url = sqlalchemy_url(uri)
    args = {"connect_timeout": int(timeout)} if url.startswith(("postgresql", "mysql")) else {}
    engine = None
    try:
        engine = sa.create_engine(url, connect_args=args)
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any driver / parse failure: the store is unusable
        orig = getattr(exc, "orig", None) or exc
        lines = str(orig).strip().splitlines()
        reason = scrub_secret(lines[0] if lines else exc.__class__.__name__, password)
        raise ConnectionFailure(
            f"MLflow tracking database unreachable at {redact(uri)} ({reason})"
        ) from None
    finally:
        if engine is not None:
            engine.dispose()


def redact_text(text: str) -> str:
    """`redact` every URL inside a longer message (errors, log lines)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


def redact_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Redact every value that looks like a URL with credentials, and secret-named keys."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if any(s in key.lower() for s in _SECRET_KEYS) and value not in (None, ""):
            out[key] = "***"
        elif isinstance(value, str) and "://" in value:
            out[key] = redact(value)
        else:
            out[key] = value
    return out


def check_tracking(uri: str, timeout: float = 5.0) -> str:
    """Raise ConnectionFailure unless the store answers (server) or is writable (local).

    Returns a short description of the store for reports.
    """
    parts = split_url(uri)
    scheme = parts[0].lower() if parts else ""
    if parts is not None and scheme.split("+", 1)[0] not in _TRACKING_SCHEMES:
        known = ", ".join(f"{s}://" for s in _TRACKING_SCHEMES)
        raise ConfigError(
            f"unknown MLflow tracking URI scheme '{parts[0]}' in {redact(uri)} "
            f"(use one of {known}, or a folder)"
        )
    if parts is not None and scheme in ("http", "https"):
        hostport, tail = parts[3], parts[4]
        if hostport.endswith("]") or ":" not in hostport:
            host, port_text = hostport, ""
        else:
            host, _, port_text = hostport.rpartition(":")
        host = host.strip("[]") or "localhost"
        if port_text and not port_text.isdigit():
            raise ConfigError(f"MLflow tracking URI {redact(uri)} has a bad port '{port_text}'")
        port = int(port_text) if port_text else (443 if scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            raise ConnectionFailure(
                f"MLflow tracking server unreachable at {redact(uri)} ({exc.strerror or exc})"
            ) from None
        path = tail.split("?", 1)[0].split("#", 1)[0].rstrip("/")
        health = f"{scheme}://{hostport}{path}/health"  # no credentials in the probe URL
        try:
            with urllib.request.urlopen(health, timeout=timeout) as resp:
                if resp.status != 200:
                    raise ConnectionFailure(
                        f"MLflow server at {redact(uri)} answered {resp.status}"
                    )
        except (OSError, ValueError) as exc:
            raise ConnectionFailure(
                f"MLflow tracking server at {redact(uri)} did not answer /health "
                f"({redact_text(str(exc))})"
            ) from None
        return f"server {redact(uri)}"
    if parts is not None and scheme.split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
        check_sql_store(uri, timeout)
        return f"database {redact(uri)}"
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme.startswith("sqlite"):
        db_path = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        if db_path is not None:
            folder = db_path.parent
            if not folder.exists():
                raise ConnectionFailure(f"MLflow store folder does not exist: {folder}")
            if not os.access(folder, os.W_OK):
                raise ConnectionFailure(f"MLflow store folder is not writable: {folder}")
            check_sqlite_file(db_path)
        return f"sqlite {db_path}"
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme else uri)
        target = folder if folder.exists() else folder.parent
        if not os.access(target, os.W_OK):
            raise ConnectionFailure(f"MLflow store is not writable: {folder}")
        return f"files {folder}"
    return uri


def check_sqlite_file(path: Path) -> None:
    """ConnectionFailure naming `path` when an existing MLflow SQLite store is not a readable
    SQLite database (truncated, overwritten, another file): MLflow would fail later with a raw
    DatabaseError, or inside a Ray worker once training has started. A missing or empty file is
    fine (MLflow creates the schema)."""
    path = path.expanduser()
    if not path.is_file() or path.stat().st_size == 0:
        return
    why = ""
    try:
        with open(path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                why = "not an SQLite file"
        if not why:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc).lower():  # in use by another run: readable, just busy
            return
        why = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    except (OSError, sqlite3.DatabaseError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    if why:
        raise ConnectionFailure(
            f"MLflow store {path} is corrupt ({why}); move it aside (MLflow then starts a new "
            "one there) or use another --tracking-uri"
        )


def configure_mlflow(uri: str | None = None) -> str:
    """Point MLflow at the store with short HTTP timeouts; return the URI used."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow  # heavy: mlflow

    resolved = resolve_tracking_uri(uri)
    check_tracking(resolved)
    resolved = sqlalchemy_url(resolved)  # a plain postgresql:// gets the installed driver
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    if resolved.startswith("sqlite:///"):
        _init_sqlite_store(resolved)
    return resolved


def _init_sqlite_store(uri: str) -> None:
    """Create / migrate the SQLite schema under a file lock, once per process and store.

    Two processes opening a fresh store at once would otherwise both run MLflow's schema
    migrations and one would fail; after this, SQLite's own locking serialises the writes.
    """
    if uri in _INITIALISED:
        return

    import mlflow  # heavy: mlflow

    db_path = Path(uri.split(":///", 1)[1].split("?", 1)[0])
    with open(db_path.with_name(db_path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)  # builds the schema
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _INITIALISED.add(uri)


_INITIALISED: set[str] = set()


def ensure_experiment(name: str) -> str:
    """Experiment id for `name`, creating it (with a workspace artifact root) if needed."""
    import mlflow  # heavy: mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite"):
        location = default_artifact_location()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - a concurrent run may have created it first
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit() -> str:
    """Current git commit of the source tree, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def standard_tags(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags every run carries: git commit and library versions (+ `extra`)."""
    import ray  # heavy: ray
    import torch  # heavy: torch

    tags = {
        "git_commit": git_commit(),
        "rl_trading_version": __version__,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
    }
    tags.update(extra or {})
    return tags


@contextlib.contextmanager
def mlflow_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
    system_metrics: bool = False,
    nested: bool = False,
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """Start an MLflow run with redacted params and tags (+ standard tags); yields the active run.

    `resume_run_id` continues that run (a resumed training phase) when the store has it;
    its params stay as first logged.
    """
    import mlflow  # heavy: mlflow

    configure_mlflow(tracking_uri)
    exp_id = ensure_experiment(experiment)
    resumed = resume_run_id if _resumable(resume_run_id, exp_id) else None
    with mlflow.start_run(
        run_id=resumed,
        experiment_id=exp_id,
        run_name=run_name,
        nested=nested,
        log_system_metrics=system_metrics,
        tags=standard_tags(redact_params(tags or {})),
    ) as run:
        if params and resumed is None:
            clean = redact_params(params)
            items = [(k, str(v)[:6000]) for k, v in clean.items()]
            for i in range(0, len(items), 90):
                mlflow.log_params(dict(items[i : i + 90]))
        yield run


def _resumable(run_id: str | None, experiment_id: str) -> bool:
    """Whether `run_id` is a live run of `experiment_id` in the current store."""
    if not run_id:
        return False
    import mlflow  # heavy: mlflow

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - unknown id or another store: start a new run
        return False
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"


def close_orphan_run(run_id: str | None, tracking_uri: str | None = None) -> bool:
    """Mark a run left RUNNING by a killed process as KILLED; True when one was closed."""
    if not run_id:
        return False
    import mlflow  # heavy: mlflow

    configure_mlflow(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - not in this store: nothing to close
        return False
    return True
