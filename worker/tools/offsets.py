"""`worker offsets show | reset`: the stored offsets of the consumed topics beside their logs,
and moving them (docs/contract.md §1).

Invariants:

- The broker is read without a consumer group (worker/broker.py): the tool never
  joins the workers' group, so it triggers no rebalance, and it commits nothing to Kafka.
- `reset` writes nothing without `--execute`. With it, every row that moves is written in one
  transaction (`worker.offsets.reset`) and no row is deleted: `--to-earliest` writes the
  log-start offset. Running workers hold the old value as the expected one of their
  compare-and-set, so their next batch on a moved partition is fenced, rolled back, and they
  continue from the new row. A partition that receives no record has no batch, and keeps its
  position until its next record arrives.
- Every target lies in [log start, log end]: `--to-offset` beyond either is clamped (like
  `kafka-consumer-groups --reset-offsets`), `--to-datetime T` is the first offset whose record
  is stamped at or after T, or the log end when none is.
- The log end is `worker.broker.log_bounds`' (ListOffsets raised to what a fetch there
  reports): a reset to the end the development broker's ListOffsets alone reports would replay
  the last batch.
- Exit codes: 0 ok; 2 bad arguments or configuration, one line on stderr; 1 failure, one line,
  without the DATABASE_URL password.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.common import parse_timestamp, utc
from worker import broker, offsets, pauses
from worker.clients import KafkaPostgresClients
from worker.config import ConfigError, Settings, redact_url
from worker.logs import tp_name
from worker.retry import describe

_CONNECT_TIMEOUT_S = 15.0
_RESET_ATTEMPTS = 3  # a deadlock with a worker's commit aborts one side: try again


class UsageError(Exception):
    """Arguments the command cannot act on: one line, exit 2."""


class Failure(Exception):
    """A dependency failed: one line naming it (passwords redacted), exit 1."""


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line, exit 2, like every other configuration error of the worker."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # Left over, they would reach the top-level parser, whose error prints the usage.
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


# -- arguments ---------------------------------------------------------------------------------


def add_offsets_commands(subparsers: Any) -> None:
    """Register `offsets show` and `offsets reset` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "offsets",
        help="show or reset the stored offsets (consumer_offsets) of the consumed topics",
        description="The worker resumes every partition from consumer_offsets (a partition "
        "without a row from the start of its log), not from Kafka's committed offsets.",
    )
    # add_parser builds the top-level parser's class; this command's errors are one line.
    parser.__class__ = _OneLineParser
    commands = parser.add_subparsers(
        dest="offsets_command", metavar="{show,reset}", required=True, parser_class=_OneLineParser
    )
    show = commands.add_parser(
        "show", help="stored next offset, log start, log end and lag of every partition"
    )
    show.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    reset = commands.add_parser(
        "reset",
        help="move the stored offsets (a dry run unless --execute)",
        description="Prints the plan; changes nothing unless --execute. Safe while workers "
        "run: they continue from the new offsets at their next batch.",
    )
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the log start: replay")
    to.add_argument("--to-latest", action="store_true", help="the log end: skip the backlog")
    to.add_argument(
        "--to-offset", type=parse_offset, metavar="N", help="offset N (clamped to the log)"
    )
    to.add_argument(
        "--to-datetime",
        type=_datetime,
        metavar="ISO",
        help="the first record stamped at or after ISO (no offset: UTC); past the end: the end",
    )
    reset.add_argument("--topic", help="only this consumed topic (default: both)")
    reset.add_argument(
        "--partition",
        type=parse_offset,
        action="append",
        metavar="P",
        help="only partition P (repeat for several; with no --topic, of both topics)",
    )
    reset.add_argument("--execute", action="store_true", help="write the plan")


def parse_offset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _datetime(text: str) -> dt.datetime:
    try:
        return utc(parse_timestamp(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- the broker's view -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition as `show` prints it; `stored=None` means no row."""

    tp: TopicPartition
    stored: int | None
    log_start: int
    log_end: int
    paused: bool = False  # held by an operator (worker pause)

    @property
    def resumes_at(self) -> int:
        """Where a worker reads from: the row, unless the log no longer has that offset."""
        if self.stored is None or self.stored > self.log_end:
            # No row, or a log reset under the row (worker/consumer.py reads it again).
            return self.log_start
        return max(self.stored, self.log_start)

    @property
    def lag(self) -> int:
        return self.log_end - self.resumes_at

    @property
    def note(self) -> str | None:
        if self.stored is None:
            return None
        if self.stored > self.log_end:
            return "beyond the log end: the log was reset; read again from its start"
        if self.stored < self.log_start:
            return "below the log start: records deleted by retention before they were read"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "stored_offset": self.stored,
            "log_start": self.log_start,
            "log_end": self.log_end,
            "lag": self.lag,
            "paused": self.paused,
            "note": self.note,
        }


async def _at_times(
    consumer: AIOKafkaConsumer,
    when: dt.datetime,
    bounds: Mapping[TopicPartition, tuple[int, int]],
) -> dict[TopicPartition, int]:
    # Negative timestamps are ListOffsets' codes for "latest" and "earliest".
    stamp = max(0, int(when.timestamp() * 1000))
    found = await consumer.offsets_for_times({tp: stamp for tp in bounds})
    targets: dict[TopicPartition, int] = {}
    for tp, (_, end) in bounds.items():
        hit = found.get(tp)
        # No record at or after `when`: Kafka answers None (offset -1); Tansu answers offset
        # 0 with timestamp -1, which taken at its word would replay the whole partition.
        targets[tp] = end if hit is None or hit.timestamp < 0 else hit.offset
    return targets


# -- commands ----------------------------------------------------------------------------------


def run_offsets_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run `worker offsets show|reset`; returns the exit code."""
    command = _show if args.offsets_command == "show" else _reset
    try:
        return asyncio.run(command(args, settings, sys.stdout))
    except (UsageError, ConfigError) as exc:
        print(f"worker offsets {args.offsets_command}: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"worker offsets {args.offsets_command}: {exc}", file=sys.stderr)
        return 1


async def broker_view(
    settings: Settings, topics: Sequence[str], partitions: Sequence[int] | None
) -> tuple[AIOKafkaConsumer, dict[TopicPartition, tuple[int, int]]]:
    """The selected partitions and their log bounds, and the consumer to ask more of."""
    consumer = KafkaPostgresClients(settings).reader("offsets", timeout_s=_CONNECT_TIMEOUT_S)
    try:
        await consumer.start()
        tps: list[TopicPartition] = []
        for topic in topics:
            found = await broker.partitions(consumer, topic)
            if not found:
                raise broker.topic_missing(settings, topic)
            tps.extend(found)
        if partitions is not None:
            missing = sorted(set(partitions) - {tp.partition for tp in tps})
            if missing:
                have = ", ".join(f"{t} has {_count(tps, t)}" for t in topics)
                raise UsageError(f"--partition {missing[0]}: no such partition ({have})")
            tps = [tp for tp in tps if tp.partition in partitions]
        return consumer, await broker.log_bounds(consumer, tps)
    except (UsageError, ConfigError):
        await consumer.stop()
        raise
    except Exception as exc:
        await consumer.stop()
        raise Failure(f"kafka {settings.bootstrap_servers}: {describe(exc)}") from exc


def _count(tps: Sequence[TopicPartition], topic: str) -> str:
    n = sum(tp.topic == topic for tp in tps)
    return f"{n} partition" + ("" if n == 1 else "s")


async def database(settings: Settings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(settings.database_url, timeout=_CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise Failure(f"database {redact_url(settings.database_url)}: {describe(exc)}") from exc


async def database_call(settings: Settings, conn: asyncpg.Connection, fn: Any) -> Any:
    try:
        return await fn(conn)
    except asyncpg.UndefinedTableError:
        raise Failure(
            f"database {redact_url(settings.database_url)} has no consumer_offsets table: "
            "run `worker migrate` first"
        ) from None
    except Exception as exc:
        raise Failure(f"database {redact_url(settings.database_url)}: {describe(exc)}") from exc


async def _show(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    consumer, bounds = await broker_view(settings, settings.topics, None)
    await consumer.stop()
    conn = await database(settings)
    try:
        stored = await database_call(
            settings, conn, lambda c: offsets.load(c, settings.group_id, bounds)
        )
        held = await database_call(settings, conn, lambda c: _pauses(c, settings.group_id))
    finally:
        await conn.close()
    rows = [Partition(tp, stored.get(tp), *bounds[tp], tp in held) for tp in bounds]
    if args.json:
        json.dump([row.to_json() for row in rows], out, indent=2)
        out.write("\n")
        return 0
    table = [
        (
            row.tp.topic,
            str(row.tp.partition),
            _shown(row.stored),
            str(row.log_start),
            str(row.log_end),
            str(row.lag),
            "paused" if row.paused else "",
            row.note or "",
        )
        for row in rows
    ]
    header = ("TOPIC", "PARTITION", "STORED", "LOG-START", "LOG-END", "LAG", "STATE", "")
    _write_table(out, header, table)
    return 0


async def _pauses(conn: asyncpg.Connection, group_id: str) -> set[TopicPartition]:
    """The partitions paused by an operator; none on a database migrated before pauses."""
    try:
        return await pauses.load(conn, group_id)
    except asyncpg.UndefinedTableError:
        return set()


async def _reset(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.topic is not None and args.topic not in settings.topics:
        raise UsageError(
            f"--topic {args.topic!r}: not a consumed topic (WORKER_PROCTORING_TOPIC="
            f"{settings.proctoring_topic}, WORKER_INTERVIEW_TOPIC={settings.interview_topic})"
        )
    topics = settings.topics if args.topic is None else (args.topic,)
    consumer, bounds = await broker_view(settings, topics, args.partition)
    try:
        targets, clamped = await _targets(args, consumer, bounds)
    except Exception as exc:
        raise Failure(f"kafka {settings.bootstrap_servers}: {describe(exc)}") from exc
    finally:
        await consumer.stop()
    conn = await database(settings)
    try:
        if args.execute:
            plan = await database_call(settings, conn, lambda c: _apply(c, settings, targets))
        else:
            stored = await database_call(
                settings, conn, lambda c: offsets.load(c, settings.group_id, targets)
            )
            plan = {tp: (stored.get(tp), new) for tp, new in targets.items()}
    finally:
        await conn.close()
    _write_plan(out, plan, clamped)
    changed = [(tp, old, new) for tp, (old, new) in plan.items() if old != new]
    if not args.execute:
        out.write(
            f"dry run: {len(changed)} of {len(plan)} partitions would change; nothing written "
            "(add --execute to apply)\n"
        )
        return 0
    for tp, old, new in changed:
        out.write(f"reset {tp_name(tp)}: {_shown(old)} -> {new}\n")
    out.write(
        f"{len(changed)} of {len(plan)} partitions changed; running workers continue from "
        "them at their next batch\n"
    )
    return 0


async def _targets(
    args: argparse.Namespace,
    consumer: AIOKafkaConsumer,
    bounds: Mapping[TopicPartition, tuple[int, int]],
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, str]]:
    """The new offset of every selected partition, and why some differ from what was asked."""
    if args.to_earliest:
        return {tp: start for tp, (start, _) in bounds.items()}, {}
    if args.to_latest:
        return {tp: end for tp, (_, end) in bounds.items()}, {}
    if args.to_datetime is not None:
        return await _at_times(consumer, args.to_datetime, bounds), {}
    targets: dict[TopicPartition, int] = {}
    clamped: dict[TopicPartition, str] = {}
    for tp, (start, end) in bounds.items():
        targets[tp] = min(max(args.to_offset, start), end)
        if targets[tp] != args.to_offset:
            clamped[tp] = "clamped to the log " + ("end" if args.to_offset > end else "start")
    return targets, clamped


async def _apply(
    conn: asyncpg.Connection, settings: Settings, targets: Mapping[TopicPartition, int]
) -> dict[TopicPartition, tuple[int | None, int]]:
    """Write the targets; the plan comes back in the order of `targets` (the table's)."""
    attempt = 1
    while True:
        try:
            plan = await offsets.reset(conn, settings.group_id, targets)
        except asyncpg.DeadlockDetectedError:
            if attempt == _RESET_ATTEMPTS:
                raise
            attempt += 1
            continue
        return {tp: plan[tp] for tp in targets}


def _write_plan(
    out: TextIO,
    plan: Mapping[TopicPartition, tuple[int | None, int]],
    clamped: Mapping[TopicPartition, str],
) -> None:
    rows = []
    for tp, (old, new) in plan.items():
        notes = [clamped[tp]] if tp in clamped else []
        if old == new:
            notes.append("unchanged")
        rows.append((tp.topic, str(tp.partition), _shown(old), str(new), ", ".join(notes)))
    _write_table(out, ("TOPIC", "PARTITION", "STORED", "NEW", ""), rows)


def _shown(offset: int | None) -> str:
    return "-" if offset is None else str(offset)


def _write_table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
