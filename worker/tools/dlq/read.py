"""Reading the dead-letter topic: every record as a `DeadLetterView` with its `dlq.*` headers
parsed, the filters an operator selects them by, and the read itself.

The topic is read from the beginning of every partition without a consumer group (assign +
seek_to_beginning, through `worker.broker.reader`), so inspecting commits nothing and disturbs
no one. The read ends when fetches have returned nothing for `idle_s` seconds. End offsets are
only a hint (the development broker under-reports them): when one is above zero, the read does
not stop before the partition's position has reached it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker import broker
from worker.config import Settings
from worker.dlq import Header
from worker.retry import describe

log = structlog.get_logger("worker.tools.dlq")

DLQ_HEADER_PREFIX = Header.PREFIX
REPLAY_COUNT_HEADER = Header.REPLAY_COUNT
REPLAY_OF_HEADER = Header.REPLAY_OF

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_IDLE_S = 2.0
_TOPIC_WAIT_S = 10.0


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


def names_candidate(value: bytes | None, candidate: str) -> bool:
    """Whether a dead letter's value names `candidate`: as the event's candidate id when it
    parses (`candidateId`, or `data.candidate_id`), else anywhere in it as a JSON string (a
    raw copy that never parsed may still carry the id, and an erasure needs to find those)."""
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
    quoted = (json.dumps(candidate), json.dumps(candidate, ensure_ascii=False))
    return any(q.encode() in value for q in quoted)


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
    consumer = broker.reader(settings, "worker-dlq-tools", auto_offset_reset="earliest")
    await broker.start(consumer)
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
    candidate: str | None = None,
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
        candidate=candidate,
    )
    result = await scan_dead_letters(
        settings, accept=filters.matches, limit=limit, timeout_s=timeout_s, idle_s=idle_s
    )
    return result.views


def _topic_deadline() -> float:
    return time.monotonic() + _TOPIC_WAIT_S


async def _assign_from_beginning(
    consumer: AIOKafkaConsumer, topic: str, deadline: float
) -> list[TopicPartition]:
    tps = await broker.partitions(consumer, topic, wait_s=max(0.0, deadline - time.monotonic()))
    if not tps:
        raise DeadLetterToolError(f"dead-letter topic {topic!r} not found on the broker")
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
