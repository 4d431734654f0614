"""Model factories: analyst (RandomForest), tactician (GradientBoosting) and the CNN-LSTM.

The sklearn models are ``Pipeline([("scaler", StandardScaler()), ("model", ...)])`` so the
scaler is fitted on whatever rows ``fit`` sees (the training part only). The CNN-LSTM is a
small torch network wrapped in an sklearn-style estimator (``fit``/``predict_proba``) that
takes feature *windows* ``(n, window, n_features)`` and normalises them with a
:class:`~rl_trading.data.features.FeatureScaler` fitted on its own training rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rl_trading.config import AppConfig
from rl_trading.data.features import FeatureScaler

MODEL_TYPES = ("analyst", "tactician", "cnn_lstm")
# Gradient boosting uses shallow trees (boosted weak learners); deeper ones only overfit/slow.
TACTICIAN_MAX_DEPTH = 5


def default_params(model_type: str, cfg: AppConfig) -> dict[str, Any]:
    """Hyperparameters of `model_type` taken from the config (what a run without search uses)."""
    sup = cfg.supervised
    if model_type == "analyst":
        return {
            "n_estimators": sup.n_estimators,
            "max_depth": sup.max_depth,
            "min_samples_leaf": 20,
            "max_features": "sqrt",
        }
    if model_type == "tactician":
        return {
            "n_estimators": sup.n_estimators,
            "max_depth": min(sup.max_depth, TACTICIAN_MAX_DEPTH),
            "learning_rate": 0.05,
            "subsample": 0.8,
        }
    if model_type == "cnn_lstm":
        return {
            "window": cfg.train.window_size,
            "channels": cfg.policy.cnn_channels,
            "hidden": cfg.policy.lstm_hidden,
            "lr": cfg.train.learning_rate,
            "batch_size": cfg.train.batch_size,
            "max_epochs": cfg.train.num_epochs,
            "patience": 5,
            "val_frac": 0.15,
        }
    raise ValueError(f"unknown model type '{model_type}' (expected one of {MODEL_TYPES})")


def search_space(model_type: str) -> dict[str, Any]:
    """Tune search space over the hyperparameters of `model_type` (used by --optimize)."""
    from ray import tune  # heavy: ray

    if model_type == "analyst":
        return {
            "n_estimators": tune.randint(50, 300),
            "max_depth": tune.randint(3, 16),
            "min_samples_leaf": tune.randint(5, 100),
            "max_features": tune.choice(["sqrt", "log2"]),
        }
    if model_type == "tactician":
        return {
            "n_estimators": tune.randint(50, 300),
            "max_depth": tune.randint(2, 6),
            "learning_rate": tune.loguniform(0.01, 0.3),
            "subsample": tune.uniform(0.5, 1.0),
        }
    if model_type == "cnn_lstm":
        return {
            "channels": tune.choice([16, 32, 64]),
            "hidden": tune.choice([32, 64, 128]),
            "lr": tune.loguniform(1e-4, 3e-3),
        }
    raise ValueError(f"unknown model type '{model_type}'")


def make_model(model_type: str, params: dict[str, Any], seed: int) -> Any:
    """A fresh, unfitted, seeded estimator of `model_type` with `params`."""
    from sklearn.pipeline import Pipeline  # heavy: sklearn
    from sklearn.preprocessing import StandardScaler  # heavy: sklearn

    if model_type == "analyst":
        from sklearn.ensemble import RandomForestClassifier  # heavy: sklearn

        model = RandomForestClassifier(**params, random_state=seed, n_jobs=1)
        return Pipeline([("scaler", StandardScaler()), ("model", model)])
    if model_type == "tactician":
        from sklearn.ensemble import GradientBoostingClassifier  # heavy: sklearn

        model = GradientBoostingClassifier(**params, random_state=seed)
        return Pipeline([("scaler", StandardScaler()), ("model", model)])
    if model_type == "cnn_lstm":
        return CNNLSTMClassifier(**params, seed=seed)
    raise ValueError(f"unknown model type '{model_type}'")


# --------------------------------------------------------------------------------------------
# CNN-LSTM
# --------------------------------------------------------------------------------------------


def build_cnn_lstm_net(n_features: int, channels: int, hidden: int) -> Any:
    """Conv1d over the time axis of the feature window, an LSTM, and a 2-class head."""
    import torch  # heavy: torch
    from torch import nn  # heavy: torch

    class CNNLSTMNet(nn.Module):
        """(batch, window, features) -> logits (batch, 2)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv1d(n_features, channels, kernel_size=3, padding=1),
                nn.ReLU(),
            )
            self.lstm = nn.LSTM(channels, hidden, batch_first=True)
            self.head = nn.Linear(hidden, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x.transpose(1, 2)).transpose(1, 2)
            out, _ = self.lstm(h)
            return self.head(out[:, -1])

    return CNNLSTMNet()


class CNNLSTMClassifier:
    """Sklearn-style wrapper: seeded training with early stopping on the *last* train slice."""

    def __init__(
        self,
        window: int = 20,
        channels: int = 32,
        hidden: int = 64,
        lr: float = 3e-4,
        batch_size: int = 64,
        max_epochs: int = 100,
        patience: int = 5,
        val_frac: float = 0.15,
        seed: int = 0,
    ) -> None:
        self.params = {
            "window": window,
            "channels": channels,
            "hidden": hidden,
            "lr": lr,
            "batch_size": batch_size,
            "max_epochs": max_epochs,
            "patience": patience,
            "val_frac": val_frac,
        }
        self.seed = seed
        self.scaler = FeatureScaler()
        self.net: Any = None
        self.n_features: int | None = None
        self.epochs_trained = 0
        self.classes_ = np.array([0, 1])

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        on_epoch: Callable[[int, float | None], None] | None = None,
    ) -> CNNLSTMClassifier:
        """Fit on windows ``x`` (n, window, f) in time order; validation = last ``val_frac``.

        `on_epoch(epoch, val_loss)` runs after every epoch with the net as trained so far (a
        Tune trial reports each epoch with a checkpoint through it).
        """
        import torch  # heavy: torch

        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        p = self.params
        self.n_features = x.shape[2]
        self.scaler.fit(x[:, -1, :])
        xs = torch.from_numpy(self.scaler.transform(x))
        ys = torch.from_numpy(np.asarray(y, dtype=np.int64))
        n_val = max(1, int(len(xs) * p["val_frac"])) if len(xs) > 20 else 0
        x_tr, y_tr = xs[: len(xs) - n_val], ys[: len(ys) - n_val]
        x_va, y_va = xs[len(xs) - n_val :], ys[len(ys) - n_val :]
        self.net = build_cnn_lstm_net(self.n_features, p["channels"], p["hidden"])
        opt = torch.optim.Adam(self.net.parameters(), lr=p["lr"])
        loss_fn = torch.nn.CrossEntropyLoss()
        best, best_state, bad = float("inf"), None, 0
        for epoch in range(p["max_epochs"]):
            self.net.train()
            order = rng.permutation(len(x_tr))
            for i in range(0, len(order), p["batch_size"]):
                idx = torch.from_numpy(order[i : i + p["batch_size"]])
                opt.zero_grad()
                loss = loss_fn(self.net(x_tr[idx]), y_tr[idx])
                loss.backward()
                opt.step()
            self.epochs_trained = epoch + 1
            if n_val == 0:
                if on_epoch is not None:
                    self.net.eval()
                    on_epoch(epoch + 1, None)
                continue
            self.net.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(self.net(x_va), y_va))
            if on_epoch is not None:
                on_epoch(epoch + 1, val_loss)
            if val_loss < best - 1e-5:
                best, bad = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            else:
                bad += 1
                if bad >= p["patience"]:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (n, 2) for windows ``x``."""
        import torch  # heavy: torch

        if self.net is None:
            raise RuntimeError("CNNLSTMClassifier is not fitted")
        out = []
        with torch.no_grad():
            xs = torch.from_numpy(self.scaler.transform(x))
            for i in range(0, len(xs), 4096):
                out.append(torch.softmax(self.net(xs[i : i + 4096]), dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Most likely class (0 down, 1 up) for windows ``x``."""
        return self.predict_proba(x).argmax(axis=1)


def make_windows(features: np.ndarray, window: int) -> np.ndarray:
    """Causal windows: row ``t`` gets features ``t-window+1 .. t`` (the first rows edge-padded)."""
    n, f = features.shape
    padded = np.concatenate([np.repeat(features[:1], window - 1, axis=0), features], axis=0)
    idx = np.arange(n)[:, None] + np.arange(window)[None, :]
    return padded[idx].reshape(n, window, f)
