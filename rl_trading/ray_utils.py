"""Starting or joining Ray: local by default, `--address` / RAY_ADDRESS for an existing cluster."""

from __future__ import annotations

import os
import socket
from typing import Any

from rl_trading.errors import ConfigError, ConnectionFailure


def resolve_address(address: str | None = None) -> str | None:
    """Cluster address from the argument, else RAY_ADDRESS, else None (start locally)."""
    addr = address or os.environ.get("RAY_ADDRESS") or None
    return None if addr in (None, "", "local") else addr


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a one-line error when a `host:port` Ray address does not answer."""
    from rl_trading.tracking import redact

    if address == "auto":
        return
    shown = redact(address)
    target = address.split("://", 1)[-1].rsplit("@", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionFailure(f"Ray address '{shown}' must look like host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionFailure(
            f"Ray cluster unreachable at {shown} ({exc.strerror or exc})"
        ) from None


def init_ray(
    address: str | None = None, num_cpus: int | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Start Ray locally or join `address`; returns the cluster resources.

    Reuses an already-initialised Ray (e.g. the test suite's session fixture).
    """
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    addr = resolve_address(address)
    if addr is not None:
        check_address(addr)
        try:
            kwargs.setdefault("log_to_driver", False)
            ray.init(address=addr, **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            from rl_trading.tracking import redact, redact_text

            raise ConnectionFailure(
                f"could not join Ray cluster at {redact(addr)}: {redact_text(str(exc))}"
            ) from None
    else:
        kwargs.setdefault("include_dashboard", False)
        ray.init(num_cpus=num_cpus, **kwargs)
    return dict(ray.cluster_resources())


def check_env_runner_cpus(num_env_runners: int, cpus_per_runner: float, cluster: dict) -> None:
    """One-line error instead of a hang when a local Ray has too few CPUs for the env runners."""
    need = num_env_runners * cpus_per_runner
    have = float(cluster.get("CPU", 0.0))
    if need > have:
        fit = int(have // cpus_per_runner)
        raise ConfigError(
            f"{num_env_runners} env runners x {cpus_per_runner:g} CPU need {need:g} CPUs, Ray "
            f"has {have:g}: --set resources.num_env_runners={fit} (0 samples in the driver)"
        )
