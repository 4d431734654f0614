"""Checkpoints as plain RLlib sees them: restore in a fresh process, data by reference (not
pickled bars), config + preprocessing carried with them, sha256 manifest verified."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rl_trading.config import AppConfig
from rl_trading.errors import CheckpointError, DataError

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "seed": 11,
    "data": {
        "source": "synthetic",
        "symbols": ["AAA", "BBB"],
        "embargo_bars": 5,
        "synthetic": {"n_bars": 900, "seed": 2},
    },
    "env": {"episode_length": 64, "sectors": {}, "max_sector_allocation": None},
    "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
    "policy": {"hidden_sizes": [16]},
    "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 1},
    "phases": {
        "phase1_timesteps": 128,
        "phase2_timesteps": 128,
        "phase3_timesteps": 128,
        "eval_interval": 1,
        "checkpoint_interval": 1,
    },
    "tracking": {"system_metrics": False},
}

# The README's "restore and act" snippet: nothing from the project is imported first.
SNIPPET = """\
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core.rl_module.rl_module import RLModule
algo = Algorithm.from_checkpoint(CKPT)
result = algo.train()
module = RLModule.from_checkpoint(f"{CKPT}/learner_group/learner/rl_module/specialist_AAA")
"""


def _cfg(**data) -> AppConfig:
    raw = json.loads(json.dumps(TINY))
    raw["data"]["synthetic"].update(data)
    return AppConfig.model_validate(raw)


def _splits(cfg: AppConfig):
    from rl_trading.training.session import load_splits

    return load_splits(cfg)


def test_env_config_carries_a_reference_not_the_bars():
    from ray import cloudpickle

    from rl_trading.training.algo_config import build_phase_config
    from rl_trading.training.env_bridge import hierarchical_factory

    sizes, inline_sizes = [], []
    for n in (900, 3600):
        cfg = _cfg(n_bars=n)
        train, val, _ = _splits(cfg)
        factory = hierarchical_factory(cfg, train, val, source=cfg)
        ec = factory.train_config("joint")
        assert "bars" not in ec and ec["data_ref"]["n_bars"] == len(train["AAA"])
        # what RLlib pickles into a checkpoint's class_and_ctor_args.pkl
        state = build_phase_config(cfg, 1, factory).get_state()
        sizes.append(len(cloudpickle.dumps(state)))
        # without a source the bars travel inline (and the size grows with them)
        inline = hierarchical_factory(cfg, train, val)
        assert "bars" in inline.train_config("joint")
        inline_sizes.append(len(cloudpickle.dumps(build_phase_config(cfg, 1, inline).get_state())))
    assert abs(sizes[0] - sizes[1]) < 200, sizes
    assert inline_sizes[1] - inline_sizes[0] > 100_000, inline_sizes  # the check can fail


def test_reference_reloads_and_verifies_the_bars(monkeypatch):
    from envs import registration

    cfg = _cfg()
    train, _, _ = _splits(cfg)
    ref = registration.data_reference(cfg, train)
    monkeypatch.setattr(registration, "_BARS_CACHE", {})  # like a fresh process
    ec = registration.make_env_config(cfg, train, data_ref=ref)
    registration._BARS_CACHE.clear()
    got = registration.bars_from_config(pickle.loads(pickle.dumps(ec)))
    assert registration.bars_fingerprint(got) == ref["fingerprint"]
    assert list(got) == ["AAA", "BBB"] and got["AAA"].index.equals(train["AAA"].index)
    # the source now yields other bars: a one-line DataError, never the changed data
    changed = {**ref, "cfg": _cfg(seed=3).model_dump(mode="json")}
    registration._BARS_CACHE.clear()
    with pytest.raises(DataError, match="training data changed.*fingerprint"):
        registration.bars_from_config({**ec, "data_ref": changed})


def _with_signal(cfg: AppConfig):
    """A market loader that adds a signal column, as `supervised.signals.observed_market`
    does (module level: an env_config carries it by reference)."""
    from rl_trading.data import load_market

    bars = load_market(cfg)
    return {s: f.assign(sig_test_1h=0.5) for s, f in bars.items()}


def test_signal_columns_reach_the_env_through_the_loader_handed_in(monkeypatch):
    """Envs never import the supervised stage: a process reloading the bars of a reference
    rebuilds the observed market with the loader the training layer handed in."""
    from envs import registration

    cfg = _cfg()
    lo, hi = 100, 400
    bars = {s: f.iloc[lo:hi] for s, f in _with_signal(cfg).items()}
    ref = registration.data_reference(cfg, bars)
    monkeypatch.setattr(registration, "_BARS_CACHE", {})  # like a fresh process
    with_loader = registration.make_env_config(cfg, bars, data_ref=ref, observe=_with_signal)
    plain = registration.make_env_config(cfg, bars, data_ref=ref)
    assert "observe" not in plain
    registration._BARS_CACHE.clear()
    got = registration.bars_from_config(pickle.loads(pickle.dumps(with_loader)))
    assert "sig_test_1h" in got["AAA"] and registration.bars_fingerprint(got) == ref["fingerprint"]
    registration._BARS_CACHE.clear()  # without the loader the signal columns are missing
    with pytest.raises(DataError, match="training data changed"):
        registration.bars_from_config(plain)


def test_db_url_credentials_stay_out_of_env_config():
    from envs import registration

    raw = json.loads(json.dumps(TINY))
    raw["data"]["db_url"] = "postgresql://bob:s3cret@db.example:5432/bars"
    cfg = AppConfig.model_validate(raw)
    train, _, _ = _splits(_cfg())
    ec = registration.make_env_config(cfg, train, data_ref=registration.data_reference(cfg, train))
    text = json.dumps(ec)
    assert "s3cret" not in text and "bob:***@db.example" in text
    # a `${VAR}` reference is no secret and expands again on reload: kept as written
    raw["data"]["db_url"] = "postgresql://bob:${PGPASS}@db.example/bars?sslmode=require"
    safe = registration.safe_config(AppConfig.model_validate(raw))
    assert safe["data"]["db_url"] == raw["data"]["db_url"]
    raw["data"]["db_url"] = "postgresql://bob@db.example/bars?password=s3cret"
    assert "s3cret" not in str(registration.safe_config(AppConfig.model_validate(raw)))
    # passwords holding URL delimiters (issue 17 case 3) are hidden whole, not cut at `/#?`
    for pw in ("pa/ss#word", "se/cret", "se#cret", "se?pw=1"):
        raw["data"]["db_url"] = f"postgresql+psycopg2://bob:{pw}@db.example/bars"
        text = json.dumps(registration.safe_config(AppConfig.model_validate(raw)))
        assert pw not in text and pw.split("/")[-1] not in text and "bob:***@db.example" in text


def test_manifest_names_a_tampered_file(tmp_path):
    from rl_trading.artifacts import verify_checkpoint, write_manifest

    ckpt = tmp_path / "ckpt"
    (ckpt / "learner_group").mkdir(parents=True)
    (ckpt / "algorithm_state.pkl").write_bytes(b"state")
    (ckpt / "learner_group" / "module.pt").write_bytes(b"weights")
    write_manifest(ckpt)
    assert verify_checkpoint(ckpt / "learner_group") == ckpt.resolve()
    (ckpt / "learner_group" / "module.pt").write_bytes(b"evil")
    with pytest.raises(CheckpointError, match="changed since it was saved: learner_group/module"):
        verify_checkpoint(ckpt)
    (ckpt / "learner_group" / "module.pt").write_bytes(b"weights")
    (ckpt / "extra.pkl").write_bytes(b"code")
    with pytest.raises(CheckpointError, match="added since it was saved: extra.pkl"):
        verify_checkpoint(ckpt)
    (ckpt / "extra.pkl").unlink()
    (ckpt / "algorithm_state.pkl").unlink()
    with pytest.raises(CheckpointError, match="missing since it was saved: algorithm_state"):
        verify_checkpoint(ckpt)
    bare = tmp_path / "bare"
    bare.mkdir()
    assert verify_checkpoint(bare) is None
    with pytest.raises(CheckpointError, match="no checkpoint_manifest.json, cannot verify"):
        verify_checkpoint(bare, required=True)


def test_a_project_checkpoint_without_its_manifest_is_refused(hierarchy_checkpoint, caplog):
    """Deleting the manifest does not turn off the checksum check: a folder carrying the
    project's metadata needs it (one line, before anything is unpickled); a foreign RLlib
    checkpoint (no metadata) still loads, with a one-line warning."""
    from rl_trading.artifacts import CONFIG_FILE, MANIFEST_FILE, write_manifest
    from rl_trading.evaluation.policy import load_policy

    cfg, ckpt = hierarchy_checkpoint
    with caplog.at_level("WARNING", logger="rl_trading.artifacts"):
        assert set(load_policy(ckpt, cfg).modules) >= {"meta"}  # foreign: loads, warned
    assert any("no checkpoint_manifest.json" in r.getMessage() for r in caplog.records)

    (ckpt / CONFIG_FILE).write_text(json.dumps({"config": {}}))
    write_manifest(ckpt)
    assert set(load_policy(ckpt, cfg).modules) >= {"meta"}
    (ckpt / MANIFEST_FILE).unlink()
    for source in (ckpt, ckpt / "learner_group" / "learner" / "rl_module" / "meta"):
        with pytest.raises(CheckpointError, match="no checkpoint_manifest.json although it "
                           "carries training_config.json") as err:  # fmt: skip
            load_policy(source, cfg)
        assert "\n" not in str(err.value)


def _restore_in_fresh_process(ckpt: Path, extra: str = "", **names: Path) -> str:
    head = "".join(f"{k} = {str(v)!r}\n" for k, v in {"CKPT": ckpt, **names}.items())
    code = head + SNIPPET + textwrap.dedent(extra)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local"}
    env.pop("PYTHONHASHSEED", None)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ckpt.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


CHECK = """
import torch
obs_dim = module.observation_space.shape[0]
out = module.forward_inference({"obs": torch.zeros((1, obs_dim))})
assert "action_dist_inputs" in out, out.keys()
assert result["training_iteration"] >= 1
print("RESTORED", result["training_iteration"], result["env_runners"]["num_env_steps_sampled"])
algo.stop()
phase1 = Algorithm.from_checkpoint(PHASE1)
assert phase1.train()["training_iteration"] >= 1
phase1.stop()
print("PHASE1 RESTORED")
"""


@pytest.fixture(scope="module")
def pipeline_run(ray_session, tmp_path_factory):
    """A tiny `train pipeline` (phases 1-3) through the data layer, shared by the tests below."""
    from rl_trading.training.session import train

    cfg = _cfg()
    run_dir, results = train(
        cfg, (1, 2, 3), run_dir=tmp_path_factory.mktemp("ckpt") / "run", tracking=False
    )
    return cfg, {name: Path(r.best_checkpoint) for name, r in results.items()}


@pytest.mark.rllib
def test_fresh_process_restores_and_trains_a_pipeline_checkpoint(pipeline_run):
    from rl_trading.artifacts import read_metadata, verify_checkpoint

    cfg, ckpts = pipeline_run
    train_bars, _, _ = _splits(cfg)
    for name in ("phase1", "phase3"):
        ckpt = ckpts[name]
        verify_checkpoint(ckpt, required=True)
        meta = read_metadata(ckpt)
        assert meta["config"]["data"]["symbols"] == ["AAA", "BBB"]
        assert set(meta["preprocessing"]["scalers"]) == {"AAA", "BBB"}
        assert meta["data_ref"]["n_bars"] == len(train_bars["AAA"])
        assert meta["preprocessing"]["train_end"] == str(train_bars["AAA"].index[-1])
        # no bars pickled: the config pickle is small and no file holds the price series
        assert (ckpt / "class_and_ctor_args.pkl").stat().st_size < 60_000
        closes = train_bars["AAA"]["close"].to_numpy("float64")[100:108].tobytes()
        for path in ckpt.rglob("*"):
            assert not path.is_file() or closes not in path.read_bytes(), path
    out = _restore_in_fresh_process(ckpts["phase3"], CHECK, PHASE1=ckpts["phase1"])
    assert "RESTORED" in out and "PHASE1 RESTORED" in out


def _backtest(capsys, *args: str) -> tuple[int, str]:
    from rl_trading.cli.main import main

    capsys.readouterr()
    rc = main(["backtest", "--folds", "1", "--seeds", "0", *args])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.mark.rllib
def test_backtest_uses_the_stored_config_and_guards_the_training_range(
    pipeline_run, tmp_path, capsys, monkeypatch
):
    import shutil

    monkeypatch.setenv("RL_TRADING_WORKSPACE", str(tmp_path))
    _, ckpts = pipeline_run
    ckpt = str(ckpts["phase3"])
    # no -c: the checkpoint's own config (2 synthetic symbols, not the defaults' eight)
    rc, out = _backtest(capsys, "--checkpoint", ckpt, "--split", "test", "--out", str(tmp_path))
    assert rc == 0, out
    meta = json.loads((tmp_path / "report.json").read_text())["meta"]
    assert meta["symbols"] == ["AAA", "BBB"] and meta["scaler_origin"] == "policy preprocessing"
    assert meta["config"] == "training config stored with the policy"
    assert "training_overlap" not in meta
    # the training split overlaps the training range: refused, unless --allow-overlap
    rc, out = _backtest(capsys, "--checkpoint", ckpt, "--split", "train", "--out", str(tmp_path))
    assert rc != 0 and "training range" in out and "--allow-overlap" in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
    rc, out = _backtest(
        capsys, "--checkpoint", ckpt, "--split", "train", "--allow-overlap", "--out", str(tmp_path)
    )
    assert rc == 0, out
    meta = json.loads((tmp_path / "report.json").read_text())["meta"]
    assert "training range" in meta["training_overlap"]
    # other symbols than the model's: one line naming both
    rc, out = _backtest(capsys, "--checkpoint", ckpt, "--set", "data.symbols=[AAA]")
    assert rc != 0 and "['AAA', 'BBB']" in out and "['AAA']" in out, out
    # a file changed after saving: one line naming it, before anything is unpickled
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    state = next(copy.rglob("module_state.pkl"))
    state.write_bytes(state.read_bytes() + b"\0")
    rc, out = _backtest(capsys, "--checkpoint", str(copy), "--split", "test")
    assert rc != 0 and "changed since it was saved" in out and "module_state.pkl" in out, out
