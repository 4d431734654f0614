"""Typer command-line interface: thin commands that parse, call a plain function and print."""
