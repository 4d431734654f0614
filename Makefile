# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --constraint constraints.txt
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-stock lint format bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

## Install, then run the whole pipeline on the bundled quickstart config and print a report.
demo: install
	$(BIN)/rl-trading demo -c configs/quickstart.yaml

## Install, then lint, check formatting and run the default test suite (not `slow`).
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not slow" --durations=15 $(PYTEST_ARGS)

## The long learning, fault and end-to-end runs (`slow`); CI runs them after `make test`.
test-slow: install
	$(BIN)/python -m pytest -m slow --durations=15 $(PYTEST_ARGS)

## The RLlib tier's phase, learning, resume, fault and determinism tests on RLlib's stock
## classes (`resources.rllib_fast_paths: false` via RL_TRADING_FAST_PATHS=0); CI runs it after
## `make test`. The fast-vs-stock comparisons (speed-ups, grouped learner) run in `make test`.
STOCK_TIER := tests/test_training_phases.py tests/test_training_learning.py \
	tests/test_training_cli.py tests/test_faults_cli.py tests/test_faults_env_runner.py \
	tests/test_training_determinism.py tests/test_training_config.py \
	tests/test_training_curriculum.py tests/test_training_trainer.py \
	tests/test_training_fast_paths.py tests/test_checkpoint_restore.py tests/test_run_state.py \
	tests/test_training_tune.py
test-stock: install
	RL_TRADING_FAST_PATHS=0 $(BIN)/python -m pytest -m rllib $(STOCK_TIER) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/training_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
