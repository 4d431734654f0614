"""notebooks/analysis.ipynb: committed without outputs, and executed headless (nbclient, a kernel
of this venv's python) on a tiny run the test trains through the CLI (+ a PBT folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from test_ops_analysis import make_pbt_dir

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
TINY = f"""\
base: {REPO / "configs/default.yaml"}
seed: 4
data: {{source: synthetic, symbols: [AAA, BBB], timeframe: 1h, embargo_bars: 5,
        synthetic: {{n_bars: 1500}}}}
env: {{episode_length: 64, risk_window: 20, sectors: {{}}}}
ppo: {{train_batch_size: 128, minibatch_size: 64, num_epochs: 1}}
policy: {{hidden_sizes: [8]}}
resources: {{num_env_runners: 0, num_cpus: 1}}
phases: {{phase1_timesteps: 512, eval_interval: 2, checkpoint_interval: 2}}
tracking: {{system_metrics: false}}
"""


def test_committed_notebook_has_no_outputs():
    sys.path.insert(0, str(REPO / "scripts"))
    from strip_notebook_outputs import strip

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert strip(NOTEBOOK, check=True) is False
    # No logic in the notebook: it calls rl_trading.analysis only.
    imports = [ln for c in code for ln in c.source.splitlines() if "import" in ln]
    allowed = (
        "import os",
        "from rl_trading import analysis",
        # the README's plain-RLlib restore snippet
        "from ray.rllib.algorithms.algorithm import Algorithm",
        "from ray.rllib.core.rl_module.rl_module import RLModule",
    )
    assert all(ln.strip() in allowed for ln in imports)


def _venv_kernel(folder: Path) -> str:
    """A kernelspec running this interpreter (the venv), found through JUPYTER_PATH."""
    spec = folder / "kernels" / "rl-trading-venv"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "rl-trading venv", "language": "python"})
    )
    return "rl-trading-venv"


@pytest.mark.rllib
def test_notebook_executes_on_a_tiny_run(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "tiny.yaml").write_text(TINY)
    env = {**os.environ, "RL_TRADING_WORKSPACE": str(ws)}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(key, None)
    cli = str(Path(sys.executable).parent / "rl-trading")
    res = subprocess.run(
        [cli, "train", "phase1", "-c", "tiny.yaml", "--run-dir", "run"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    make_pbt_dir(ws / "run")  # a PBT result in the run dir (its format, hand-made: fast)

    kernel = _venv_kernel(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("RL_TRADING_RUN_DIR", str(ws / "run"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ws / 'mlflow.db'}")
    monkeypatch.setenv("RL_TRADING_WORKSPACE", str(ws))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, kernel_name=kernel, timeout=240, resources={"metadata": {"path": str(ws)}}
    )
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # learning curves, PBT lineage, equity/drawdown
    text = "\n".join(str(o.get("data", {}).get("text/plain", o.get("text", ""))) for o in outputs)
    assert "phase1" in text and "specialist_AAA" in text  # runs table, curves per policy
    assert "1 PBT run(s) found" in text
    assert "buy_and_hold" in text and "sharpe_ratio" in text  # the baselines' metrics table
    assert "specialist_AAA restored; iteration" in text  # plain-RLlib restore + train
