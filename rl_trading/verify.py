"""`rl-trading verify`: a system check printed as a pass/fail table."""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass

from rich.table import Table

from rl_trading import ray_utils
from rl_trading.config import AppConfig
from rl_trading.data import load_market, synthetic_symbols
from rl_trading.ray_utils import resolve_address
from rl_trading.tracking import check_tracking, redact_text, resolve_tracking_uri

KEY_PACKAGES = [
    "ray",
    "torch",
    "gymnasium",
    "pettingzoo",
    "mlflow",
    "pandas",
    "numpy",
    "sklearn",
    "typer",
    "pydantic",
]


@dataclass
class Check:
    """One line of the verify table."""

    name: str
    ok: bool
    detail: str


def _guard(name: str, fn) -> Check:  # noqa: ANN001 - small internal helper
    try:
        return Check(name, True, fn())
    except Exception as exc:  # noqa: BLE001 - every failure becomes a table row
        first = str(exc).strip().splitlines()
        line = redact_text(first[0]) if first else exc.__class__.__name__
        return Check(name, False, line[:600])


def _python() -> str:
    return f"Python {platform.python_version()} ({platform.machine()})"


def _package(name: str) -> str:
    mod = importlib.import_module(name)
    return getattr(mod, "__version__", "installed")


def _torch_device() -> str:
    import torch  # heavy: torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        bf16 = torch.cuda.is_bf16_supported()
        return f"cuda x{torch.cuda.device_count()} ({names}); bf16={'yes' if bf16 else 'no'}"
    return f"cpu ({torch.get_num_threads()} threads); no usable GPU"


def _ray(address: str | None) -> str:
    import ray  # heavy: ray

    was_up = ray.is_initialized()
    num_cpus = 1 if resolve_address(address) is None else None
    resources = ray_utils.init_ray(address, num_cpus=num_cpus)
    try:
        where = resolve_address(address) or "local"
        return f"{where}: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"
    finally:
        if not was_up:
            ray.shutdown()


def _data(cfg: AppConfig) -> str:
    bars = load_market(cfg)
    n = min(len(df) for df in bars.values())
    synthetic = synthetic_symbols(bars)
    kind = f"; synthetic: {', '.join(synthetic)}" if synthetic else "; all real"
    return f"{cfg.data.source}: {len(bars)} instruments x {n} bars ({cfg.data.timeframe}){kind}"


def _mlflow(uri: str | None) -> str:
    return check_tracking(resolve_tracking_uri(uri))


def run_checks(
    cfg: AppConfig,
    address: str | None = None,
    tracking_uri: str | None = None,
    skip_ray: bool = False,
) -> list[Check]:
    """Run every check; never raises, each failure is a row."""
    checks = [_guard("python", _python)]
    checks += [_guard(f"package {p}", lambda p=p: _package(p)) for p in KEY_PACKAGES]
    checks.append(_guard("torch device", _torch_device))
    if not skip_ray:
        checks.append(_guard("ray", lambda: _ray(address or cfg.resources.address)))
    checks.append(_guard("data source", lambda: _data(cfg)))
    checks.append(
        _guard("mlflow store", lambda: _mlflow(tracking_uri or cfg.tracking.tracking_uri))
    )
    return checks


def render_checks(checks: list[Check]) -> Table:
    """Rich table of checks."""
    table = Table(title="rl-trading verify")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for c in checks:
        table.add_row(c.name, "[green]PASS[/]" if c.ok else "[red]FAIL[/]", c.detail)
    return table
