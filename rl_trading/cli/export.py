"""`rl-trading export onnx`: a policy's deterministic inference path as an ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli.common import ConfigOpt, SetOpt, console, policy_config

app = typer.Typer(help="Export trained policies (ONNX).", no_args_is_help=True)


@app.command("onnx")
def onnx(
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write.")],
    model: Annotated[str | None, typer.Option("--model", help="Registered model name.")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Algorithm checkpoint or RLModule dir.")
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="Policy id (e.g. meta, specialist_EURUSD).")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    check: Annotated[
        bool, typer.Option(help="Compare onnxruntime with the module on 1,000 observations.")
    ] = True,
) -> None:
    """Export one policy (module) as ONNX: obs [B, obs_dim] -> deterministic action."""
    import numpy as np

    from rl_trading.errors import CheckpointError, ConfigError
    from rl_trading.evaluation.backtest import load_policy
    from rl_trading.evaluation.export import export_onnx, onnx_actions

    if (checkpoint is None) == (model is None):
        raise ConfigError("give exactly one of --model NAME or --checkpoint PATH")
    cfg, _ = policy_config(config, sets, checkpoint=checkpoint, model=model)
    if model is not None:
        from rl_trading.registry import ModelRegistry

        rec = ModelRegistry(cfg=cfg).resolve(model)
        if rec.kind == "ensemble":
            members = ", ".join(rec.lineage.get("members", [])) or "its members"
            raise ConfigError(
                f"'{rec.name}' is an ensemble: ONNX export takes one network; export each "
                f"member instead ({members})"
            )
    bundle = load_policy(str(checkpoint) if checkpoint else model, cfg)
    if policy is None:
        if len(bundle.modules) != 1:
            ids = ", ".join(bundle.modules)
            raise ConfigError(f"this model has several policies ({ids}); pick one with --policy")
        policy = next(iter(bundle.modules))
    if policy not in bundle.modules:
        raise CheckpointError(f"no policy '{policy}' (have: {', '.join(bundle.modules)})")
    module = bundle.modules[policy]
    if not hasattr(module, "forward_inference"):
        raise CheckpointError(f"policy '{policy}' is not an RLModule (ensembles cannot export)")
    path = export_onnx(module, out)
    console.print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    if check:
        from policies import compute_actions

        dim = int(np.prod(module.observation_space.shape))
        obs = np.random.default_rng(0).normal(size=(1000, dim)).astype(np.float32)
        want = compute_actions(module, obs)
        got = onnx_actions(path, obs).reshape(want.shape)
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        if err > 1e-5:
            raise CheckpointError(f"ONNX parity check failed: max |diff| {err:.2e} > 1e-5")
        console.print(f"parity: max |onnx - module| = {err:.1e} on 1,000 observations")
