"""The package version (its own module, so anything can read it without `rl_trading`'s exports)."""

__version__ = "0.1.0"
