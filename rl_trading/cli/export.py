"""`rl-trading export onnx`: a policy's deterministic inference path as an ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rl_trading.cli.common import ConfigOpt, SetOpt, console, policy_config
from rl_trading.errors import CheckpointError, ConfigError
from rl_trading.evaluation.export import export_policies, model_identity
from rl_trading.registry import ModelRegistry

app = typer.Typer(help="Export trained policies (ONNX).", no_args_is_help=True)


@app.command("onnx")
def onnx(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="ONNX file to write; a hierarchy writes OUT's stem + .POLICY.onnx per policy "
            "and OUT's stem + .manifest.json.",
        ),
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="NAME, NAME/VERSION or NAME@ALIAS.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Algorithm checkpoint or RLModule dir.")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="Only this policy id (e.g. meta, specialist_EURUSD)."),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    check: Annotated[
        bool, typer.Option(help="Compare onnxruntime with the module on 1,000 observations.")
    ] = True,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing output files.")
    ] = False,
) -> None:
    """Export a policy as ONNX (obs [B, obs_dim] -> deterministic action); every policy of
    a hierarchy, one file each, plus a manifest. Each file's .json sidecar names the source
    model and its checksums (what `paper run --onnx` checks); existing files are refused
    unless --overwrite, and nothing is written unless every parity check passes."""
    from rl_trading.inference import load_policy  # heavy: numba

    if (checkpoint is None) == (model is None):
        raise ConfigError("give exactly one of --model NAME or --checkpoint PATH")
    cfg, _ = policy_config(config, sets, checkpoint=checkpoint, model=model)
    if model is not None:
        rec = ModelRegistry(cfg=cfg).resolve(model)
        if rec.kind == "ensemble":
            members = ", ".join(rec.lineage.get("members", [])) or "its members"
            raise ConfigError(
                f"'{rec.name}' is an ensemble: ONNX export takes one network; export each "
                f"member instead ({members})"
            )
    loaded = load_policy(str(checkpoint) if checkpoint else model, cfg)
    ids = loaded.policy_ids
    if policy is not None:
        if policy not in ids:
            raise CheckpointError(f"no policy '{policy}' (have: {', '.join(ids)})")
        ids = [policy]
    for pid in ids:
        if not hasattr(loaded.module(pid), "forward_inference"):
            raise CheckpointError(f"policy '{pid}' is not an RLModule (ensembles cannot export)")
    identity = model_identity(str(checkpoint) if checkpoint else str(model), cfg)
    written = export_policies(loaded, out, ids, check=check, identity=identity, overwrite=overwrite)
    for pid, info in written["policies"].items():
        line = f"wrote {info['file']} ({info['bytes']:,} bytes)"
        if "parity_max_abs_diff" in info:
            line += f"; parity: max |onnx - module| = {info['parity_max_abs_diff']:.1e}"
        console.print(line if len(ids) == 1 else f"{pid}: {line}", soft_wrap=True)
    if written.get("manifest"):
        console.print(f"manifest {written['manifest']}", soft_wrap=True)
    if check:
        console.print("parity checked on 1,000 observations per policy")
