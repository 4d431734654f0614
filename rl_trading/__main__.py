"""`python -m rl_trading` runs the CLI."""

from rl_trading.cli.main import run

run()
