"""Supervised stage: analyst (RandomForest per timeframe), tactician (GradientBoosting) and a
torch CNN-LSTM trained as Ray Tune trials, plus walk-forward signals for the RL observation.

Public API, by module: `trainables.train_supervised`, `api.load_model`, `api.predict_proba`,
`signals.SignalProvider`, `signals.add_signal_features`, `signals.observed_market`. The
supervised stage sits beside training: it reads the data layer; the envs never import it
(signals reach them as `sig_*` data columns).
"""
