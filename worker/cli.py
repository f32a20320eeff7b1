"""`worker run | migrate | dev | produce | offsets`: the console script of pyproject.toml.

Exit codes: 0 after a clean stop, 1 after a failure, 2 for a bad configuration (one line on
stderr naming the variable), including a topic the broker does not have.
"""

from __future__ import annotations

import argparse
import sys

import structlog

from worker import __version__
from worker.config import ConfigError, Settings, redact_url
from worker.logs import configure_logging
from worker.runner import event_loop_runner, run_worker, tune_gc
from worker.tools.dlq.command import add_dlq_commands, run_dlq_command
from worker.tools.offsets import add_offsets_commands, run_offsets_command

log = structlog.get_logger("worker")


async def _migrate(settings: Settings) -> int:
    from worker.migrate import migrate_url

    applied = await migrate_url(settings.database_url)
    log.info("migrations complete", applied=applied, database=redact_url(settings.database_url))
    return 0


async def _produce(settings: Settings, topic: str, key: str | None, values: list[str]) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.kafka_options(), acks="all", enable_idempotence=False)
    await producer.start()
    try:
        lines = values or [line for line in sys.stdin.read().splitlines() if line.strip()]
        for value in lines:
            md = await producer.send_and_wait(
                topic, value.encode(), key=key.encode() if key else None
            )
            print(f"produced {md.topic}[{md.partition}]@{md.offset}")
    finally:
        await producer.stop()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker",
        description="Kafka to PostgreSQL ingestion worker for proctoring and interview events. "
        "Configured by environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="apply pending migrations, then consume until SIGTERM/SIGINT")
    sub.add_parser("migrate", help="apply pending migrations from sql/ and exit")
    dev = sub.add_parser(
        "dev", help="embedded broker and PostgreSQL, seed samples, and the worker in foreground"
    )
    dev.add_argument("--data-dir", default=".dev", help="where the embedded PostgreSQL keeps data")
    dev.add_argument("--kafka-port", type=int, default=0, help="broker port (0: pick a free one)")
    dev.add_argument("--pg-port", type=int, default=0, help="PostgreSQL port (0: pick a free one)")
    schema = sub.add_parser("schema", help="write JSON Schemas of the wire contract for producers")
    schema.add_argument("--out", default="schema", help="output directory (default: schema/)")
    add_dlq_commands(sub)
    add_offsets_commands(sub)
    produce = sub.add_parser("produce", help="publish JSON values (arguments or stdin lines)")
    produce.add_argument("topic")
    produce.add_argument("values", nargs="*", help="record values; stdin lines if none")
    produce.add_argument("--key", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        # Needs no configuration: a producer can run it without the worker's environment.
        from worker.tools.schema import run_schema_command

        return run_schema_command(args.out)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"worker: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    run = event_loop_runner()
    try:
        if args.command == "run":
            tune_gc()
            return int(run(run_worker(settings)))
        if args.command == "migrate":
            return int(run(_migrate(settings)))
        if args.command == "produce":
            return int(run(_produce(settings, args.topic, args.key, args.values)))
        if args.command == "dlq":
            return run_dlq_command(args, settings)
        if args.command == "offsets":
            return run_offsets_command(args, settings)
        if args.command == "dev":
            from worker.dev.command import run_dev

            return run_dev(settings, args.data_dir, args.kafka_port, args.pg_port)
    except ConfigError as exc:  # found at start, e.g. a topic the broker does not have
        print(f"worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from worker.retry import describe

        log.error("worker failed", error=describe(exc), exc_info=settings.log_level == "DEBUG")
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
