"""ONNX export: onnxruntime reproduces the RLModule's deterministic actions."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from policies import compute_actions, module_spec
from rl_trading.config import AppConfig
from rl_trading.errors import CheckpointError
from rl_trading.evaluation.export import export_onnx, load_module, onnx_actions

WINDOW, N_FEAT, N_EXTRA = 8, 5, 3
OBS_DIM = WINDOW * N_FEAT + N_EXTRA


def _module(model: str, act_space: gym.Space, seed: int = 0):
    cfg = AppConfig()
    cfg.policy.model = model
    cfg.policy.hidden_sizes = [32, 32]
    cfg.policy.d_model = 16
    cfg.policy.num_heads = 2
    cfg.policy.num_layers = 1
    cfg.policy.cnn_channels = 8
    cfg.policy.lstm_hidden = 16
    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    extra = {"window_size": WINDOW, "n_features": N_FEAT}
    module = module_spec(cfg, "specialist_X", obs_space, act_space, extra).build()
    # Random, larger weights so actions spread over the whole range (incl. clipping).
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return module


@pytest.mark.parametrize(
    ("model", "act_space"),
    [
        ("mlp", gym.spaces.Box(-1.0, 1.0, (1,), np.float32)),
        ("mlp", gym.spaces.Box(np.array([-0.5, 0.0]), np.array([0.5, 1.0]), dtype=np.float32)),
        ("mlp", gym.spaces.Discrete(3)),
        ("transformer", gym.spaces.Box(-1.0, 1.0, (1,), np.float32)),
        ("cnn_lstm", gym.spaces.Box(-1.0, 1.0, (1,), np.float32)),
    ],
)
def test_onnx_parity_on_1000_observations(tmp_path, model, act_space):
    module = _module(model, act_space)
    module.save_to_path(tmp_path / "module")
    restored = load_module(tmp_path / "module")
    path = export_onnx(restored, tmp_path / "policy.onnx")
    assert path.stat().st_size > 0
    obs = np.random.default_rng(1).normal(0.0, 2.0, size=(1000, OBS_DIM)).astype(np.float32)
    expected = compute_actions(restored, obs)
    got = onnx_actions(path, obs)
    if isinstance(act_space, gym.spaces.Discrete):
        assert got.dtype == np.int64
        assert np.array_equal(got.reshape(-1), expected.reshape(-1))
        assert len(np.unique(got)) > 1  # the check is not trivially about one constant action
    else:
        np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5, rtol=0)
        assert expected.std() > 0.05  # actions really vary across observations


def test_load_module_errors(tmp_path):
    with pytest.raises(CheckpointError):
        load_module(tmp_path)
    with pytest.raises(CheckpointError, match="meta"):
        load_module(tmp_path, policy_id="meta")


def test_load_policy_acts_like_the_backtest_and_export_writes_every_policy(
    hierarchy_checkpoint, capsys
):
    """`rl_trading.load_policy` restores a hierarchy without an Algorithm (no Ray), acts with
    the env's action mapping (clipped and scaled into the action space), and `export onnx`
    writes one file per policy plus a manifest, each matching `act`."""
    import json

    import ray

    import rl_trading
    from policies import compute_actions
    from rl_trading.cli.main import main
    from rl_trading.evaluation.export import onnx_actions
    from rl_trading.registry import ModelRegistry

    cfg, ckpt = hierarchy_checkpoint
    ray_before = ray.is_initialized()  # an earlier test's session Ray may be up already
    policy = rl_trading.load_policy(ckpt)
    assert ray.is_initialized() == ray_before  # restoring for inference starts no Ray
    # in a fresh process: restoring and acting leave Ray uninitialised (no actors)
    code = (
        "import sys, numpy as np, ray, rl_trading; p = rl_trading.load_policy(sys.argv[1]); "
        "p.act(np.zeros(p.observation_space('meta').shape), 'meta'); "
        "print('ray initialised' if ray.is_initialized() else 'no ray')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("no ray"), done.stderr[-2000:]
    assert "meta" in policy.policy_ids and len(policy.policy_ids) == 3
    rng = np.random.default_rng(0)
    for pid in policy.policy_ids:
        space = policy.action_space(pid)
        obs = rng.normal(0, 3, size=(500, *policy.observation_space(pid).shape))
        acts = policy.act(obs, pid)
        assert acts.shape == (500, *space.shape)
        assert np.all(acts >= space.low) and np.all(acts <= space.high)
        raw = policy.module(pid).forward_inference(
            {"obs": torch.as_tensor(obs, dtype=torch.float32)}
        )["action_dist_inputs"][:, : space.shape[0]]
        mean = raw.detach().numpy()
        want = space.low + (np.clip(mean, -1, 1) + 1) * (space.high - space.low) / 2
        np.testing.assert_allclose(acts, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(acts, compute_actions(policy.module(pid), obs))
        one = policy.act(obs[0], pid)  # a single observation -> a single action
        np.testing.assert_allclose(one, acts[0], atol=1e-6)
    both = policy.act({pid: np.zeros(policy.observation_space(pid).shape) for pid in ["meta"]})
    assert set(both) == {"meta"}
    with pytest.raises(CheckpointError, match="several policies"):
        policy.act(np.zeros(3))

    # the registered model: the same actions through NAME@ALIAS and models:/ URIs
    rec = ModelRegistry(cfg=cfg).register(
        ckpt, model_type="hierarchical_ppo", metrics={"sharpe": 1.0, "max_drawdown": 0.1}
    )
    ModelRegistry(cfg=cfg).promote(rec.name)
    from_reg = rl_trading.load_policy("models:/hierarchical_ppo@champion")
    obs = rng.normal(size=(10, *policy.observation_space("meta").shape))
    np.testing.assert_allclose(from_reg.act(obs, "meta"), policy.act(obs, "meta"), atol=1e-6)

    out = ckpt.parent / "export" / "policy.onnx"
    assert main(["export", "onnx", "--model", "hierarchical_ppo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "manifest" in printed and "parity" in printed
    manifest = json.loads((out.parent / "policy.manifest.json").read_text())
    assert set(manifest["policies"]) == set(policy.policy_ids)
    for pid, info in manifest["policies"].items():
        obs = rng.normal(size=(64, info["obs_dim"])).astype(np.float32)
        got = onnx_actions(info["file"], obs)
        np.testing.assert_allclose(got, policy.act(obs, pid), atol=1e-5)
    one = ckpt.parent / "meta.onnx"
    code = main(
        ["export", "onnx", "--checkpoint", str(ckpt), "--policy", "meta", "--out", str(one)]
    )
    assert code == 0 and one.is_file()


def test_export_never_overwrites_and_paper_onnx_checks_the_source(
    hierarchy_checkpoint, tmp_path, monkeypatch, capsys
):
    """Each exported file's sidecar names its model and checksums: `paper run --onnx` refuses
    files of another model, an edited file or a missing sidecar (one line each). `export onnx`
    refuses an existing output unless --overwrite, and a failed parity check writes nothing."""
    import json
    import shutil

    import rl_trading
    from rl_trading.cli.main import main
    from rl_trading.evaluation import export
    from rl_trading.evaluation.backtest import load_policy
    from rl_trading.paper.model import use_onnx

    cfg, ckpt = hierarchy_checkpoint
    folder = tmp_path / "onnx"
    pids = sorted(load_policy(ckpt, cfg).modules)
    for pid in pids:
        args = ["export", "onnx", "--checkpoint", str(ckpt), "--policy", pid]
        assert main([*args, "--out", str(folder / f"{pid}.onnx")]) == 0
    side = json.loads((folder / "meta.onnx.json").read_text())
    assert side["source"] == str(ckpt.resolve())
    assert side["sha256"] == export.sha256_file(folder / "meta.onnx")
    identity = export.model_identity(ckpt)
    assert side["model_manifest_sha256"] == identity["model_manifest_sha256"]
    use_onnx(load_policy(ckpt, cfg), folder, identity)  # the model it came from: accepted

    other = tmp_path / "other"  # another model: same layout, other files
    shutil.copytree(ckpt, other)
    (other / "note.txt").write_text("retrained")
    with pytest.raises(CheckpointError, match="was exported from .*not .*other"):
        use_onnx(load_policy(other, cfg), folder, export.model_identity(other))

    before = (folder / "meta.onnx").read_bytes()
    capsys.readouterr()
    args = ["export", "onnx", "--checkpoint", str(ckpt), "--policy", "meta"]
    assert main([*args, "--out", str(folder / "meta.onnx")]) != 0
    assert "would overwrite" in capsys.readouterr().err
    assert (folder / "meta.onnx").read_bytes() == before
    assert main([*args, "--out", str(folder / "meta.onnx"), "--overwrite"]) == 0

    real = export.onnx_actions
    monkeypatch.setattr(export, "onnx_actions", lambda path, obs: real(path, obs) + 1.0)
    with pytest.raises(CheckpointError, match="parity check failed"):
        export.export_policies(rl_trading.load_policy(ckpt), tmp_path / "bad" / "p.onnx")
    assert list((tmp_path / "bad").iterdir()) == []  # nothing written, no temp files left
    monkeypatch.undo()

    with (folder / "meta.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CheckpointError, match="meta.onnx: file changed since it was exported"):
        use_onnx(load_policy(ckpt, cfg), folder, identity)
    (folder / "meta.onnx.json").unlink()
    with pytest.raises(CheckpointError, match="meta.onnx.json is missing"):
        use_onnx(load_policy(ckpt, cfg), folder, identity)
