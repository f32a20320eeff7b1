"""Operator commands, one module per command (the console script registers them)."""
