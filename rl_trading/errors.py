"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""

from __future__ import annotations


class RLTradingError(Exception):
    """Base class of every error whose message is meant for the user, not a stack trace."""

    exit_code: int = 1


class ConfigError(RLTradingError):
    """Unknown key, wrong type or unreadable config file."""

    exit_code = 2


class DataError(RLTradingError):
    """Market data that cannot be read or fails validation (names file, row and rule)."""

    exit_code = 3


class CheckpointError(RLTradingError):
    """A checkpoint that is missing, truncated, corrupt or of the wrong kind."""

    exit_code = 4


class ConnectionFailure(RLTradingError):
    """An unreachable service: Ray cluster, MLflow server or database."""

    exit_code = 5


class RegistryError(RLTradingError):
    """Unknown model name, checksum mismatch or another model-registry problem."""

    exit_code = 6


class RunDirError(CheckpointError):
    """A run directory that is in use by another run, not writable, or whose state.json is
    corrupt (same exit code as checkpoint problems: the run's saved state is the issue)."""
