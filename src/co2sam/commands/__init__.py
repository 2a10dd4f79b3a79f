"""Typer command functions; ``co2sam.cli`` maps command names onto them."""
