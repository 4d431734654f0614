"""Model registry: grading boundaries, names, versions, round trip and tamper detection."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from rl_trading.config import AppConfig, load_config
from rl_trading.errors import RegistryError
from rl_trading.registry import (
    GRADES,
    ModelRegistry,
    bump_version,
    grade_rl,
    grade_supervised,
    infer_bump,
    model_name,
    sanitize_name,
    score_to_grade,
)

EV = AppConfig().evaluation
NAME_RE = re.compile(
    r"^[A-Za-z0-9_.+\-]+_v\d+\.\d+\.\d+_grade_(S|A\+|A|A-|B\+|B|B-|C|D|F)_\w+_-?[\d.]+$"
)


def test_score_to_grade_boundaries_and_monotone():
    assert score_to_grade(1.0) == "S"
    assert score_to_grade(0.9999) == "A+"
    assert score_to_grade(0.9) == "A+"
    assert score_to_grade(0.8999) == "A"
    assert score_to_grade(0.5) == "B"
    assert score_to_grade(0.25) == "C"
    assert score_to_grade(0.2499) == "D"
    assert score_to_grade(1e-6) == "D"
    assert score_to_grade(0.0) == "F"
    assert score_to_grade(float("nan")) == "F"
    ranks = [GRADES.index(score_to_grade(i / 1000)) for i in range(1001)]
    assert all(a >= b for a, b in zip(ranks, ranks[1:], strict=False)), "grade not monotone"
    assert {score_to_grade(i / 1000) for i in range(1001)} == set(GRADES)


def test_rl_grade_uses_configured_benchmarks():
    # Both at excellent -> S; either at poor -> F.
    assert grade_rl(2.0, 0.05, EV) == "S"
    assert grade_rl(3.0, 0.01, EV) == "S"
    assert grade_rl(0.5, 0.01, EV) == "F"
    assert grade_rl(2.5, 0.30, EV) == "F"
    assert grade_rl(float("nan"), 0.0, EV) == "F"  # flat strategy: no Sharpe -> F
    # Sharpe 1.25 is half-way between poor (0.5) and excellent (2.0) -> B; drawdown sign-agnostic.
    assert grade_rl(1.25, 0.05, EV) == "B"
    assert grade_rl(1.25, -0.05, EV) == "B"
    # Weakest link: excellent Sharpe, drawdown 0.175 (half-way) -> B.
    assert grade_rl(2.5, 0.175, EV) == "B"
    strict = load_config(overrides=["evaluation.sharpe_excellent=4.0"]).evaluation
    assert grade_rl(2.0, 0.05, strict) != "S"


def test_supervised_grade_boundaries():
    """Graded by the accuracy edge over the model's own best baseline, not over 0.5."""
    assert grade_supervised(0.60, EV) == "S"  # 0.10 over a coin flip
    assert grade_supervised(0.50, EV) == "F"
    assert grade_supervised(0.55, EV) == "B"
    assert grade_supervised(0.40, EV) == "F"
    # the case: 0.512 below the majority baseline's 0.559 is an F, not a D
    assert grade_supervised(0.512, EV, baseline=0.559) == "F"
    assert grade_supervised(0.609, EV, baseline=0.559) == "B"


def test_grade_above_c_needs_dsr_on_untouched_data_and_cash_earns_no_drawdown_credit():
    from rl_trading import metrics as m

    assert grade_rl(2.5, 0.01, EV, dsr=0.99, untouched=True) == "S"
    assert grade_rl(2.5, 0.01, EV, dsr=0.80, untouched=True) == "C"
    assert grade_rl(2.5, 0.01, EV, dsr=None, untouched=True) == "C"
    assert grade_rl(2.5, 0.01, EV, dsr=0.99, untouched=False) == "C"
    assert grade_rl(0.6, 0.01, EV, dsr=0.99, untouched=False) == "D"  # below C: unchanged
    # A policy in cash 95% of the time: tiny raw drawdown, but at matched volatility the
    # same losses are a large drawdown, which is what the grade sees.
    rng = np.random.default_rng(0)
    full = rng.normal(0.0002, 0.01, 2000)
    cash = 0.05 * full
    raw = m.max_drawdown(np.cumprod(1 + cash))
    matched = m.max_drawdown_at_volatility(cash, 252, EV.grade_volatility)
    assert raw < 0.05 < matched
    assert matched == pytest.approx(m.max_drawdown_at_volatility(full, 252, EV.grade_volatility))


def test_name_pattern_and_sanitising():
    name = model_name("hierarchical_ppo", "1.0.0", "B+", "sharpe", 1.2345)
    assert name == "hierarchical_ppo_v1.0.0_grade_B+_sharpe_1.23"
    assert NAME_RE.match(name)
    assert NAME_RE.match(model_name("ppo", "2.1.3", "F", "sharpe", -0.456))
    assert model_name("x", "1.0.0", "F", "sharpe", float("nan")).endswith("_sharpe_nan")
    assert sanitize_name("my/model:v1 x") == "my_model_v1_x"
    assert ".." not in sanitize_name("a..b/../c")
    with pytest.raises(RegistryError):
        model_name("x", "1.0", "A", "sharpe", 1.0)
    with pytest.raises(RegistryError):
        model_name("x", "1.0.0", "Z", "sharpe", 1.0)


def test_version_bump_rules():
    assert bump_version(None, "minor") == "1.0.0"
    assert bump_version("1.2.3", "patch") == "1.2.4"
    assert bump_version("1.2.3", "minor") == "1.3.0"
    assert bump_version("1.2.3", "major") == "2.0.0"
    prev = {
        "rl_trading.signature": "sigA",
        "rl_trading.data_fingerprint": "fp1",
        "rl_trading.config_hash": "c1",
    }
    assert infer_bump(prev, "sigB", "fp1", "c1") == "major"
    assert infer_bump(prev, "sigA", "fp2", "c1") == "minor"
    assert infer_bump(prev, "sigA", "fp1", "c2") == "minor"
    assert infer_bump(prev, "sigA", "fp1", "c1") == "patch"


def _fake_model(root, payload=b"weights-1"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "module_state.pt").write_bytes(payload)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "meta.json").write_text(json.dumps({"k": 1}))
    return root


def test_register_list_info_promote_round_trip(workspace):
    reg = ModelRegistry()
    src = _fake_model(workspace / "ckpt")
    pre = {"features": ["ret_1", "vol_20"], "window": 20, "scaler": {"mean": [0.1], "std": [2.0]}}
    r1 = reg.register(
        src,
        model_type="hierarchical_ppo",
        metrics={"sharpe": 1.3, "max_drawdown": 0.04, "dsr": 0.97},
        lineage={"phase1": "runs/x/phase1", "phase2": "runs/x/phase2"},
        data_fingerprint="fp1",
        preprocessing=pre,
        signature={"obs": 10, "act": 1},
        untouched=True,
        graded_split="test",
        n_trials=3,
    )
    # One registered model per family, MLflow's integer versions; semver etc. in version tags.
    assert r1.name == "hierarchical_ppo/1" and r1.family == "hierarchical_ppo"
    assert r1.uri == "models:/hierarchical_ppo/1"
    assert r1.grade == "B" and r1.version == "1.0.0" and r1.kind == "rl"
    mv = reg.client.get_model_version("hierarchical_ppo", "1")
    assert mv.tags["rl_trading.version"] == "1.0.0" and mv.tags["rl_trading.grade"] == "B"
    assert json.loads(mv.tags["rl_trading.metrics"])["dsr"] == pytest.approx(0.97)
    assert "module_state.pt" in json.loads(mv.tags["rl_trading.sha256_manifest"])
    # Same signature + data + config -> patch; new data -> minor; new signature -> major.
    r2 = reg.register(
        src,
        model_type="hierarchical_ppo",
        metrics={"sharpe": 2.1, "max_drawdown": 0.03, "dsr": 0.99},
        data_fingerprint="fp1",
        signature={"obs": 10, "act": 1},
        untouched=True,
        graded_split="test",
    )
    assert r2.name == "hierarchical_ppo/2" and r2.version == "1.0.1" and r2.grade == "S"
    assert reg.test_split_trials("hierarchical_ppo") == 2  # both graded on the test split
    reg.record_test_selection([r1.name], pbo=0.4)  # e.g. compared in `models benchmark`
    assert reg.test_split_trials("hierarchical_ppo") == 3
    assert reg.info(r1.name).tags["rl_trading.benchmark_pbo"] == "0.4000"
    r3 = reg.register(
        src,
        model_type="hierarchical_ppo",
        metrics={"sharpe": 0.2, "max_drawdown": 0.5},
        data_fingerprint="fp2",
        signature={"obs": 10, "act": 1},
    )
    assert r3.version == "1.1.0" and r3.grade == "F"
    r4 = reg.register(
        src,
        model_type="hierarchical_ppo",
        metrics={"sharpe": 1.0, "max_drawdown": 0.1},
        signature={"obs": 12, "act": 1},
    )
    assert r4.version == "2.0.0" and r4.name == "hierarchical_ppo/4"
    sup = _fake_model(workspace / "sup", b"forest")
    s1 = reg.register(
        sup,
        model_type="analyst_rf",
        kind="supervised",
        metrics={"accuracy": 0.65, "best_baseline_accuracy": 0.60},
    )
    assert s1.name == "analyst_rf/1" and s1.grade == "B"  # +0.05 over its baselines

    # A second registry object (like a later CLI call in the same workspace) sees everything.
    assert set(ModelRegistry().families()) == {"hierarchical_ppo", "analyst_rf"}
    assert [rm.name for rm in reg.client.search_registered_models()] == [
        "analyst_rf",
        "hierarchical_ppo",
    ]
    capped = reg.register(
        src,
        model_type="cash_ppo",
        metrics={"sharpe": 2.5, "max_drawdown": 0.01, "dsr": 0.5},
        untouched=True,
    )
    assert capped.grade == "C" and "DSR" in capped.tags["rl_trading.grade_capped"]
    assert len(reg.list(model_type="hierarchical_ppo")) == 4
    assert len(reg.list()) == 6
    assert [r.name for r in reg.list(grade="S")] == [r2.name]

    info = reg.info(r1.name)
    assert info.lineage["phase1"] == "runs/x/phase1"
    assert info.data_fingerprint == "fp1"
    assert info.metrics["sharpe"] == pytest.approx(1.3)
    assert reg.resolve("hierarchical_ppo").name == r4.name  # newest version of the family
    assert reg.resolve("hierarchical_ppo/latest").name == r4.name
    assert reg.resolve("models:/hierarchical_ppo/2").name == r2.name
    assert reg.load_preprocessing(r1.name) == pre
    loaded = reg.load_path(r1.name)
    assert (loaded / "module_state.pt").read_bytes() == b"weights-1"

    # Aliases: promote sets champion; promoting another moves it; rollback moves it back.
    p = reg.promote(r2.name)
    assert p.aliases == ["champion"] and p.stage == "champion"
    assert reg.resolve("hierarchical_ppo@champion").name == r2.name
    reg.promote(r3.name, alias="challenger")
    reg.promote(r1.name)
    assert reg.resolve("hierarchical_ppo@champion").name == r1.name
    assert "champion" not in reg.info(r2.name).aliases
    assert reg.info(r2.name).stage == "archived"
    assert reg.resolve("models:/hierarchical_ppo@challenger").name == r3.name
    back = reg.rollback("hierarchical_ppo")
    assert back.name == r2.name and reg.resolve("hierarchical_ppo@champion").name == r2.name
    with pytest.raises(RegistryError, match="no earlier holder"):
        reg.rollback("hierarchical_ppo")

    # Plain MLflow resolves the alias URI to the same verified files.
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=reg.uri, registry_uri=reg.uri)
    assert str(client.get_model_version_by_alias("hierarchical_ppo", "champion").version) == "2"
    mlflow.set_registry_uri(reg.uri)
    plain = mlflow.artifacts.download_artifacts("models:/hierarchical_ppo@champion")
    assert (Path(plain) / "module_state.pt").read_bytes() == b"weights-1"

    with pytest.raises(RegistryError, match="unknown model"):
        reg.info("nope")
    # a registered model made outside rl-trading with a family's name is adopted, not hidden
    reg.client.create_registered_model("made_in_ui")
    adopted = reg.register(src, model_type="made_in_ui", metrics={"sharpe": 1, "max_drawdown": 0})
    assert adopted.name == "made_in_ui/1" and reg.resolve("made_in_ui").name == "made_in_ui/1"
    with pytest.raises(RegistryError, match="no version 9"):
        reg.info("hierarchical_ppo/9")
    with pytest.raises(RegistryError, match="alias 'gone'"):
        reg.info("hierarchical_ppo@gone")
    with pytest.raises(RegistryError):
        reg.register(
            workspace / "missing", model_type="x", metrics={"sharpe": 1, "max_drawdown": 0}
        )


def test_old_layout_store_is_read_and_migrated(workspace, capsys):
    """A store written before families (one registered model per registration, tags on the
    registered model) is read as it is, then `migrate` adds each to its family."""
    import mlflow

    reg = ModelRegistry()
    src = _fake_model(workspace / "ckpt")
    manifest = {"module_state.pt": "", "sub/meta.json": ""}
    from rl_trading.registry import _manifest_digest, checksum_manifest

    manifest = checksum_manifest(src)
    mlflow.set_experiment("model_registry")
    olds = []
    for i, (semver, sharpe) in enumerate([("1.0.0", 1.28), ("1.0.1", 1.5)]):
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(src), artifact_path="model")
        name = model_name("hierarchical_ppo", semver, "C", "sharpe", sharpe)
        tags = {
            "rl_trading.model_type": "hierarchical_ppo",
            "rl_trading.kind": "rl",
            "rl_trading.version": semver,
            "rl_trading.grade": "C",
            "rl_trading.metric_name": "sharpe",
            "rl_trading.metric_value": repr(sharpe),
            "rl_trading.metrics": json.dumps({"sharpe": sharpe, "max_drawdown": 0.1}),
            "rl_trading.created": f"2026-01-0{i + 1}T00:00:00.000000Z",
            "rl_trading.stage": "none",
        }
        reg.client.create_registered_model(name, tags=tags)
        reg.client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/model",
            run_id=run.info.run_id,
            tags={
                "rl_trading.sha256_manifest": json.dumps(manifest, sort_keys=True),
                "rl_trading.manifest_sha256": _manifest_digest(manifest),
            },
        )
        olds.append(name)
    reg.client.set_registered_model_alias(olds[0], "production", "1")

    # read as it is: old names resolve, the type resolves to the newest, files verify
    assert [r.legacy for r in reg.list()] == [True, True]
    assert reg.resolve(olds[0]).version == "1.0.0"
    assert reg.resolve("hierarchical_ppo").name == olds[1]
    assert reg.resolve("hierarchical_ppo@production").name == olds[0]
    assert (reg.load_path(olds[0]) / "module_state.pt").is_file()
    with pytest.raises(RegistryError, match="models migrate"):
        reg.promote(olds[1])
    from rl_trading.cli.main import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "Old layout (read-only)" in out and "rl-trading models migrate" in out
    assert main(["models", "migrate"]) == 0  # = reg.migrate(), oldest first
    out = capsys.readouterr().out
    assert f"{olds[0]} -> hierarchical_ppo/1" in out and f"{olds[1]} -> hierarchical_ppo/2" in out
    assert [r.name for r in reg.list()] == ["hierarchical_ppo/2", "hierarchical_ppo/1"]
    assert reg.resolve(olds[0]).name == "hierarchical_ppo/1"  # old names still work
    assert reg.resolve("hierarchical_ppo@production").name == "hierarchical_ppo/1"
    assert (reg.load_path("hierarchical_ppo/2") / "module_state.pt").is_file()
    assert reg.migrate() == []  # nothing left
    # a new registration continues the family's semantic versions
    new = reg.register(
        src, model_type="hierarchical_ppo", metrics={"sharpe": 1.0, "max_drawdown": 0.1}
    )
    assert new.name == "hierarchical_ppo/3" and new.version == "2.0.0"  # new signature: major


def test_tampered_artifact_raises(workspace):
    reg = ModelRegistry()
    rec = reg.register(
        _fake_model(workspace / "ckpt"),
        model_type="ppo",
        metrics={"sharpe": 1.0, "max_drawdown": 0.1},
    )
    stored = reg.load_path(rec.name)
    target = stored / "module_state.pt"
    target.write_bytes(b"weights-2")
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        reg.load_path(rec.name)
    target.write_bytes(b"weights-1")
    reg.load_path(rec.name)  # restored -> loads again
    (stored / "sub" / "meta.json").unlink()
    with pytest.raises(RegistryError, match="missing"):
        reg.load_path(rec.name)
    (stored / "sub" / "meta.json").write_text(json.dumps({"k": 1}))
    (stored / "evil.py").write_text("print('x')")
    with pytest.raises(RegistryError, match="unexpected"):
        reg.load_path(rec.name)


def test_benchmark_on_test_split_counts_as_selection_and_reports_pbo(monkeypatch):
    """`models benchmark` on the test split: DSR deflated for the models compared, PBO with 4
    or more, and every compared model tagged as selected on the test split."""
    import types

    import rl_trading.cli.models as models_cli
    from rl_trading.cli.models import compare_models

    rng = np.random.default_rng(0)
    seen: dict = {"n_trials": [], "tagged": None}

    def fake_backtest(name, bars, cfg, seed=0, scaler_bars=None, n_trials=1):
        seen["n_trials"].append(n_trials)
        run = types.SimpleNamespace(returns=rng.normal(0, 0.01, 400))
        mets = {"sharpe_ratio": 0.0}
        return types.SimpleNamespace(
            metrics={"policy": mets},
            runs={"policy": run},
            targets={"policy": {"sharpe_ratio": {"pass": False}}},
            meta={"start": "a", "end": "b"},
        )

    class FakeRegistry:
        def __init__(self, cfg=None):
            pass

        def record_test_selection(self, names, pbo=None):
            seen["tagged"] = (list(names), pbo)

    monkeypatch.setattr("rl_trading.evaluation.backtest.backtest", fake_backtest)
    monkeypatch.setattr(
        "rl_trading.evaluation.selection.select_bars",
        lambda cfg, data, split: ({}, {}, "test split"),
    )
    monkeypatch.setattr(models_cli, "ModelRegistry", FakeRegistry)
    names = ["m1", "m2", "m3", "m4", "m5"]
    out = compare_models(names, AppConfig(), None, "test")
    assert seen["n_trials"] == [5] * 5 and out["n_trials"] == 5
    assert 0.0 <= out["pbo"] <= 1.0 and out["selection_on_test"] is True
    assert seen["tagged"] == (names, out["pbo"])


def test_register_policy_keeps_the_checkpoints_stored_preprocessing(hierarchy_checkpoint):
    """A checkpoint registered after bars were appended to its market keeps the scalers,
    training range and fingerprint it was trained with (not ones refit on today's training
    split); the lineage notes the change, and a preprocessing.json already in the folder is
    never overwritten."""
    from rl_trading.artifacts import CONFIG_FILE, PREPROCESSING_FILE, write_manifest
    from rl_trading.data import fingerprint
    from rl_trading.evaluation.registration import register_policy
    from rl_trading.evaluation.selection import select_bars
    from rl_trading.training.preprocessing import training_preprocessing

    cfg, ckpt = hierarchy_checkpoint
    _, train, _ = select_bars(cfg, None, "test")
    stored = json.loads(json.dumps(training_preprocessing(cfg, train), default=str))
    (ckpt / CONFIG_FILE).write_text(json.dumps({"config": {}}))
    (ckpt / PREPROCESSING_FILE).write_text(json.dumps(stored, indent=1, sort_keys=True))
    write_manifest(ckpt)
    before = (ckpt / PREPROCESSING_FILE).read_bytes()

    grown = cfg.model_copy(deep=True)
    grown.data.synthetic.n_bars = 1500  # the market has more bars today
    _, train_now, _ = select_bars(grown, None, "test")
    assert fingerprint(train_now) != stored["train_fingerprint"]
    rec, _ = register_policy(ckpt, grown, split="test")

    reg = ModelRegistry(cfg=grown)
    assert reg.load_preprocessing(rec.name) == stored
    assert rec.data_fingerprint == stored["train_fingerprint"]
    assert rec.lineage["train_split_now"] == fingerprint(train_now)
    assert (ckpt / PREPROCESSING_FILE).read_bytes() == before

    other = {**stored, "train_end": "2099-01-01"}
    with pytest.raises(RegistryError, match="carries its own preprocessing.json"):
        reg.register(
            ckpt,
            model_type="x",
            metrics={"sharpe": 1.0, "max_drawdown": 0.1},
            preprocessing=other,
        )


def test_stage_tags_follow_the_aliases_when_a_version_holds_two(workspace):
    """Every alias move recomputes each version's stage from the aliases it holds now
    (champion before challenger; archived once it holds none)."""
    reg = ModelRegistry()
    for i in range(3):
        reg.register(
            _fake_model(workspace / "m", f"weights {i}".encode()),
            model_type="fam",
            metrics={"sharpe": 1.0 + i, "max_drawdown": 0.1},
        )

    def stages() -> dict[str, str]:
        return {r.name: r.stage for r in reg.list(model_type="fam")}

    reg.promote("fam/1", "champion")
    reg.promote("fam/2", "challenger")
    reg.promote("fam/2", "champion")  # 2 holds both
    assert stages() == {"fam/1": "archived", "fam/2": "champion", "fam/3": "none"}
    reg.rollback("fam", "champion")  # 2 keeps challenger only
    assert stages() == {"fam/1": "champion", "fam/2": "challenger", "fam/3": "none"}
    reg.promote("fam/3", "champion")
    reg.promote("fam/3", "challenger")  # 3 holds both, 2 holds none
    assert stages() == {"fam/1": "archived", "fam/2": "archived", "fam/3": "champion"}
    reg.promote("fam/1", "challenger")
    assert stages() == {"fam/1": "challenger", "fam/2": "archived", "fam/3": "champion"}
