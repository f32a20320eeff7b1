"""`worker <command>`: the console script of pyproject.toml, and nothing but the command line.

Every subcommand is one row of COMMANDS: how it adds its arguments and how it runs. The rows'
functions live with what they run (worker/runner.py for `run`, worker/tools/ for the operator
commands, worker/dev/ for `dev`); this module imports them and is imported by none of them, so
adding a command is one module and one row here.

Exit codes: 0 after a clean stop, 1 after a failure, 2 for a bad configuration (one line on
stderr naming the variable), including a topic the broker does not have.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import structlog

from worker import __version__
from worker.config import ConfigError, Settings, redact_url
from worker.dev import command as dev
from worker.logs import configure_logging
from worker.runner import event_loop_runner, run_worker, tune_gc
from worker.tools import audit, forget, offsets, pause, produce, retention, schema, show
from worker.tools.dlq import command as dlq

log = structlog.get_logger("worker")


class Command(NamedTuple):
    """One subcommand: `add(subparsers)` registers its parser under its name; `run(args,
    settings)` returns the exit code. `configured=False`: it runs without reading the
    environment, and `run` gets None for the settings."""

    add: Callable[[Any], None]
    run: Callable[[argparse.Namespace, Any], int]
    configured: bool = True


def _add_run(subparsers: Any) -> None:
    subparsers.add_parser("run", help="apply pending migrations, then consume until SIGTERM/SIGINT")


def _run(_args: argparse.Namespace, settings: Settings) -> int:
    tune_gc()
    return int(event_loop_runner()(run_worker(settings)))


def _add_migrate(subparsers: Any) -> None:
    subparsers.add_parser("migrate", help="apply pending migrations from sql/ and exit")


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    return int(event_loop_runner()(_apply_migrations(settings)))


async def _apply_migrations(settings: Settings) -> int:
    from worker.migrate import migrate_url

    applied = await migrate_url(settings.database_url)
    log.info("migrations complete", applied=applied, database=redact_url(settings.database_url))
    return 0


# In the order `worker --help` lists them.
COMMANDS: dict[str, Command] = {
    "run": Command(_add_run, _run),
    "migrate": Command(_add_migrate, _migrate),
    "dev": Command(dev.add_parser, dev.run),
    "schema": Command(schema.add_parser, schema.run, configured=False),
    "dlq": Command(dlq.add_dlq_commands, dlq.run_dlq_command),
    "offsets": Command(offsets.add_offsets_commands, offsets.run_offsets_command),
    "produce": Command(produce.add_parser, produce.run),
    "retention": Command(retention.add_retention_commands, retention.run_retention_command),
    "forget": Command(forget.add_parser, forget.run),
    "show": Command(show.add_parser, show.run),
    "audit": Command(audit.add_parser, audit.run),
    "pause": Command(pause.add_pause_parser, pause.run_pause_command),
    "resume": Command(pause.add_resume_parser, pause.run_pause_command),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker",
        description="Kafka to PostgreSQL ingestion worker for proctoring and interview events. "
        "Configured by environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = COMMANDS[args.command]
    if not command.configured:
        return command.run(args, None)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"worker: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        return command.run(args, settings)
    except ConfigError as exc:  # found at start, e.g. a topic the broker does not have
        print(f"worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from worker.retry import describe

        log.error("worker failed", error=describe(exc), exc_info=settings.log_level == "DEBUG")
        return 1


if __name__ == "__main__":
    sys.exit(main())
