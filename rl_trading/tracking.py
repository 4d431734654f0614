"""MLflow tracking: where the store is, checking it is reachable, and starting tagged runs.

The default store is an SQLite-backed MLflow database in the workspace (the current
directory), so every run there and later commands (`models list`) see each other, and the
Model Registry works without a server.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rl_trading.errors import ConnectionFailure

DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
_SECRET_KEYS = ("password", "passwd", "secret", "token", "api_key", "apikey")


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


def expand_env_vars(text: str) -> str:
    """Fill `${VAR}` references (e.g. a password in a DB URL) from the environment at use time.

    Configs keep the reference, so saved YAML, MLflow params and logs never hold the secret.
    """
    from rl_trading.errors import ConfigError

    def sub(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1))
        if value is None:
            raise ConfigError(f"environment variable {match.group(1)} is not set (used in a URL)")
        return urllib.parse.quote(value, safe="") if "@" in text else value

    return _ENV_REF.sub(sub, text)


def redact(text: str) -> str:
    """Hide credentials in a URL (user:password@ and ?password=/token= query values)."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or not parts.netloc and not parts.query:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, "***" if any(s in k.lower() for s in _SECRET_KEYS) else v) for k, v in query]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(query, safe="*"), parts.fragment)
    )


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
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme in ("http", "https"):
        host = parsed.hostname or "localhost"
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            raise ConnectionFailure(
                f"MLflow tracking server unreachable at {redact(uri)} ({exc.strerror or exc})"
            ) from None
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise ConnectionFailure(
                        f"MLflow server at {redact(uri)} answered {resp.status}"
                    )
        except OSError as exc:
            raise ConnectionFailure(
                f"MLflow tracking server at {redact(uri)} did not answer /health ({exc})"
            ) from None
        return f"server {redact(uri)}"
    if parsed.scheme.startswith("sqlite"):
        db_path = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        if db_path is not None:
            folder = db_path.parent
            if not folder.exists():
                raise ConnectionFailure(f"MLflow store folder does not exist: {folder}")
            if not os.access(folder, os.W_OK):
                raise ConnectionFailure(f"MLflow store folder is not writable: {folder}")
        return f"sqlite {db_path}"
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme else uri)
        target = folder if folder.exists() else folder.parent
        if not os.access(target, os.W_OK):
            raise ConnectionFailure(f"MLflow store is not writable: {folder}")
        return f"files {folder}"
    return uri


def configure_mlflow(uri: str | None = None) -> str:
    """Point MLflow at the store with short HTTP timeouts; return the URI used."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import mlflow

    resolved = resolve_tracking_uri(uri)
    check_tracking(resolved)
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
    import fcntl

    import mlflow

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
    import mlflow

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
    import numpy
    import ray
    import torch

    from rl_trading import __version__

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
    """Start an MLflow run with redacted params and standard tags; yields the active run.

    `resume_run_id` continues that run (a resumed training phase) when the store has it;
    its params stay as first logged.
    """
    import mlflow

    configure_mlflow(tracking_uri)
    exp_id = ensure_experiment(experiment)
    resumed = resume_run_id if _resumable(resume_run_id, exp_id) else None
    with mlflow.start_run(
        run_id=resumed,
        experiment_id=exp_id,
        run_name=run_name,
        nested=nested,
        log_system_metrics=system_metrics,
        tags=standard_tags(tags),
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
    import mlflow

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - unknown id or another store: start a new run
        return False
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"


def close_orphan_run(run_id: str | None, tracking_uri: str | None = None) -> bool:
    """Mark a run left RUNNING by a killed process as KILLED; True when one was closed."""
    if not run_id:
        return False
    import mlflow

    configure_mlflow(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - not in this store: nothing to close
        return False
    return True
