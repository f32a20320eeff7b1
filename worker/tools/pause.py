"""`worker pause | resume [--topic T] [--partition P]`: hold partitions without stopping the
fleet (docs/contract.md §1, §8).

The command only writes `partition_pauses` (worker/pauses.py) for the workers' group; running
workers follow within PAUSES_INTERVAL_S plus one loop turn, and read it again at every
positioning, so the state outlasts restarts and rebalances. A paused partition stays assigned
(the member keeps its place in the group), fetches and stores nothing, shows as paused in
`/metrics` (`worker_partition_paused`) and in `worker offsets show`, and leaves `/readyz` ready.

Without `--topic`, both consumed topics; without `--partition`, every partition of them (as the
broker lists them now: a partition added later is not paused). The broker is read without a
consumer group, as `worker offsets` does, so the command triggers no rebalance.
Exit codes: 0 ok; 2 bad arguments or configuration; 1 a dependency failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

import asyncpg

from worker import pauses
from worker.config import ConfigError, Settings, redact_url
from worker.logs import tp_name
from worker.retry import describe
from worker.tools.offsets import Failure, UsageError, broker_view, database, parse_offset


def _add(subparsers: Any, verb: str, what: str) -> None:
    parser = subparsers.add_parser(verb, help=what, description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", help="only this consumed topic (default: both)")
    parser.add_argument(
        "--partition",
        type=parse_offset,
        action="append",
        metavar="P",
        help="only partition P (repeat for several; with no --topic, of both topics)",
    )


def add_pause_parser(subparsers: Any) -> None:
    _add(subparsers, "pause", "stop fetching and storing partitions, keeping group membership")


def add_resume_parser(subparsers: Any) -> None:
    _add(subparsers, "resume", "fetch and store paused partitions again")


def run_pause_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run `worker pause` or `worker resume`; returns the exit code."""
    try:
        return asyncio.run(_run(args.command, args.topic, args.partition, settings, sys.stdout))
    except (UsageError, ConfigError) as exc:
        print(f"worker {args.command}: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"worker {args.command}: {exc}", file=sys.stderr)
        return 1


async def _run(
    verb: str,
    topic: str | None,
    partitions: list[int] | None,
    settings: Settings,
    out: TextIO,
) -> int:
    if topic is not None and topic not in settings.topics:
        raise UsageError(
            f"--topic {topic!r}: not a consumed topic (WORKER_PROCTORING_TOPIC="
            f"{settings.proctoring_topic}, WORKER_INTERVIEW_TOPIC={settings.interview_topic})"
        )
    consumer, bounds = await broker_view(
        settings, [topic] if topic else list(settings.topics), partitions
    )
    await consumer.stop()
    selected = sorted(bounds)
    change = pauses.pause if verb == "pause" else pauses.resume
    conn = await database(settings)
    try:
        changed = await change(conn, settings.group_id, selected)
        held = await pauses.load(conn, settings.group_id)
    except asyncpg.UndefinedTableError:
        raise Failure(
            f"database {redact_url(settings.database_url)} has no partition_pauses table: "
            "run `worker migrate` first"
        ) from None
    except Exception as exc:
        raise Failure(f"database {redact_url(settings.database_url)}: {describe(exc)}") from exc
    finally:
        await conn.close()
    for tp in selected:
        out.write(f"{tp_name(tp)}: {_line(verb, tp in changed)}\n")
    out.write(
        f"group {settings.group_id}: {len(held)} partition(s) paused; running workers follow "
        f"within {pauses.PAUSES_INTERVAL_S + 1:.0f} s\n"
    )
    return 0


def _line(verb: str, changed: bool) -> str:
    if verb == "pause":
        return "paused" if changed else "already paused"
    return "resumed" if changed else "was not paused"
