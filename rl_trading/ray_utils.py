"""Starting or joining Ray: a fresh local instance by default, `--address` / RAY_ADDRESS for an
existing cluster (`auto`: the one running on this machine). A cluster is never joined unasked."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any

from rl_trading.errors import ConfigError, ConnectionFailure
from rl_trading.tracking import redact, redact_text

LOOPBACK = "127.0.0.1"


def resolve_address(address: str | None = None) -> str | None:
    """Cluster address from the argument, else RAY_ADDRESS, else None (start locally)."""
    addr = address or os.environ.get("RAY_ADDRESS") or None
    return None if addr in (None, "", "local") else addr


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a one-line error when a `host:port` Ray address does not answer."""
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


def check_gcs(address: str, timeout: float = 30.0) -> None:
    """One-line error within `timeout` s when a `host:port` that accepts connections is not a
    live Ray head (a dying cluster, another server): Ray itself would wait a minute or more.

    The probe runs in a subprocess, so a hung connection attempt is simply killed.
    """
    if address == "auto" or "://" in address:
        return
    # function-level: the adapter imports RLlib (seconds), this module stays light
    from rl_trading.rllib_adapter import GCS_PROBE

    try:
        out = subprocess.run(
            [sys.executable, "-c", GCS_PROBE, address],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ConnectionFailure(
            f"Ray cluster at {address} accepts connections but its GCS does not answer within "
            f"{timeout:g} s (dying, or not a Ray head node)"
        ) from None
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1][:200] if lines else f"exit {out.returncode}"
        raise ConnectionFailure(f"Ray cluster at {address} does not answer: {why}")


def local_init_kwargs(dashboard: bool = False, **kwargs: Any) -> dict[str, Any]:
    """`ray.init` arguments of a local instance: every service on 127.0.0.1, the dashboard
    (on 127.0.0.1 too) only when asked for; `kwargs` win."""
    out = {
        "include_dashboard": bool(dashboard),
        "dashboard_host": LOOPBACK,
        "_node_ip_address": LOOPBACK,
    }
    out.update(kwargs)
    return out


def check_dashboard_available() -> None:
    """ConfigError (one line, before Ray starts) when Ray's dashboard extras are missing."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401 - aiohttp_cors, opencensus, ...
    except ImportError as exc:
        raise ConfigError(
            f"--dashboard needs Ray's dashboard packages ({exc.name or exc} is missing): "
            f'pip install "ray[default]=={_ray_version()}"'
        ) from None


def _ray_version() -> str:
    return version("ray")


#: Ray's token authentication (on by default for a local Ray) guards the dashboard too.
DASHBOARD_TOKEN_HINT = "paste the token `ray get-auth-token` prints (kept in ~/.ray/auth_token)"


def dashboard_message(url: str | None, local: bool) -> str:
    """One line on where the Ray dashboard is (or that it is not known)."""
    if url:
        return f"Ray dashboard: {url if '://' in url else 'http://' + url}"
    if local:
        return "Ray dashboard: not running (a Ray started without it, or it failed to start)"
    return "Ray dashboard: the cluster did not report one (see its head node, port 8265)"


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    notify: Callable[[str], None] | None = None,
    dashboard: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Start a fresh local Ray (listening on 127.0.0.1 only), or join `address` (RAY_ADDRESS;
    `auto`: this machine's running cluster); returns the cluster resources and tells `notify`
    which Ray is used.

    Without an address Ray starts its own instance (`address="local"`), so a cluster left
    running by another program (`ray start`) is never joined silently. Reuses an
    already-initialised Ray (e.g. the test suite's session fixture). `dashboard` starts the
    dashboard of a local Ray on 127.0.0.1 and tells `notify` its URL (a cluster's, if known).
    """
    import ray  # heavy: ray

    say = notify or (lambda _msg: None)
    if ray.is_initialized():
        resources = dict(ray.cluster_resources())
        say(f"Ray: the instance already running in this process ({_cpus(resources)})")
        if dashboard:
            say(dashboard_message(_current_dashboard_url(), resolve_address(address) is None))
        return resources
    addr = resolve_address(address)
    if addr is not None:
        check_address(addr)
        check_gcs(addr)
        try:
            kwargs.setdefault("log_to_driver", False)
            context = ray.init(address=addr, **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise ConnectionFailure(
                f"could not join Ray cluster at {redact(addr)}: {redact_text(str(exc))}"
            ) from None
        resources = dict(ray.cluster_resources())
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        say(f"Ray: joined the cluster at {addr} ({nodes} node(s), {_cpus(resources)})")
        if dashboard:
            say(dashboard_message(getattr(context, "dashboard_url", None), local=False))
        return resources
    kwargs = local_init_kwargs(dashboard, **kwargs)
    if os.environ.get("RL_TRADING_QUIET_WORKERS") == "1":  # set by the CLI (cli/logs.py)
        kwargs.setdefault("log_to_driver", False)
    with _loopback_only(kwargs["_node_ip_address"]):
        context = ray.init(address="local", num_cpus=num_cpus, **kwargs)
    reap_with_driver()
    resources = dict(ray.cluster_resources())
    say(f"Ray: started a local instance on {kwargs['_node_ip_address']} ({_cpus(resources)})")
    if kwargs["include_dashboard"]:
        say(dashboard_message(getattr(context, "dashboard_url", None), local=True))
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":  # Ray's default since 2.5x
            say(f"Ray dashboard sign-in: {DASHBOARD_TOKEN_HINT}")
    return resources


def driver_node_resource() -> str | None:
    """`node:<ip>`, the resource Ray gives this process's node (pins work to this machine)."""
    import ray  # heavy: ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            key = f"node:{node.get('NodeManagerAddress')}"
            return key if key in (node.get("Resources") or {}) else None
    return None


def _current_dashboard_url() -> str | None:
    """Dashboard URL of the Ray this process is connected to (None when it has none)."""
    from rl_trading.rllib_adapter import dashboard_url  # heavy: ray (the adapter imports RLlib)

    return dashboard_url()


_WATCHDOG: subprocess.Popen | None = None


def reap_with_driver() -> None:
    """Start (once per process) a watchdog that kills this driver's Ray helpers when it dies.

    Ray ties its head processes to the driver, but after a SIGKILL its agents wait a minute
    on the dead GCS before exiting; the watchdog (its own session, so Ctrl+C does not reach
    it) notes the driver's descendants every second and SIGKILLs them when the driver is gone.
    """
    global _WATCHDOG
    if _WATCHDOG is not None and _WATCHDOG.poll() is None:
        return
    code = "from rl_trading.ray_utils import _watchdog; _watchdog()"
    _WATCHDOG = subprocess.Popen(  # the pipe's write end stays here: EOF = driver gone
        [sys.executable, "-c", code, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _watchdog() -> None:
    """Body of the watchdog process (argv[1]: the driver's pid)."""
    import psutil  # optional: psutil (ships with ray[default])

    driver, me = int(sys.argv[1]), os.getpid()
    seen: dict[int, psutil.Process] = {}
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break  # the driver is gone (exited or killed)
        try:
            for proc in psutil.Process(driver).children(recursive=True):
                if proc.pid != me:
                    seen.setdefault(proc.pid, proc)
        except psutil.Error:
            break
    for proc in seen.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil refuses a pid reused by another process


def _cpus(resources: dict[str, Any]) -> str:
    return f"{float(resources.get('CPU', 0)):g} CPUs"


@contextlib.contextmanager
def _loopback_only(node_ip: str) -> Iterator[None]:
    """A local Ray's GCS, raylet and workers listen on 127.0.0.1 only, not on every interface.

    Ray turns a loopback `_node_ip_address` into the machine's routable address unless its
    cluster mode is off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read once at import), so the
    flag is switched off while this process starts its node.
    """
    from rl_trading.rllib_adapter import ray_cluster_mode  # heavy: ray (the adapter imports RLlib)

    if node_ip != LOOPBACK:
        yield
        return
    with ray_cluster_mode(False):
        yield


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


def fit_trial_runners(
    cluster: dict,
    num_env_runners: int,
    cpus_per_runner: float,
    trial_cpus: float = 1.0,
    n_trials: int = 1,
    what: str = "trials",
    custom: dict[str, float] | None = None,
) -> tuple[int, str]:
    """(env runners per trial, one line saying what was chosen) for Tune trials that each take
    `trial_cpus` for their own process plus their env runners, on the Ray `cluster` resources.

    The configured `num_env_runners` are kept when one trial with all of them fits Ray's CPUs
    (and the runners' `custom` resources exist); otherwise each trial samples in its own
    process (0 runners), which always fits a machine with `trial_cpus` CPUs. A trial that can
    never be placed (fewer CPUs than `trial_cpus`) is a one-line ConfigError, never a wait.
    """
    have = float(cluster.get("CPU", 0.0))
    if have < trial_cpus:
        raise ConfigError(
            f"{what}: one trial needs {trial_cpus:g} CPU(s), Ray has {have:g}; it could never "
            "start (see resources.num_cpus / the cluster)"
        )
    need = trial_cpus + num_env_runners * cpus_per_runner
    missing = [k for k, v in (custom or {}).items() if float(cluster.get(k, 0.0)) < float(v)]
    runners = num_env_runners
    why = ""
    if num_env_runners and (need > have or missing):
        runners = 0
        why = (
            f" (a trial with {num_env_runners} env runners needs {need:g} CPUs"
            + (f" and {', '.join(missing)}" if missing else "")
            + f", Ray has {have:g}): sampling in each trial's process"
        )
    per_trial = trial_cpus + runners * cpus_per_runner
    at_once = max(1, min(int(have // per_trial), max(1, n_trials)))
    line = (
        f"{what}: {per_trial:g} CPU(s) each, {runners} env runner(s){why}; "
        f"{at_once} of {n_trials} at a time on {have:g} CPUs"
    )
    return runners, line
