"""`worker dlq inspect | replay`: look at dead letters and send them back once the cause is gone.

The arguments and what is printed; reading is worker/tools/dlq/read.py, the replay's plan and
guards worker/tools/dlq/replay.py, publishing worker/tools/dlq/publish.py. Replay is a dry run
unless `--execute` is given. Exit codes: 0 ok, 1 error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any, TextIO

from worker import erasure
from worker.config import Settings
from worker.dlq import REASONS
from worker.retry import describe
from worker.tools import audit
from worker.tools.database import connect
from worker.tools.dlq.read import (
    DEFAULT_IDLE_S,
    DEFAULT_TIMEOUT_S,
    DeadLetterFilter,
    DeadLetterToolError,
    DeadLetterView,
    scan_dead_letters,
)
from worker.tools.dlq.replay import ReplayResult, replay_dead_letters
from worker.tools.person import KEY, identifier

_ERROR_WIDTH = 60
_VALUE_BYTES = 40
_DRY_RUN_ROWS = 10


# -- output ------------------------------------------------------------------------------------


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line: errors may carry newlines
    return text if len(text) <= width else text[: width - 3] + "..."


def _value_head(value: bytes | None) -> str:
    if value is None:
        return "None"
    head = repr(value[:_VALUE_BYTES])
    return head + ("..." if len(value) > _VALUE_BYTES else "")


def format_table(views: Iterable[DeadLetterView]) -> list[str]:
    rows = [
        (
            v.position,
            v.reason or "?",
            v.original,
            _shorten(v.error or "", _ERROR_WIDTH),
            _value_head(v.value),
        )
        for v in views
    ]
    header = ("DLQ POS", "REASON", "ORIGINAL", "ERROR", "VALUE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]).rstrip()
        for r in [header, *rows]
    ]


def _counts(views: Iterable[DeadLetterView], attr: str) -> str:
    counter = Counter(getattr(v, attr) or "?" for v in views)
    return ", ".join(f"{k}={n}" for k, n in sorted(counter.items())) or "-"


def print_replay(result: ReplayResult, dlq_topic: str, out: TextIO) -> None:
    plan = result.plan
    if not result.executed:
        print("DRY RUN: nothing was published; add --execute to replay.", file=out)
    print(
        f"read {plan.read} dead letters from {dlq_topic}; {len(plan.selected)} match the filters",
        file=out,
    )
    if not plan.complete:
        print("warning: the read timed out before the end of the topic", file=out)
    if result.executed:
        print(
            f"replayed {len(result.replayed)}, skipped {len(plan.skipped_loop_guard)} "
            f"(loop guard: dlq.replay.count >= {plan.max_replays})",
            file=out,
        )
        print(f"  by topic: {_counts((v for v, _ in result.replayed), 'original_topic')}", file=out)
        print(f"  by reason: {_counts((v for v, _ in result.replayed), 'reason')}", file=out)
    else:
        print(
            f"would replay {len(plan.to_replay)}, skip {len(plan.skipped_loop_guard)} "
            f"(loop guard: dlq.replay.count >= {plan.max_replays})",
            file=out,
        )
        print(f"  by topic: {_counts(plan.to_replay, 'original_topic')}", file=out)
        print(f"  by reason: {_counts(plan.to_replay, 'reason')}", file=out)
    if plan.skipped_already_replayed:
        print(
            f"skipped {len(plan.skipped_already_replayed)} (already replayed: a later dead letter "
            "is its failed replay; --include-replayed sends them anyway)",
            file=out,
        )
    if plan.skipped_unsigned:
        print(
            f"held back {len(plan.skipped_unsigned)} (no signed dlq.origin: written by an "
            "earlier release, the erasure ledger could not judge their replay; "
            "--allow-unsigned sends them, judged by their new offsets only)",
            file=out,
        )
    if plan.skipped_not_dead_letter:
        print(
            f"skipped {len(plan.skipped_not_dead_letter)} (no usable dlq.original.topic)",
            file=out,
        )
    if result.failed:
        print(f"FAILED {len(result.failed)}:", file=out)
        for view, error in result.failed[:_DRY_RUN_ROWS]:
            print(f"  {view.position} -> {view.original_topic}: {error}", file=out)
    if not result.executed and plan.to_replay:
        shown = plan.to_replay[:_DRY_RUN_ROWS]
        print(f"first {len(shown)} of {len(plan.to_replay)}:", file=out)
        for line in format_table(shown):
            print(f"  {line}", file=out)


# -- command line ------------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return value


def add_dlq_commands(subparsers: Any) -> None:
    """Register `dlq inspect` and `dlq replay` on the CLI's subparsers."""
    filters = argparse.ArgumentParser(add_help=False)
    group = filters.add_argument_group("filters (all must match)")
    group.add_argument(
        "--reason",
        action="append",
        choices=REASONS,
        help="dlq.reason; repeat for several",
    )
    group.add_argument("--topic", help="original topic (dlq.original.topic)")
    group.add_argument(
        "--partition", type=_non_negative, help="original partition (dlq.original.partition)"
    )
    group.add_argument(
        "--from-offset", type=_non_negative, help="lowest dlq.original.offset (inclusive)"
    )
    group.add_argument(
        "--to-offset", type=_non_negative, help="highest dlq.original.offset (inclusive)"
    )
    group.add_argument(
        "--candidate",
        type=identifier,
        metavar="ID",
        help="dead letters whose value names this candidate (its raw copies, e.g. before or "
        "after `worker forget`)",
    )
    group.add_argument("--limit", type=_positive, help="act on the first N matches only")
    reading = filters.add_argument_group("reading")
    reading.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="give up reading after this many seconds (default %(default)s)",
    )
    reading.add_argument(
        "--idle",
        type=_seconds,
        default=DEFAULT_IDLE_S,
        help="the topic is read to its end after this many seconds without records "
        "(default %(default)s)",
    )

    dlq = subparsers.add_parser(
        "dlq",
        help="inspect and replay dead letters (WORKER_DLQ_TOPIC)",
        description="Read the dead-letter topic without a consumer group; replay dead letters "
        "to their original topics.",
    )
    commands = dlq.add_subparsers(dest="dlq_command", required=True)
    inspect = commands.add_parser(
        "inspect", parents=[filters], help="list dead letters as a table or JSON lines"
    )
    inspect.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.add_audit_arguments(inspect)  # recorded when --candidate is given
    replay = commands.add_parser(
        "replay",
        parents=[filters],
        help="re-publish dead letters to their original topics (dry run without --execute)",
    )
    replay.add_argument("--execute", action="store_true", help="publish; otherwise a dry run")
    replay.add_argument(
        "--max-replays",
        type=_non_negative,
        default=1,
        help="skip dead letters whose dlq.replay.count is at least this (default %(default)s)",
    )
    replay.add_argument(
        "--include-replayed",
        action="store_true",
        help="also replay dead letters whose earlier replay already came back to the DLQ",
    )
    replay.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="also replay dead letters without a signed dlq.origin (from an earlier release); "
        "the erasure ledger judges their replays by their new offsets only",
    )


def _offsets(args: argparse.Namespace) -> tuple[int, int] | None:
    low, high = args.from_offset, args.to_offset
    if low is None and high is None:
        return None
    low = 0 if low is None else low
    high = sys.maxsize if high is None else high
    if low > high:
        raise DeadLetterToolError(f"--from-offset {low} is above --to-offset {high}")
    return (low, high)


def _filters(args: argparse.Namespace) -> DeadLetterFilter:
    return DeadLetterFilter(
        reasons=frozenset(args.reason) if args.reason else None,
        topic=args.topic,
        offsets=_offsets(args),
        partition=args.partition,
        candidate=args.candidate,
    )


async def _inspect(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    scan = await scan_dead_letters(
        settings,
        accept=_filters(args).matches,
        limit=args.limit,
        timeout_s=args.timeout,
        idle_s=args.idle,
    )
    if args.candidate is not None:
        await _audit(args, settings, len(scan.views), scan.read)
    if args.json:
        for view in scan.views:
            print(json.dumps(view.to_json(), ensure_ascii=False), file=out)
    else:
        if scan.views:
            for line in format_table(scan.views):
                print(line, file=out)
        print(
            f"{len(scan.views)} dead letters shown ({scan.read} read from {settings.dlq_topic})",
            file=out,
        )
    if not scan.complete:
        print("warning: the read timed out before the end of the topic", file=sys.stderr)
    return 0


async def _replay(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    result = await replay_dead_letters(
        settings,
        _filters(args),
        limit=args.limit,
        max_replays=args.max_replays,
        include_replayed=args.include_replayed,
        allow_unsigned=args.allow_unsigned,
        execute=args.execute,
        progress=args.execute,
        timeout_s=args.timeout,
        idle_s=args.idle,
    )
    print_replay(result, settings.dlq_topic, out)
    return 1 if result.failed else 0


async def _audit(args: argparse.Namespace, settings: Settings, shown: int, read: int) -> None:
    """The audit row of `inspect --candidate` (docs/contract.md §7), before anything is shown."""
    conn = await connect(settings)
    try:
        key = await conn.fetchval(KEY)
        counts = {"dead_letters": shown, "read": read}
        await audit.record(
            conn, "dlq inspect --candidate", args, [erasure.subject(key, args.candidate)], counts
        )
    finally:
        await conn.close()


def run_dlq_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run `worker dlq inspect|replay`; returns the exit code (0 ok, 1 error)."""
    commands = {"inspect": _inspect, "replay": _replay}
    command = commands.get(getattr(args, "dlq_command", None) or "")
    if command is None:
        print("worker dlq: choose a command: inspect or replay", file=sys.stderr)
        return 1
    try:
        return int(asyncio.run(command(args, settings, sys.stdout)))
    except DeadLetterToolError as exc:
        print(f"worker dlq: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line, no traceback, no connection secrets
        print(f"worker dlq {args.dlq_command}: failed: {describe(exc)}", file=sys.stderr)
        return 1
