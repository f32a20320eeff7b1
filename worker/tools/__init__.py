"""Operator commands, one module (or, for a command with subcommands of its own, one package)
per `worker` subcommand. Each is thin: it parses its arguments, reads the broker through
`worker.broker` and the database through the core modules, and prints. `worker.cli` registers
them in its command table; no module of the core imports this package (tests/test_layout.py).
"""
