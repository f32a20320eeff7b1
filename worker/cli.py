"""`worker run | migrate | dev | produce | offsets`: the console script of pyproject.toml.

Exit codes: 0 after a clean stop, 1 after a failure, 2 for a bad configuration (one line on
stderr naming the variable), including a topic the broker does not have.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from worker import __version__
from worker.config import ConfigError, Settings, redact_url
from worker.dlq_tools import add_dlq_commands, run_dlq_command
from worker.logs import configure_logging
from worker.offsets_cli import add_offsets_commands, run_offsets_command
from worker.tools.pause import add_pause_commands, run_pause_command

log = structlog.get_logger("worker")


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (absent on Windows)
        return asyncio.run
    return uvloop.run


async def run_worker(
    settings: Settings,
    companion: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Run the worker until SIGTERM/SIGINT; `companion(worker)` runs beside it (`worker dev`)."""
    from worker.consumer import Worker
    from worker.tracing import configure_from_env

    flush_traces = configure_from_env()
    worker = Worker(settings)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("signal received, stopping", signal=signal.Signals(signum).name)
            worker.stop()
            # Bounded shutdown: a stuck close must not keep a replica from being replaced.
            loop.call_later(settings.shutdown_timeout_s + 5, _force, "shutdown timed out")
        else:
            _force("second signal")

    def _force(why: str) -> None:
        log.error("forcing exit", reason=why)
        if main is not None:
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    side = asyncio.create_task(companion(worker)) if companion else None
    try:
        await worker.run()
    except asyncio.CancelledError:
        if worker.stopping:
            return 0 if signals_seen == 1 else 1
        raise
    finally:
        if side is not None:
            side.cancel()
        flush_traces()
    return 0


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
    add_pause_commands(sub)
    produce = sub.add_parser("produce", help="publish JSON values (arguments or stdin lines)")
    produce.add_argument("topic")
    produce.add_argument("values", nargs="*", help="record values; stdin lines if none")
    produce.add_argument("--key", default=None)
    return parser


# Objects the collector lets pile up before a young collection (CPython's default is 700). A
# batch holds tens of thousands of container objects for as long as it is being committed,
# so at the default the collector runs ~1 000 times per 200 000 events, walking those same
# live objects every time, for 0.6-0.9 s in all; at this threshold it runs once or twice
# (bench/README.md "Garbage collection"). Cyclic garbage is rare here (reference counting
# frees the records); what there is waits for the next collection, a few MB at most.
_GC_YOUNG_THRESHOLD = 100_000


def _tune_gc() -> None:
    # What is loaded by now (modules, classes, functions) lives as long as the process:
    # frozen, it is left out of every later collection.
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        # Needs no configuration: a producer can run it without the worker's environment.
        from worker.schema_export import run_schema_command

        return run_schema_command(args.out)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"worker: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    run = _event_loop_runner()
    try:
        if args.command == "run":
            _tune_gc()
            return int(run(run_worker(settings)))
        if args.command == "migrate":
            return int(run(_migrate(settings)))
        if args.command == "produce":
            return int(run(_produce(settings, args.topic, args.key, args.values)))
        if args.command == "dlq":
            return run_dlq_command(args, settings)
        if args.command == "offsets":
            return run_offsets_command(args, settings)
        if args.command in ("pause", "resume"):
            return run_pause_command(args, settings)
        if args.command == "dev":
            from worker.dev import run_dev

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
