"""Supervised models: targets, honest metrics/baselines, scaler on train only, save/load."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rl_trading.config import AppConfig
from rl_trading.data import FEATURE_COLUMNS, WARMUP_BARS, synthetic_market
from rl_trading.errors import CheckpointError
from rl_trading.supervised import storage
from rl_trading.supervised.api import load_model, predict_proba
from rl_trading.supervised.dataset import (
    TimeframeFrames,
    build_dataset,
    feature_frame,
    prepare_timeframes,
    train_test_split_by_time,
)
from rl_trading.supervised.fitting import fit_and_score
from rl_trading.supervised.models import default_params, make_windows
from rl_trading.supervised.scoring import (
    baseline_metrics,
    classification_metrics,
    time_groups_split,
)
from rl_trading.supervised.targets import direction_target, previous_direction


def _close(values: list[float]) -> pd.Series:
    idx = pd.date_range("2024-01-01", periods=len(values), freq="1min", tz="UTC")
    return pd.Series(values, index=idx, dtype="float64")


def test_direction_target_and_dead_zone() -> None:
    close = _close([1.0, 2.0, 2.0, 1.5, 1.6])  # forward returns: +1, 0, -0.25, +0.0667, nan
    got = direction_target(close, horizon=1, dead_zone=0.0).to_numpy()
    np.testing.assert_array_equal(got, [1.0, np.nan, 0.0, 1.0, np.nan])
    got = direction_target(close, horizon=1, dead_zone=0.1).to_numpy()
    np.testing.assert_array_equal(got, [1.0, np.nan, 0.0, np.nan, np.nan])
    got = direction_target(close, horizon=2, dead_zone=0.0).to_numpy()  # +1, -0.25, -0.2
    np.testing.assert_array_equal(got, [1.0, 0.0, 0.0, np.nan, np.nan])


def test_previous_direction_looks_backwards_only() -> None:
    close = _close([1.0, 2.0, 2.0, 1.5, 1.6])
    np.testing.assert_array_equal(
        previous_direction(close, 1).to_numpy(), [np.nan, 1.0, np.nan, 0.0, 1.0]
    )


def test_metrics_and_baselines_on_toy_series() -> None:
    m = classification_metrics([1, 0, 1, 1], [1, 1, 0, 1])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # Training majority is 'down' (0); prev-direction NaN falls back to it.
    b = baseline_metrics([0, 0, 1], [1, 0, 0, 1, 0], [1, np.nan, 0, 0, 1])
    assert b["majority_accuracy"] == pytest.approx(3 / 5)
    assert b["majority_recall"] == 0.0
    # prev -> [1, 0, 0, 0, 1] vs [1, 0, 0, 1, 0]: 3 of 5 right, one TP of two ups.
    assert b["prev_direction_accuracy"] == pytest.approx(3 / 5)
    assert b["prev_direction_recall"] == pytest.approx(1 / 2)
    assert b["prev_direction_precision"] == pytest.approx(1 / 2)


def test_splits_are_time_ordered_with_embargo() -> None:
    times = np.repeat(np.arange(100), 2)  # two symbols share every timestamp
    train, test = train_test_split_by_time(times, test_size=0.2, gap=3)
    assert times[test].min() == 80 and times[train].max() == 76
    for tr, va in time_groups_split(times, n_splits=4, gap=2):
        assert times[tr].max() + 2 < times[va].min()
        assert not set(times[tr]) & set(times[va])


def test_windows_are_causal() -> None:
    feats = np.arange(12, dtype=float).reshape(6, 2)
    w = make_windows(feats, 3)
    assert w.shape == (6, 3, 2)
    np.testing.assert_array_equal(w[4], feats[2:5])
    np.testing.assert_array_equal(w[0], np.repeat(feats[:1], 3, axis=0))  # edge padding


@pytest.fixture(scope="module")
def frames() -> TimeframeFrames:
    bars = synthetic_market(["A", "B"], n_bars=1500, seed=5, signal_strength=0.5)
    return TimeframeFrames(
        "1m", {s: feature_frame(b, 1, 0.0) for s, b in bars.items()}, list(FEATURE_COLUMNS), "fp"
    )


def _small_params(model_type: str) -> dict:
    params = default_params(model_type, AppConfig())
    if model_type == "cnn_lstm":
        params.update(window=8, channels=8, hidden=8, max_epochs=3, batch_size=128)
    else:
        params["n_estimators"] = 15
    return params


def test_pipeline_scaler_is_fit_on_train_rows_only(frames: TimeframeFrames) -> None:
    res = fit_and_score(
        "analyst", frames, _small_params("analyst"), test_size=0.25, cv_splits=2, horizon=1, seed=0
    )
    ds = build_dataset(frames, "analyst")
    train, test = train_test_split_by_time(ds.times, 0.25, 1)
    scaler = res.model.named_steps["scaler"]
    np.testing.assert_allclose(scaler.mean_, ds.x[train].mean(axis=0))
    assert not np.allclose(scaler.mean_, ds.x.mean(axis=0))
    assert res.metrics["n_train"] == len(train) and res.metrics["n_test"] == len(test)
    assert 0.0 <= res.metrics["accuracy"] <= 1.0 and res.metrics["cv_folds"] == 2
    assert set(res.importances) == set(FEATURE_COLUMNS)
    assert sum(res.importances.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("model_type", ["analyst", "tactician", "cnn_lstm"])
def test_save_load_round_trip_identical_predictions(
    model_type: str, frames: TimeframeFrames, tmp_path
) -> None:
    res = fit_and_score(
        model_type,
        frames,
        _small_params(model_type),
        test_size=0.2,
        cv_splits=2,
        horizon=1,
        seed=0,
        run_cv=False,
    )
    meta = {**res.info, "horizon": 1, "dead_zone": 0.0, "metrics": res.metrics}
    folder = storage.save_model(res.model, model_type, "1m", meta, tmp_path)
    saved = json.loads((folder / "metadata.json").read_text())
    for key in (
        "model_type",
        "timeframe",
        "features",
        "horizon",
        "dead_zone",
        "created_at",
        "data_fingerprint",
        "train_range",
        "test_range",
        "package_versions",
        "metrics",
    ):
        assert key in saved, key
    assert saved["metrics"]["accuracy"] == pytest.approx(res.metrics["accuracy"])

    window = int(res.info["params"].get("window", 1))
    ds = build_dataset(frames, model_type, window)
    expected = res.model.predict_proba(ds.x[:200])
    loaded = storage.load_saved(model_type, "1m", tmp_path)
    np.testing.assert_array_equal(loaded.estimator.predict_proba(ds.x[:200]), expected)
    model, pre = load_model(model_type, "1m", tmp_path)
    if model_type == "cnn_lstm":
        import torch

        with torch.no_grad():
            logits = model(torch.from_numpy(pre.transform(ds.x[:200])))
        np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), expected, rtol=1e-6)
    else:
        np.testing.assert_array_equal(pre.predict_proba(ds.x[:200]), expected)
        assert model is pre.named_steps["model"]


def test_predict_proba_api_and_atomic_save(frames: TimeframeFrames, tmp_path, monkeypatch) -> None:
    bars = synthetic_market(["A"], n_bars=600, seed=9)["A"]
    tf_frames = prepare_timeframes({"A": bars}, ["1m", "5m"], horizon=1, dead_zone=0.0)
    assert tf_frames["5m"].note.startswith("skipped") and not tf_frames["5m"].frames
    res = fit_and_score(
        "analyst",
        frames,
        _small_params("analyst"),
        test_size=0.2,
        cv_splits=2,
        horizon=1,
        seed=0,
        run_cv=False,
    )
    first = storage.save_model(res.model, "analyst", "1m", {"params": {}}, tmp_path)
    proba = predict_proba("analyst", "1m", bars, tmp_path)
    assert proba.index.equals(bars.index)
    assert proba.iloc[:WARMUP_BARS].isna().all() and proba.iloc[WARMUP_BARS:].between(0, 1).all()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "_write_model_files", boom)
    with pytest.raises(OSError):
        storage.save_model(res.model, "analyst", "1m", {}, tmp_path)
    assert storage.current_version_dir("analyst", "1m", tmp_path) == first
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".tmp")]
    pd.testing.assert_series_equal(predict_proba("analyst", "1m", bars, tmp_path), proba)

    (first / "model.joblib").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError):
        load_model("analyst", "1m", tmp_path)
    with pytest.raises(CheckpointError):
        load_model("tactician", "1h", tmp_path)


def test_fit_reports_every_cv_fold_and_cnn_lstm_epoch(frames: TimeframeFrames) -> None:
    """The progress hooks a Tune trial reports through: running CV summaries, then one call
    per epoch of the CNN-LSTM's final fit with the net as trained so far."""
    folds, epochs = [], []

    def on_epoch(model, epoch, val_loss):
        epochs.append((epoch, val_loss, model.net.training))

    res = fit_and_score(
        "cnn_lstm",
        frames,
        _small_params("cnn_lstm"),
        test_size=0.2,
        cv_splits=3,
        horizon=1,
        seed=0,
        on_fold=folds.append,
        on_epoch=on_epoch,
    )
    assert [f["cv_folds"] for f in folds] == list(range(1, res.metrics["cv_folds"] + 1))
    assert folds[-1]["cv_accuracy_mean"] == res.metrics["cv_accuracy_mean"]
    # the final fit only (CV folds are their own reports), every epoch, net in eval mode
    assert [e for e, _, _ in epochs] == list(range(1, res.info["epochs_trained"] + 1))
    assert all(v is not None and np.isfinite(v) and not training for _, v, training in epochs)


def test_install_model_folder_checks_sums_and_becomes_current(
    frames: TimeframeFrames, tmp_path
) -> None:
    """A trial checkpoint (write_model_folder) installed as the current version; a tampered or
    mismatched one is refused."""
    res = fit_and_score(
        "analyst",
        frames,
        _small_params("analyst"),
        test_size=0.2,
        cv_splits=2,
        horizon=1,
        seed=0,
        run_cv=False,
    )
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    storage.write_model_folder(res.model, "analyst", "1m", {"metrics": res.metrics}, ckpt)
    folder = storage.install_model_folder(ckpt, "analyst", "1m", tmp_path / "models")
    loaded = storage.load_saved("analyst", "1m", tmp_path / "models")
    assert loaded.path == folder and loaded.metadata["version"] == folder.name
    ds = build_dataset(frames, "analyst")
    np.testing.assert_array_equal(
        loaded.estimator.predict_proba(ds.x[:50]), res.model.predict_proba(ds.x[:50])
    )
    with pytest.raises(CheckpointError, match="not cnn_lstm"):
        storage.install_model_folder(ckpt, "cnn_lstm", "1m", tmp_path / "models")
    (ckpt / "model.joblib").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="checksum"):
        storage.install_model_folder(ckpt, "analyst", "1m", tmp_path / "models")
    assert storage.load_saved("analyst", "1m", tmp_path / "models").path == folder


def test_search_is_optuna_with_asha_and_takes_the_best_finished_trial() -> None:
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from rl_trading.errors import RLTradingError
    from rl_trading.supervised.trainables import (
        SEARCH_METRIC,
        SupervisedRecord,
        SupervisedResults,
        best_finished,
        max_reports,
        search_tune_config,
    )

    assert max_reports("cnn_lstm", 3, 10) == 14 and max_reports("analyst", 3, 10) == 4
    tc = search_tune_config("cnn_lstm", 4, 0, 14)
    assert isinstance(tc.search_alg, OptunaSearch) and tc.num_samples == 4
    assert isinstance(tc.scheduler, ASHAScheduler)
    assert tc.scheduler.metric == SEARCH_METRIC and tc.scheduler._max_t == 14

    def res(cv, report="final", ckpt="c"):
        metrics = {SEARCH_METRIC: cv, "report": report}
        return SimpleNamespace(
            error=None, checkpoint=ckpt and SimpleNamespace(path=ckpt), metrics=metrics
        )

    stopped = res(0.9, report="cv_fold", ckpt="stopped")  # ASHA cut it: a running mean only
    grid = [res(0.6, ckpt="a"), stopped, res(0.7, ckpt="b"), res(float("nan"), ckpt="n")]
    assert best_finished(grid, "analyst", "1m").checkpoint.path == "b"
    with pytest.raises(RLTradingError, match="no finished trial"):
        best_finished([stopped], "analyst", "1m")
    # the registry gets the trial's checkpoint; load_model reads the installed copy
    rec = SupervisedRecord("analyst", "1m", "ok", model_path="/m", checkpoint="/ckpt")
    saved = SupervisedResults([rec], None, None).saved_models()["analyst_1m"]
    assert saved["path"] == "/ckpt" and saved["model_path"] == "/m"
