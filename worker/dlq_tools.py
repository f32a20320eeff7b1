"""`worker dlq inspect | replay`: look at dead letters and send them back once the cause is gone.

Reading: the dead-letter topic is read from the beginning of every partition without a consumer
group (assign + seek_to_beginning), so inspecting commits nothing and disturbs no one. The read
ends when fetches have returned nothing for `idle_s` seconds. End offsets are only a hint (the
development broker under-reports them): when one is above zero, the read does not stop before
the partition's position has reached it.

Replaying: a dead letter goes back to its original topic (`dlq.original.topic`), to its original
partition when that still exists, with its original key, value and headers (every header but the
`dlq.*` ones), plus `dlq.replay.count` (previous count + 1) and `dlq.replay.of`
(`<dlq topic>:<partition>:<offset>`). The worker keeps a record's headers when it dead-letters
it, so a replay that fails again comes back carrying both, and two guards stop a loop:

- the loop guard: a dead letter whose `dlq.replay.count` is at least `--max-replays` (default 1)
  is not replayed;
- the already-replayed guard: a dead letter that a later dead letter names in `dlq.replay.of`
  was replayed before and failed again; replaying it once more would restart the chain with a
  fresh count, so it is skipped (`--include-replayed` turns this guard off).

Replay is a dry run unless `--execute` is given. Exit codes: 0 ok, 1 error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from worker.config import Settings
from worker.decode import (
    EMPTY_PAYLOAD,
    INVALID_JSON,
    REJECTED_BY_DATABASE,
    SCHEMA_VIOLATION,
    UNKNOWN_EVENT_TYPE,
)
from worker.dlq import Header
from worker.retry import describe

log = structlog.get_logger("worker.dlq_tools")

REASONS: tuple[str, ...] = (
    INVALID_JSON,
    SCHEMA_VIOLATION,
    UNKNOWN_EVENT_TYPE,
    EMPTY_PAYLOAD,
    REJECTED_BY_DATABASE,
)
DLQ_HEADER_PREFIX = Header.PREFIX
REPLAY_COUNT_HEADER = Header.REPLAY_COUNT
REPLAY_OF_HEADER = Header.REPLAY_OF

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_IDLE_S = 2.0
_TOPIC_WAIT_S = 10.0
_ERROR_WIDTH = 60
_VALUE_BYTES = 40
_DRY_RUN_ROWS = 10


class DeadLetterToolError(Exception):
    """A failure the tool reports in one line (no traceback) and exits 1 for."""


# -- views and filters -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    """One record of the dead-letter topic, with its `dlq.*` headers parsed."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]  # the last value wins when a header name repeats
    raw_headers: tuple[tuple[str, bytes], ...]  # every header, in order
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    original_timestamp: int | None
    reason: str | None
    error: str | None
    failed_at: str | None
    replay_count: int = 0
    replay_of: str | None = None

    @property
    def ref(self) -> str:
        """`<dlq topic>:<partition>:<offset>`, the value of `dlq.replay.of` on its replay."""
        return f"{self.dlq_topic}:{self.dlq_partition}:{self.dlq_offset}"

    @property
    def position(self) -> str:
        return f"{self.dlq_partition}@{self.dlq_offset}"

    @property
    def original(self) -> str:
        if self.original_topic is None:
            return "?"
        partition = "?" if self.original_partition is None else self.original_partition
        offset = "?" if self.original_offset is None else self.original_offset
        return f"{self.original_topic}[{partition}]@{offset}"

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers the record had before it was dead-lettered (all but `dlq.*`), in order."""
        return [(k, v) for k, v in self.raw_headers if not k.startswith(DLQ_HEADER_PREFIX)]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "dlq_topic": self.dlq_topic,
            "dlq_partition": self.dlq_partition,
            "dlq_offset": self.dlq_offset,
            "reason": self.reason,
            "error": self.error,
            "original_topic": self.original_topic,
            "original_partition": self.original_partition,
            "original_offset": self.original_offset,
            "original_timestamp": self.original_timestamp,
            "failed_at": self.failed_at,
            "replay_count": self.replay_count,
            "replay_of": self.replay_of,
        }
        for name, data in (("key", self.key), ("value", self.value)):
            text = _utf8(data)
            doc[name] = text
            if data is not None and text is None:
                doc[f"{name}_base64"] = _b64(data)
        doc["headers"] = {k: v.decode("utf-8", "backslashreplace") for k, v in self.raw_headers}
        return doc


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters a command acts on; None means "any"."""

    reasons: frozenset[str] | None = None
    topic: str | None = None
    offsets: tuple[int, int] | None = None  # inclusive range of dlq.original.offset
    partition: int | None = None  # dlq.original.partition
    candidate: str | None = None  # the candidate the value names (see names_candidate)

    def matches(self, view: DeadLetterView) -> bool:
        if self.candidate is not None and not names_candidate(view.value, self.candidate):
            return False
        if self.reasons is not None and view.reason not in self.reasons:
            return False
        if self.topic is not None and view.original_topic != self.topic:
            return False
        if self.partition is not None and view.original_partition != self.partition:
            return False
        if self.offsets is not None:
            low, high = self.offsets
            if view.original_offset is None or not low <= view.original_offset <= high:
                return False
        return True


def names_candidate(value: bytes | None, candidate: str) -> bool:
    """Whether a dead letter's value names `candidate`: as the event's candidate id when it
    parses (`candidateId`, or `data.candidate_id`), else anywhere in it as a JSON string (a
    raw copy that never parsed may still carry the id, and erasure needs to find those too)."""
    if not value:
        return False
    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        data = doc.get("data")
        named = doc.get("candidateId", data.get("candidate_id") if isinstance(data, dict) else None)
        if named == candidate:
            return True
    return (
        json.dumps(candidate).encode() in value
        or json.dumps(candidate, ensure_ascii=False).encode() in value
    )


def parse_dead_letter(record: Any) -> DeadLetterView:
    """A view of an aiokafka ConsumerRecord read from the dead-letter topic."""
    raw = tuple((k, v if v is not None else b"") for k, v in (record.headers or ()))
    headers = dict(raw)

    def text(name: str) -> str | None:
        data = headers.get(name)
        return None if data is None else data.decode("utf-8", "replace")

    def integer(name: str) -> int | None:
        value = text(name)
        try:
            return None if value is None else int(value)
        except ValueError:
            return None

    return DeadLetterView(
        dlq_topic=record.topic,
        dlq_partition=record.partition,
        dlq_offset=record.offset,
        key=record.key,
        value=record.value,
        headers=headers,
        raw_headers=raw,
        original_topic=text(Header.ORIGINAL_TOPIC),
        original_partition=integer(Header.ORIGINAL_PARTITION),
        original_offset=integer(Header.ORIGINAL_OFFSET),
        original_timestamp=integer(Header.ORIGINAL_TIMESTAMP),
        reason=text(Header.REASON),
        error=text(Header.ERROR),
        failed_at=text(Header.FAILED_AT),
        replay_count=max(integer(REPLAY_COUNT_HEADER) or 0, 0),
        replay_of=text(REPLAY_OF_HEADER),
    )


# -- reading -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ScanResult:
    views: list[DeadLetterView]  # the ones that matched, in (partition, offset) order
    read: int  # every record read
    complete: bool  # False: the timeout ended the read before the end-offset hints were reached


async def scan_dead_letters(
    settings: Settings,
    *,
    accept: Callable[[DeadLetterView], bool] | None = None,
    limit: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    idle_s: float = DEFAULT_IDLE_S,
) -> ScanResult:
    """Read the dead-letter topic from the beginning; keep the views `accept` accepts.

    Stops after `limit` accepted views; or once every partition has answered a fetch and
    `idle_s` seconds passed without records, but not before each position has reached the end
    offset read at start and the last fetch's highwater mark when those are above zero; or
    after `timeout_s` seconds in all (a warning says the read may be incomplete).
    """
    topic = settings.dlq_topic
    deadline = time.monotonic() + timeout_s
    consumer = AIOKafkaConsumer(
        **settings.kafka_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="worker-dlq-tools",
    )
    await _start(consumer)
    views: list[DeadLetterView] = []
    read = 0
    complete = True
    try:
        tps = await _assign_from_beginning(consumer, topic, min(deadline, _topic_deadline()))
        hints = await _end_offset_hints(consumer, tps)
        last_record = time.monotonic()
        while True:
            if limit is not None and len(views) >= limit:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                answered = all(consumer.highwater(tp) is not None for tp in tps)
                complete = answered and await _reached(consumer, hints)
                break
            wait = max(min(idle_s, remaining, 1.0), 0.01)
            batch = await consumer.getmany(timeout_ms=int(wait * 1000))
            got = False
            for tp in sorted(batch):
                for record in batch[tp]:
                    got = True
                    read += 1
                    view = parse_dead_letter(record)
                    if accept is None or accept(view):
                        views.append(view)
            # Idleness counts only once every partition has answered a fetch: the first one
            # (metadata, offset reset, connection) can take longer than `idle_s`.
            if got or not all(consumer.highwater(tp) is not None for tp in tps):
                last_record = time.monotonic()
            elif time.monotonic() - last_record >= idle_s and await _reached(consumer, hints):
                break
    finally:
        await consumer.stop()
    views.sort(key=lambda v: (v.dlq_partition, v.dlq_offset))
    if limit is not None:
        views = views[:limit]
    if not complete:
        log.warning(
            "dead-letter read stopped at the timeout before the end offsets",
            topic=topic,
            read=read,
            timeout_s=timeout_s,
        )
    return ScanResult(views=views, read=read, complete=complete)


async def read_dead_letters(
    settings: Settings,
    *,
    reason: set[str] | None = None,
    topic: str | None = None,
    offsets: tuple[int, int] | None = None,
    partition: int | None = None,
    limit: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    idle_s: float = DEFAULT_IDLE_S,
) -> list[DeadLetterView]:
    """The dead letters matching every given filter, in (partition, offset) order.

    `offsets` is an inclusive range of `dlq.original.offset`; `partition` filters on
    `dlq.original.partition`; `limit` keeps the first matches read.
    """
    filters = DeadLetterFilter(
        reasons=frozenset(reason) if reason is not None else None,
        topic=topic,
        offsets=offsets,
        partition=partition,
    )
    result = await scan_dead_letters(
        settings, accept=filters.matches, limit=limit, timeout_s=timeout_s, idle_s=idle_s
    )
    return result.views


async def _start(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Start a client; close it if starting fails, so no connection is left behind."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


def _topic_deadline() -> float:
    return time.monotonic() + _TOPIC_WAIT_S


async def _assign_from_beginning(
    consumer: AIOKafkaConsumer, topic: str, deadline: float
) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    while not partitions:
        if time.monotonic() > deadline:
            raise DeadLetterToolError(f"dead-letter topic {topic!r} not found on the broker")
        await consumer.topics()  # refreshes the cluster metadata
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await asyncio.sleep(0.2)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


async def _end_offset_hints(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """End offsets above zero; only a lower bound of where the read may stop."""
    try:
        ends = await consumer.end_offsets(list(tps))
    except Exception as exc:  # a hint: its absence only means "rely on idleness"
        log.debug("end offsets unavailable", error=describe(exc))
        return {}
    return {tp: end for tp, end in ends.items() if end and end > 0}


async def _reached(consumer: AIOKafkaConsumer, hints: dict[TopicPartition, int]) -> bool:
    """Whether every partition's position is at its end as far as the broker has said: the
    end offset read at start and the highwater mark of the last fetch (lower bounds both)."""
    for tp in consumer.assignment():
        end = max(hints.get(tp, 0), consumer.highwater(tp) or 0)
        if end and await consumer.position(tp) < end:
            return False
    return True


# -- replay ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayPlan:
    read: int
    selected: list[DeadLetterView]  # matched the filters (and the limit)
    to_replay: list[DeadLetterView]
    skipped_loop_guard: list[DeadLetterView]
    skipped_already_replayed: list[DeadLetterView]
    skipped_not_dead_letter: list[DeadLetterView]  # no dlq.original.topic, or points at the DLQ
    max_replays: int
    complete: bool

    @property
    def skipped(self) -> int:
        return (
            len(self.skipped_loop_guard)
            + len(self.skipped_already_replayed)
            + len(self.skipped_not_dead_letter)
        )


@dataclass(slots=True)
class ReplayResult:
    plan: ReplayPlan
    executed: bool
    replayed: list[tuple[DeadLetterView, RecordMetadata]] = field(default_factory=list)
    failed: list[tuple[DeadLetterView, str]] = field(default_factory=list)

    @property
    def by_topic(self) -> dict[str, int]:
        views = [v for v, _ in self.replayed] if self.executed else self.plan.to_replay
        return dict(sorted(Counter(v.original_topic or "?" for v in views).items()))


async def plan_replay(
    settings: Settings,
    filters: DeadLetterFilter,
    *,
    limit: int | None = None,
    max_replays: int = 1,
    include_replayed: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    idle_s: float = DEFAULT_IDLE_S,
) -> ReplayPlan:
    """Which dead letters a replay would send, and which the guards hold back."""
    scan = await scan_dead_letters(settings, timeout_s=timeout_s, idle_s=idle_s)
    replayed_before = {v.replay_of for v in scan.views if v.replay_of}
    selected = [v for v in scan.views if filters.matches(v)]
    if limit is not None:
        selected = selected[:limit]
    plan = ReplayPlan(
        read=scan.read,
        selected=selected,
        to_replay=[],
        skipped_loop_guard=[],
        skipped_already_replayed=[],
        skipped_not_dead_letter=[],
        max_replays=max_replays,
        complete=scan.complete,
    )
    for view in selected:
        if not view.original_topic or view.original_topic == settings.dlq_topic:
            plan.skipped_not_dead_letter.append(view)
        elif view.replay_count >= max_replays:
            plan.skipped_loop_guard.append(view)
        elif not include_replayed and view.ref in replayed_before:
            plan.skipped_already_replayed.append(view)
        else:
            plan.to_replay.append(view)
    return plan


def replay_headers(view: DeadLetterView) -> list[tuple[str, bytes]]:
    """The original headers, the replay count and reference, and where the record first was
    (`dlq.replay.origin`, kept from an earlier replay): the erasure ledger tells a replay of
    an old record from a new record by it (worker/erasure.py)."""
    origin = view.headers.get(Header.REPLAY_ORIGIN) or (
        f"{view.original_topic}:{view.original_partition}:{view.original_offset}".encode()
        if view.original_offset is not None
        else None
    )
    return [
        *view.original_headers(),
        (REPLAY_COUNT_HEADER, str(view.replay_count + 1).encode()),
        (REPLAY_OF_HEADER, view.ref.encode()),
        *([(Header.REPLAY_ORIGIN, origin)] if origin else []),
    ]


async def publish_replay(
    settings: Settings, views: Sequence[DeadLetterView], *, progress: bool = False
) -> tuple[list[tuple[DeadLetterView, RecordMetadata]], list[tuple[DeadLetterView, str]]]:
    """Send `views` to their original topics and wait for every acknowledgement."""
    from tqdm import tqdm

    replayed: list[tuple[DeadLetterView, RecordMetadata]] = []
    failed: list[tuple[DeadLetterView, str]] = []
    if not views:
        return replayed, failed
    producer = AIOKafkaProducer(
        **settings.kafka_options(),
        acks="all",
        enable_idempotence=False,  # idempotence needs InitProducerId, which some brokers lack
        linger_ms=5,
        client_id="worker-dlq-replay",
    )
    await _start(producer)
    bar = tqdm(
        total=len(views), file=sys.stderr, unit="rec", desc="replaying", disable=not progress
    )
    try:
        partitions: dict[str, set[int]] = {}
        sent: list[tuple[DeadLetterView, asyncio.Future[RecordMetadata]]] = []
        for view in views:
            topic = view.original_topic
            assert topic is not None  # plan_replay keeps only dead letters with a topic
            try:
                if topic not in partitions:
                    partitions[topic] = set(await producer.partitions_for(topic))
                # The original partition keeps the record beside its key's other events even
                # when the original producer's partitioner differs from ours.
                partition = (
                    view.original_partition
                    if view.original_partition in partitions[topic]
                    else None
                )
                future = await producer.send(
                    topic,
                    value=view.value,
                    key=view.key,
                    headers=replay_headers(view),
                    partition=partition,
                )
            except Exception as exc:
                failed.append((view, describe(exc)))
                bar.update(1)
                continue
            future.add_done_callback(lambda _f: bar.update(1))
            sent.append((view, future))
        outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (view, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed.append((view, describe(outcome)))
            else:
                replayed.append((view, outcome))
    finally:
        bar.close()
        await producer.stop()
    return replayed, failed


async def replay_dead_letters(
    settings: Settings,
    *,
    reason: set[str] | None = None,
    topic: str | None = None,
    offsets: tuple[int, int] | None = None,
    partition: int | None = None,
    candidate: str | None = None,
    limit: int | None = None,
    max_replays: int = 1,
    include_replayed: bool = False,
    execute: bool = False,
    progress: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    idle_s: float = DEFAULT_IDLE_S,
) -> ReplayResult:
    """Plan a replay and, with `execute`, publish it. Without `execute` nothing is sent."""
    filters = DeadLetterFilter(
        reasons=frozenset(reason) if reason is not None else None,
        topic=topic,
        offsets=offsets,
        partition=partition,
        candidate=candidate,
    )
    plan = await plan_replay(
        settings,
        filters,
        limit=limit,
        max_replays=max_replays,
        include_replayed=include_replayed,
        timeout_s=timeout_s,
        idle_s=idle_s,
    )
    result = ReplayResult(plan=plan, executed=execute)
    if execute:
        result.replayed, result.failed = await publish_replay(
            settings, plan.to_replay, progress=progress
        )
    return result


# -- output ------------------------------------------------------------------------------------


def _utf8(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


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


def _offsets(args: argparse.Namespace) -> tuple[int, int] | None:
    low, high = args.from_offset, args.to_offset
    if low is None and high is None:
        return None
    low = 0 if low is None else low
    high = sys.maxsize if high is None else high
    if low > high:
        raise DeadLetterToolError(f"--from-offset {low} is above --to-offset {high}")
    return (low, high)


async def _inspect(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    filters = DeadLetterFilter(
        reasons=frozenset(args.reason) if args.reason else None,
        topic=args.topic,
        offsets=_offsets(args),
        partition=args.partition,
        candidate=args.candidate,
    )
    scan = await scan_dead_letters(
        settings,
        accept=filters.matches,
        limit=args.limit,
        timeout_s=args.timeout,
        idle_s=args.idle,
    )
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
        reason=set(args.reason) if args.reason else None,
        topic=args.topic,
        offsets=_offsets(args),
        partition=args.partition,
        candidate=args.candidate,
        limit=args.limit,
        max_replays=args.max_replays,
        include_replayed=args.include_replayed,
        execute=args.execute,
        progress=args.execute,
        timeout_s=args.timeout,
        idle_s=args.idle,
    )
    print_replay(result, settings.dlq_topic, out)
    return 1 if result.failed else 0


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
