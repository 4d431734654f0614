"""The supervised CNN-LSTM as the specialists' encoder (`--cnn-lstm-model`, issue 15 item 1):
the module maps the env's window to the supervised input exactly, a frozen encoder stays
bit-identical through training and is in no optimizer, a fine-tuned one trains at its own lr,
mismatches are one-line errors before Ray starts, and the registry records the lineage."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_trading.config import AppConfig, load_config
from rl_trading.data.features import FEATURE_COLUMNS, FeatureScaler
from rl_trading.supervised.encoder import EncoderSource, encoder_model_config
from rl_trading.supervised.models import build_cnn_lstm_net

WINDOW, CHANNELS, HIDDEN = 4, 3, 5


def _source(n_feat: int, seed: int = 0, features: list[str] | None = None) -> tuple:
    """A supervised CNN-LSTM (random weights) with a scaler fit on random data."""
    torch.manual_seed(seed)
    net = build_cnn_lstm_net(n_feat, CHANNELS, HIDDEN)
    rng = np.random.default_rng(seed)
    scaler = FeatureScaler().fit(rng.normal(0.3, 2.0, size=(500, n_feat)))
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    src = EncoderSource(
        name="cnn_lstm_test",
        version="1.0.0",
        sha256="ab" * 32,
        features=features or [f"f{i}" for i in range(n_feat)],
        window=WINDOW,
        timeframe="1d",
        channels=CHANNELS,
        hidden=HIDDEN,
        scaler=scaler,
        state={k: v for k, v in state.items() if not k.startswith("head.")},
    )
    return src, net


def _module(source, env_scaler, encoder_lr, n_feat_env, n_extra=2):
    from policies.pretrained import PretrainedCNNLSTMModule

    obs = gym.spaces.Box(-np.inf, np.inf, (WINDOW * n_feat_env + n_extra,), np.float32)
    act = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    enc = encoder_model_config(source, env_scaler, encoder_lr)
    cfg = {"window_size": WINDOW, "n_features": n_feat_env, "hidden_sizes": [8], "encoder": enc}
    return PretrainedCNNLSTMModule(observation_space=obs, action_space=act, model_config=cfg)


def test_module_feeds_the_supervised_net_its_own_inputs():
    n = 3
    source, net = _source(n)
    rng = np.random.default_rng(1)
    env_scaler = FeatureScaler().fit(rng.normal(-1.0, 0.5, size=(400, n)))
    module = _module(source, env_scaler, None, n_feat_env=n + 1)  # + one sig_* column
    raw = rng.normal(0.0, 1.0, size=(16, WINDOW, n))
    env_seq = env_scaler.transform(raw.reshape(-1, n)).reshape(16, WINDOW, n)
    sig = rng.uniform(-0.5, 0.5, size=(16, WINDOW, 1)).astype(np.float32)
    extra = rng.normal(size=(16, 2)).astype(np.float32)
    obs = np.concatenate([np.concatenate([env_seq, sig], -1).reshape(16, -1), extra], -1)
    seq = torch.from_numpy(obs[:, : WINDOW * (n + 1)]).reshape(16, WINDOW, n + 1)
    with torch.no_grad():
        feats = module._encoder(seq)
        want = net(torch.from_numpy(source.scaler.transform(raw)))  # the supervised logits
        got = net.head(feats)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the sig_* column of the last step and the extra state reach the fusion MLPs
    assert module._pi_fuse[0].in_features == HIDDEN + 1 + 2
    out = module.forward_inference({"obs": torch.from_numpy(obs)})
    assert out["actions"].shape == (16, 1)


def test_frozen_and_fine_tuned_parameters():
    source, _ = _source(2)
    frozen = _module(source, FeatureScaler().fit(np.eye(2)), None, 2)
    tuned = _module(source, FeatureScaler().fit(np.eye(2)), 1e-5, 2)
    assert frozen.frozen_encoder and not tuned.frozen_encoder
    enc, rest = frozen.encoder_param_groups()
    assert enc and rest and not any(p.requires_grad for p in enc)
    assert all(p.requires_grad for p in rest)
    enc, _ = tuned.encoder_param_groups()
    assert all(p.requires_grad for p in enc)
    # loaded weights are the supervised ones
    for key, value in source.state.items():
        torch.testing.assert_close(frozen._encoder.state_dict()[key], value, rtol=0, atol=0)


def test_feature_or_window_mismatch_is_a_config_error():
    from rl_trading.errors import ConfigError
    from rl_trading.supervised.encoder import check_encoder

    cfg = AppConfig.model_validate({"train": {"window_size": WINDOW}, "data": {"timeframe": "1d"}})
    good, _ = _source(len(FEATURE_COLUMNS), features=list(FEATURE_COLUMNS))
    check_encoder(good, cfg)
    swapped = list(FEATURE_COLUMNS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    bad, _ = _source(len(FEATURE_COLUMNS), features=swapped)
    with pytest.raises(ConfigError, match="features differ .* at position 0"):
        check_encoder(bad, cfg)
    wide = cfg.model_copy(update={"train": cfg.train.model_copy(update={"window_size": 9})})
    with pytest.raises(ConfigError, match="4-bar windows"):
        check_encoder(good, wide)


def test_encoder_lr_needs_a_model():
    from rl_trading.errors import ConfigError

    with pytest.raises(ConfigError, match="needs policy.cnn_lstm_model"):
        load_config(None, ["policy.encoder_lr=0.001"])


def _encoder_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module._encoder.named_parameters()}


@pytest.mark.rllib
@pytest.mark.parametrize("fast_paths", [True, False])
def test_frozen_stays_bit_identical_fine_tuned_trains_at_its_lr(ray_session, fast_paths):
    """One phase-1 iteration on the stand-in env: specialist_AAA frozen, specialist_BBB
    fine-tuned, in both `resources.rllib_fast_paths` modes (per-module learner path)."""
    from training_standin import standin_factory

    from policies.pretrained import ENCODER_OPTIMIZER, PretrainedCNNLSTMModule
    from rl_trading.training.algo_config import build_phase_config

    cfg = AppConfig.model_validate(
        {
            "seed": 3,
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 2, "lr": 1e-3},
            "policy": {"hidden_sizes": [8]},
            "resources": {"num_env_runners": 0, "rllib_fast_paths": fast_paths},
        }
    )
    factory = standin_factory(episode_length=32)
    source, _ = _source(1)
    identity = FeatureScaler().fit(np.array([[-1.0], [1.0]]))
    factory.encoders = {
        "specialist_AAA": encoder_model_config(source, identity, None),
        "specialist_BBB": encoder_model_config(source, identity, 3e-5),
    }
    algo = build_phase_config(cfg, 1, factory).build_algo()
    try:
        learner = algo.learner_group._learner
        frozen, tuned = learner.module["specialist_AAA"], learner.module["specialist_BBB"]
        assert isinstance(frozen, PretrainedCNNLSTMModule)
        before_f, before_t = _encoder_state(frozen), _encoder_state(tuned)
        rest_before = {k: v.clone() for k, v in frozen._pi_head.state_dict().items()}
        # frozen: no optimizer holds an encoder parameter; fine-tuned: its own one at its lr
        optimized = {
            id(p)
            for opt in learner._optimizer_parameters
            for p in learner._optimizer_parameters[opt]
        }
        assert not optimized & {id(p) for p in frozen._encoder.parameters()}
        assert [n for n, _ in learner.get_optimizers_for_module("specialist_AAA")] == [
            "default_optimizer"
        ]
        enc_opt = learner.get_optimizer("specialist_BBB", ENCODER_OPTIMIZER)
        assert enc_opt.param_groups[0]["lr"] == pytest.approx(3e-5)
        assert {id(p) for p in enc_opt.param_groups[0]["params"]} == {
            id(p) for p in tuned._encoder.parameters()
        }
        default = learner.get_optimizer("specialist_BBB")
        assert default.param_groups[0]["lr"] == pytest.approx(1e-3)
        algo.train()
        for key, value in _encoder_state(frozen).items():
            assert torch.equal(value, before_f[key]), key  # bit-identical
        assert any(not torch.equal(v, before_t[k]) for k, v in _encoder_state(tuned).items())
        assert any(
            not torch.equal(v, rest_before[k]) for k, v in frozen._pi_head.state_dict().items()
        )  # ...while the rest of the frozen-encoder policy trains
        assert enc_opt.param_groups[0]["lr"] == pytest.approx(3e-5)  # kept through the update
        # the env runner acts with the same (synced) frozen encoder
        runner_mod = algo.env_runner.module["specialist_AAA"]
        for key, value in _encoder_state(runner_mod).items():
            assert torch.equal(value, before_f[key]), key
    finally:
        algo.stop()


# --------------------------------------------------------------------------------------------
# Through the registry and the CLI, on the quickstart config
# --------------------------------------------------------------------------------------------

# quickstart observes 1 bar (docs/ablations.md); a CNN-LSTM encoder wants a window
WINDOW_20 = ["train.window_size=20"]
QUICK_TINY = [
    *WINDOW_20,
    "ppo.train_batch_size=128",
    "ppo.minibatch_size=64",
    "ppo.num_epochs=1",
    "policy.hidden_sizes=[8]",
    "resources.num_env_runners=0",
    "phases.phase1_timesteps=256",
    "phases.eval_interval=2",
    "phases.checkpoint_interval=2",
    "tracking.system_metrics=false",
    "evaluation.seeds=[0]",
]


def save_tiny_cnn_lstm(cfg: AppConfig, workspace, window: int):
    """Fit a tiny CNN-LSTM (one epoch) on the quickstart bars, save it through the storage
    layer; returns its version folder."""
    from rl_trading.data import load_market
    from rl_trading.data.features import WARMUP_BARS, compute_features
    from rl_trading.supervised.models import CNNLSTMClassifier, make_windows
    from rl_trading.supervised.storage import save_model

    bars = load_market(cfg)["MSFT"]
    feats = compute_features(bars)[FEATURE_COLUMNS].to_numpy()[WARMUP_BARS:-1]
    up = (np.diff(np.log(bars["close"].to_numpy()))[WARMUP_BARS:] > 0).astype(int)
    model = CNNLSTMClassifier(window=window, channels=4, hidden=6, max_epochs=1, seed=0)
    model.fit(make_windows(feats, window), up)
    meta = {"features": list(FEATURE_COLUMNS)}
    return save_model(model, "cnn_lstm", "1d", meta, workspace / "sup")


def register_tiny_cnn_lstm(cfg: AppConfig, workspace, window: int) -> str:
    """`save_tiny_cnn_lstm`, registered as `register_supervised` does; returns its name."""
    from rl_trading.registry import ModelRegistry

    path = save_tiny_cnn_lstm(cfg, workspace, window)
    rec = ModelRegistry(cfg=cfg).register(
        path,
        model_type="cnn_lstm_1d",
        kind="supervised",
        metrics={"accuracy": 0.52, "best_baseline_accuracy": 0.5},
        signature={"model": "cnn_lstm_1d", "window": window},
        config=cfg,
    )
    return rec.name


def _cli(workspace, *args: str):
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).parent / "rl-trading")
    return subprocess.run([cli, *args], cwd=workspace, capture_output=True, text=True, timeout=300)


def test_cli_refuses_a_mismatch_before_ray_starts(workspace):
    from rl_trading.config import CONFIG_DIR

    quick = str(CONFIG_DIR / "quickstart.yaml")
    cfg = load_config(quick)
    name = register_tiny_cnn_lstm(cfg, workspace, window=5)  # quickstart observes 1 bar
    run_dir = workspace / "run"

    def refused(args: tuple[str, ...], code: int, needle: str) -> None:
        res = _cli(
            workspace, "train", "phase1", "-c", quick, "--run-dir", str(run_dir),
            "--cnn-lstm-model", *args,
        )  # fmt: skip
        err = res.stderr.strip()
        assert res.returncode == code, (res.returncode, err[-2000:])
        assert "Traceback" not in res.stdout + err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], err[-2000:]
        assert not run_dir.exists()  # refused before the run dir, data or Ray

    refused((name,), 2, "trained on 5-bar windows, the observation has train.window_size=1")
    # the same checks in-process (one subprocess above is enough for the CLI's exit path)
    from rl_trading.errors import RegistryError
    from rl_trading.registry import ModelRegistry
    from rl_trading.supervised.encoder import resolve_encoder

    def resolve(model: str, *sets: str):
        return resolve_encoder(load_config(quick, [f"policy.cnn_lstm_model={model}", *sets]))

    with pytest.raises(RegistryError, match="unknown model 'no_such_model'"):
        resolve("no_such_model")
    assert resolve("cnn_lstm_1d", "train.window_size=5").name == name  # family name works
    analyst = workspace / "analyst"  # a supervised model of another type
    analyst.mkdir()
    (analyst / "model.joblib").write_bytes(b"not used")
    (analyst / "metadata.json").write_text('{"model_type": "analyst", "files": {}}')
    ModelRegistry(cfg=cfg).register(
        analyst,
        model_type="analyst_1d",
        kind="supervised",
        metrics={"accuracy": 0.52, "best_baseline_accuracy": 0.5},
    )
    with pytest.raises(RegistryError, match="is a analyst model, not a supervised CNN-LSTM"):
        resolve("analyst_1d")
    stored = [p for p in workspace.rglob("model.pt") if "sup" not in p.parts]
    assert len(stored) == 1
    stored[0].chmod(0o644)
    with open(stored[0], "r+b") as fh:  # a registered weights file changed after the fact
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(RegistryError, match="sha256 mismatch for artifact 'model.pt'"):
        resolve(name, "train.window_size=5")


@pytest.mark.rllib
def test_fine_tuned_phase1_registers_as_hybrid_with_lineage(ray_session, workspace, capsys):
    """Quickstart phase 1 with a fine-tuned encoder: the checkpoint restores with plain
    `RLModule.from_checkpoint`, the encoder moved from the supervised weights, and the
    registry records type `hybrid` with the CNN-LSTM's name, sha256 and mode."""
    from rl_trading.artifacts import read_metadata
    from rl_trading.cli.main import main
    from rl_trading.config import CONFIG_DIR
    from rl_trading.evaluation.registration import register_policy
    from rl_trading.supervised.encoder import load_encoder
    from rl_trading.training.checkpoints import load_module
    from rl_trading.training.session import train

    quick = CONFIG_DIR / "quickstart.yaml"
    name = register_tiny_cnn_lstm(load_config(quick, WINDOW_20), workspace, window=20)
    sets = [*QUICK_TINY, f"policy.cnn_lstm_model={name}", "policy.encoder_lr=0.01"]
    cfg = load_config(quick, sets)
    source = load_encoder(name, cfg)
    _, results = train(cfg, (1,), run_dir=workspace / "run")
    best = results["phase1"].last_checkpoint
    meta = read_metadata(best)["encoder"]
    assert meta == {
        "name": name,
        "version": "1.0.0",
        "sha256": source.sha256,
        "mode": "fine_tuned",
        "encoder_lr": 0.01,
    }
    module = load_module(best, "specialist_MSFT")  # RLModule.from_checkpoint
    assert type(module).__name__ == "PretrainedCNNLSTMModule"
    assert module.model_config["encoder"]["sha256"] == source.sha256
    trained = dict(module._encoder.named_parameters())
    assert any(not torch.equal(trained[k], v) for k, v in source.state.items())

    rec, _ = register_policy(best, cfg, split="val")
    assert rec.model_type == "hybrid"
    assert rec.lineage["encoder"] == meta
    assert main(["models", "info", rec.name, "-c", str(quick)]) == 0
    out = capsys.readouterr().out
    assert name[:20] in out and "fine-tuned, lr 0.01" in out


def test_a_later_phase_needs_the_same_encoder(tmp_path):
    import json

    from rl_trading.errors import ConfigError
    from rl_trading.training.session import check_encoder_continuity
    from rl_trading.training.state import RunState

    frozen = {"name": "cnn", "version": "1.0.0", "sha256": "aa", "mode": "frozen"}
    frozen["encoder_lr"] = None
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "training_config.json").write_text(json.dumps({"config": {}, "encoder": frozen}))
    state = RunState.load(tmp_path / "run")

    def check(want):
        check_encoder_continuity(state, (2,), False, ckpt, want)

    check(frozen)
    check({**frozen, "mode": "fine_tuned", "encoder_lr": 1e-4})  # a new phase may fine-tune
    with pytest.raises(ConfigError, match="trained with --cnn-lstm-model cnn .frozen.*no CNN"):
        check(None)
    with pytest.raises(ConfigError, match="pass the same --cnn-lstm-model"):
        check({**frozen, "sha256": "bb"})
    (ckpt / "training_config.json").write_text(json.dumps({"config": {}}))
    check(None)
    with pytest.raises(ConfigError, match="trained with no CNN-LSTM encoder"):
        check(frozen)


def test_a_pretrained_module_dir_loads_from_a_relative_path(tmp_path, monkeypatch):
    """`models register --checkpoint run/phase1/best` (relative) restores its modules."""
    from rl_trading.evaluation.export import load_module

    source, _ = _source(2)
    module = _module(source, FeatureScaler().fit(np.eye(2)), None, 2)
    module.save_to_path(str(tmp_path / "mod"))
    monkeypatch.chdir(tmp_path)
    loaded = load_module("mod")
    assert type(loaded).__name__ == "PretrainedCNNLSTMModule"
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_train_supervised_register_hands_the_cnn_lstm_to_the_rl_stages(workspace, monkeypatch):
    """Stage 1 -> 2 from the CLI: `train supervised --register` registers the saved CNN-LSTM,
    which `--cnn-lstm-model cnn_lstm_1d` then resolves (training itself is stubbed here: it has
    its own tests; registering and resolving are real)."""
    from rl_trading.cli.main import main
    from rl_trading.config import CONFIG_DIR
    from rl_trading.errors import RegistryError
    from rl_trading.supervised import trainables
    from rl_trading.supervised.encoder import resolve_encoder

    quick = str(CONFIG_DIR / "quickstart.yaml")
    cfg = load_config(quick, WINDOW_20)
    path = save_tiny_cnn_lstm(cfg, workspace, window=20)
    metrics = {"accuracy": 0.56, "best_baseline_accuracy": 0.5, "f1": 0.6}
    record = trainables.SupervisedRecord("cnn_lstm", "1d", "ok", metrics, model_path=str(path))
    out = workspace / "sup_run"
    out.mkdir()
    results = trainables.SupervisedResults([record], out, out / "results.json")
    monkeypatch.setattr(trainables, "train_supervised", lambda *a, **k: results)
    assert main(["train", "supervised", "-c", quick, "--models", "cnn_lstm"]) == 0
    with pytest.raises(RegistryError, match="unknown model"):  # not registered without --register
        resolve_encoder(load_config(quick, [*WINDOW_20, "policy.cnn_lstm_model=cnn_lstm_1d"]))
    assert main(["train", "supervised", "-c", quick, "--models", "cnn_lstm", "--register"]) == 0
    source = resolve_encoder(load_config(quick, [*WINDOW_20, "policy.cnn_lstm_model=cnn_lstm_1d"]))
    assert source.name == "cnn_lstm_1d/1" and source.version == "1.0.0" and source.window == 20
