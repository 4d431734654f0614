"""Evaluation: backtests against baselines, walk-forward CIs, reports, ensembles, ONNX export.

Also the glue the CLI uses: choosing the evaluated bars and counting trials
(`evaluation.selection`) and registering a trained checkpoint with its backtest metrics,
preprocessing and lineage (`evaluation.registration`).
"""
