"""Operator commands of the `worker` console script, one module per command."""
