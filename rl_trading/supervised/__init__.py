"""Supervised stage: analyst (RandomForest per timeframe), tactician (GradientBoosting) and a
torch CNN-LSTM trained as Ray Tune trials, plus walk-forward signals for the RL observation.

Public API: `train_supervised`, `load_model`, `predict_proba`, `SignalProvider`,
`add_signal_features`. Heavy libraries are imported lazily by the submodules.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SignalProvider",
    "add_signal_features",
    "load_model",
    "predict_proba",
    "train_supervised",
]

_WHERE = {
    "SignalProvider": "rl_trading.supervised.signals",
    "add_signal_features": "rl_trading.supervised.signals",
    "load_model": "rl_trading.supervised.api",
    "predict_proba": "rl_trading.supervised.api",
    "train_supervised": "rl_trading.supervised.trainables",
}


def __getattr__(name: str) -> Any:
    """Lazy attribute access so `import rl_trading.supervised` stays cheap."""
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'rl_trading.supervised' has no attribute {name!r}")
