"""Saving and loading fitted supervised models, atomically, with a metadata JSON.

Layout: ``<models_dir>/<model_type>_<timeframe>/<version>/`` holds the model files and
``metadata.json``; ``current.json`` beside the versions names the live one. A version folder is
written under a temporary name and renamed into place, then ``current.json`` is replaced with
``os.replace``, so a crash at any moment leaves the previous model loadable and never a
half-written one. The three newest versions are kept.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import pandas

from rl_trading.artifacts import sha256_file as _sha256  # the one file hash
from rl_trading.data.features import FeatureScaler
from rl_trading.errors import CheckpointError
from rl_trading.supervised.models import CNNLSTMClassifier, build_cnn_lstm_net
from rl_trading.tracking import workspace
from rl_trading.version import __version__

KEEP_VERSIONS = 3
METADATA_FILE = "metadata.json"
CURRENT_FILE = "current.json"


def default_models_dir() -> Path:
    """``<workspace>/models/supervised`` (the workspace is the current directory)."""
    return workspace() / "models" / "supervised"


def model_dir(model_type: str, timeframe: str, models_dir: str | Path | None = None) -> Path:
    """Folder of one model type at one timeframe (holds its versions)."""
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    return root / f"{model_type}_{timeframe}"


def package_versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on."""
    import sklearn  # heavy: sklearn
    import torch  # heavy: torch

    return {
        "rl_trading": __version__,
        "scikit-learn": sklearn.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
    }


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _write_model_files(model: Any, model_type: str, folder: Path) -> None:
    if model_type == "cnn_lstm":
        import torch  # heavy: torch

        torch.save(model.net.state_dict(), folder / "model.pt")
        (folder / "scaler.json").write_text(json.dumps(model.scaler.to_dict()))
        net_cfg = {"params": model.params, "seed": model.seed, "n_features": model.n_features}
        (folder / "net_config.json").write_text(json.dumps(net_cfg))
    else:
        import joblib  # heavy: joblib (sklearn's model files)

        joblib.dump(model, folder / "model.joblib")


def save_model(
    model: Any,
    model_type: str,
    timeframe: str,
    metadata: dict[str, Any],
    models_dir: str | Path | None = None,
) -> Path:
    """Save a fitted model + metadata as the new current version; returns its folder."""
    now = _dt.datetime.now(_dt.UTC)

    def fill(tmp: Path, version: str) -> None:
        tmp.mkdir()
        write_model_folder(model, model_type, timeframe, metadata, tmp, version, now)

    return _publish(model_dir(model_type, timeframe, models_dir), now, fill)


def _publish(base: Path, now: _dt.datetime, fill: Any) -> Path:
    """A new version folder under `base`: `fill(tmp, version)` writes it in a temp folder,
    which is renamed into place and made current (nothing half-written is ever current)."""
    base.mkdir(parents=True, exist_ok=True)
    version = f"v-{now.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    tmp = base / f".tmp-{version}"
    try:
        fill(tmp, version)
        final = base / version
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _make_current(base, version)
    return final


def _check_files(folder: Path, meta: dict[str, Any]) -> None:
    """CheckpointError unless every file `meta` lists is in `folder` with its sha256."""
    for name, digest in meta.get("files", {}).items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            raise CheckpointError(f"{path} is missing or does not match its checksum")


def write_model_folder(
    model: Any,
    model_type: str,
    timeframe: str,
    metadata: dict[str, Any],
    folder: Path,
    version: str = "unversioned",
    now: _dt.datetime | None = None,
) -> Path:
    """The model files and `metadata.json` (with their sha256) into an existing `folder`,
    the layout `load_saved` reads (also a Tune trial's checkpoint)."""
    now = now or _dt.datetime.now(_dt.UTC)
    _write_model_files(model, model_type, folder)
    meta = {
        "model_type": model_type,
        "timeframe": timeframe,
        "version": version,
        "created_at": now.isoformat(),
        "package_versions": package_versions(),
        **metadata,
    }
    meta["files"] = {
        p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.name != METADATA_FILE
    }
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
    return folder


def install_model_folder(
    source: str | Path, model_type: str, timeframe: str, models_dir: str | Path | None = None
) -> Path:
    """Copy a model folder (e.g. the best Tune trial's checkpoint) in as the new current
    version, after checking its files against their sha256; returns the version folder."""
    source = Path(source)
    meta_file = source / METADATA_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{source} holds no {METADATA_FILE}: not a saved model")
    meta = json.loads(meta_file.read_text())
    if (meta.get("model_type"), meta.get("timeframe")) != (model_type, timeframe):
        raise CheckpointError(f"{source} is a {meta.get('model_type')} model, not {model_type}")
    _check_files(source, meta)

    def fill(tmp: Path, version: str) -> None:
        shutil.copytree(source, tmp)
        meta["version"] = version
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))

    return _publish(model_dir(model_type, timeframe, models_dir), _dt.datetime.now(_dt.UTC), fill)


def _make_current(base: Path, version: str) -> None:
    """Point `current.json` at `version`; keep the newest `KEEP_VERSIONS` versions."""
    _write_json_atomic(base / CURRENT_FILE, {"version": version})
    versions = sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("v-"))
    for old in versions[:-KEEP_VERSIONS]:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class SavedModel:
    """A loaded model: the sklearn-style estimator (``predict_proba``), metadata and folder."""

    estimator: Any
    metadata: dict[str, Any]
    path: Path


def current_version_dir(
    model_type: str, timeframe: str, models_dir: str | Path | None = None
) -> Path:
    """Folder of the current version; CheckpointError when there is none."""
    base = model_dir(model_type, timeframe, models_dir)
    current = base / CURRENT_FILE
    if not current.is_file():
        raise CheckpointError(
            f"no saved {model_type} model for timeframe {timeframe} in {base.parent} "
            "(run `rl-trading train supervised` first)"
        )
    try:
        version = json.loads(current.read_text())["version"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{current} is corrupt ({exc})") from None
    folder = base / version
    if not (folder / METADATA_FILE).is_file():
        raise CheckpointError(f"saved model folder {folder} is missing or incomplete")
    return folder


def load_saved(model_type: str, timeframe: str, models_dir: str | Path | None = None) -> SavedModel:
    """Load the current version, checking every file against its recorded sha256."""
    folder = current_version_dir(model_type, timeframe, models_dir)
    meta = json.loads((folder / METADATA_FILE).read_text())
    _check_files(folder, meta)
    if model_type == "cnn_lstm":
        import torch  # heavy: torch

        net_cfg = json.loads((folder / "net_config.json").read_text())
        est = CNNLSTMClassifier(**net_cfg["params"], seed=net_cfg["seed"])
        est.n_features = net_cfg["n_features"]
        est.scaler = FeatureScaler.from_dict(json.loads((folder / "scaler.json").read_text()))
        est.net = build_cnn_lstm_net(est.n_features, est.params["channels"], est.params["hidden"])
        est.net.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        est.net.eval()
    else:
        import joblib  # heavy: joblib (sklearn's model files)

        est = joblib.load(folder / "model.joblib")
    return SavedModel(est, meta, folder)
