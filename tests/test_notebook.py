"""notebooks/analysis.ipynb: committed without outputs, and executed with the documented command
(`jupyter execute`) on a tiny three-phase run the test trains through the CLI with
`--dashboard` (whose API must answer meanwhile), plus a PBT folder."""

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
resources: {{num_env_runners: 0, num_envs_per_env_runner: 2, num_cpus: 1}}
phases: {{phase1_timesteps: 512, phase2_timesteps: 256, phase3_timesteps: 256,
         eval_interval: 2, checkpoint_interval: 2}}
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


def _train_with_dashboard(ws: Path, env: dict) -> str:
    """`train pipeline --dashboard` (tiny): while it trains, fetch the printed dashboard URL's
    API; returns the CLI's output. Needs `ray[default]` (part of the install)."""
    import select
    import time
    import urllib.request

    cli = str(Path(sys.executable).parent / "rl-trading")
    proc = subprocess.Popen(
        [cli, "train", "pipeline", "-c", "tiny.yaml", "--run-dir", "run", "--dashboard"],
        cwd=ws,
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    answer = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            line = proc.stdout.readline() if ready else ""
            if line:
                lines.append(line)
            if answer is None and line.startswith("Ray dashboard: http"):
                url = line.split(": ", 1)[1].strip()
                # Ray's token auth (its default): the token the printed sign-in line names
                token = (Path.home() / ".ray" / "auth_token").read_text().strip()
                request = urllib.request.Request(
                    f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}
                )
                for _ in range(60):  # the dashboard's HTTP server may need a moment
                    try:
                        with urllib.request.urlopen(request, timeout=5) as resp:
                            answer = json.loads(resp.read())
                        break
                    except OSError:
                        time.sleep(0.5)
                assert answer is not None, f"dashboard at {url} did not answer"
            if not line and proc.poll() is not None:
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert rc == 0, out[-3000:]
    assert answer is not None, "no dashboard URL printed:\n" + out[-2000:]
    assert answer.get("ray_version") == ray_version()
    assert "Ray dashboard sign-in:" in out and "ray get-auth-token" in out
    return out


def ray_version() -> str:
    import ray

    return ray.__version__


@pytest.mark.rllib
def test_dashboard_answers_and_notebook_runs_as_documented(tmp_path, monkeypatch):
    """A tiny pipeline with --dashboard (its API answers while it trains), then the
    documented headless command `RL_TRADING_RUN_DIR=... jupyter execute
    notebooks/analysis.ipynb` (kernel in notebooks/, store found from the run's workspace)
    exits 0; every panel has data; a wrong run dir is a one-line error."""
    from rl_trading import analysis

    # an earlier test's MLflow client may have exported its store to this process
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "tiny.yaml").write_text(TINY)
    env = {**os.environ, "RL_TRADING_WORKSPACE": str(ws)}
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(key, None)
    _train_with_dashboard(ws, env)
    make_pbt_dir(ws / "run")  # a PBT result in the run dir (its format, hand-made: fast)

    # the documented command, from the repository root, without RL_TRADING_WORKSPACE or
    # MLFLOW_TRACKING_URI: the run's store is found next to the run dir
    jupyter = str(Path(sys.executable).parent / "jupyter")
    doc_env = {k: v for k, v in env.items() if k != "RL_TRADING_WORKSPACE"}
    doc_env.update(PYTHONPATH=str(REPO), PWD=str(REPO), MPLBACKEND="agg")
    doc_env["RL_TRADING_RUN_DIR"] = str(ws / "run")
    res = subprocess.run(
        [jupyter, "execute", "notebooks/analysis.ipynb"],
        cwd=REPO, env=doc_env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (REPO / "notebooks" / "mlflow.db").exists()  # no empty store in notebooks/

    # every panel has data: learning curves of all three phases, the backtest names its split
    uri = analysis.run_tracking_uri(ws / "run")
    assert uri == f"sqlite:///{ws / 'mlflow.db'}"
    curves = analysis.learning_curves(ws / "run", uri)
    assert set(curves["phase"]) == {"phase1", "phase2", "phase3"}
    assert "meta" in set(curves[curves["phase"] == "phase2"]["policy"])
    # the MLflow run_dir param is the run dir, not the `runs/{timestamp}` template
    import mlflow

    run = mlflow.MlflowClient(uri).get_run(analysis.mlflow_runs(ws / "run", uri)["run_id"][0])
    assert run.data.params["run_dir"] == str((ws / "run").resolve())

    # a run dir or store that is not there: a one-line error naming it, no store created
    # (what the notebook's first cell raises; in-process, a second kernel costs seconds)
    from rl_trading.errors import ConnectionFailure, RunDirError

    with pytest.raises(RunDirError, match="not a training run directory.*no/such/run"):
        analysis.resolve_run_dir("no/such/run")
    with pytest.raises(ConnectionFailure, match="does not exist"):
        analysis.run_tracking_uri(ws / "run", "sqlite:///nowhere/mlflow.db")
    assert not (REPO / "notebooks" / "mlflow.db").exists()


def test_backtest_figure_names_its_split_and_curves_show_single_points():
    """The equity figure's title says which split; a phase with one logged point still draws
    it (a marker), a phase with none says so."""
    import types

    import numpy as np
    import pandas as pd

    from rl_trading import analysis

    idx = pd.date_range("2024-01-01", periods=50, freq="D", tz="UTC")
    run = types.SimpleNamespace(equity=np.linspace(1, 1.1, 50), index=idx)
    result = types.SimpleNamespace(
        runs={"policy": run, "flat": run},
        meta={"split": "test", "start": str(idx[0]), "end": str(idx[-1])},
    )
    fig = analysis.plot_equity_drawdown(result)
    assert "test split, 2024-01-01 .. 2024-02-19" in fig.axes[0].get_title()
    curves = pd.DataFrame(
        {"phase": ["phase1", "phase2"], "policy": ["a", "meta"], "iteration": [3, 4],
         "episode_return_mean": [1.0, 2.0]}
    )  # fmt: skip
    fig = analysis.plot_learning_curves(curves)
    assert all(ax.lines and ax.lines[0].get_marker() == "o" for ax in fig.axes)
