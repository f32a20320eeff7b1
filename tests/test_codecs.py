"""Records as real producers send them (docs/contract.md §3, §6), through the real broker.

librdkafka producers compress with snappy, lz4 or zstd in production; headers carry binary,
empty and null values; keys may be null. One proctoring partition per codec, each written by
its own confluent-kafka producer: every valid record must be stored, every malformed one
dead-lettered exactly once with key, value and headers byte for byte.

A batch the worker still cannot read (here: snappy with the codec refused in this process)
must stall only its own partition, be reported once, counted in a metric and turn /readyz
unready, and the partition must resume by itself once the batch is readable.

What was produced is counted from the delivery reports: the embedded broker's end offsets
under-report.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiokafka.codec
import confluent_kafka
import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import UnsupportedCodecError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from support.e2e import (
    RUN_DLQ_HEADERS,
    fetch,
    http_get,
    running_worker,
    settings_for,
    wait_for,
    wait_for_offsets,
)
from support.infra import TopicFactory, Topics, consume_all, unique_name

from worker.dev.seeds import proctoring_samples
from worker.dev.stack import free_port

pytestmark = pytest.mark.integration

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")

Header = tuple[str, bytes | None]


@dataclass(frozen=True)
class Out:
    """A record to produce; `reason` is its expected dead-letter reason (None: stored)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    record: Out


def _event(exam: str, **fields: Any) -> bytes:
    event = {
        "examId": exam,
        "candidateId": "cand-1",
        "type": "STARTED",
        "createdAt": "2025-09-21T12:00:10Z",
    }
    event.update(fields)
    return json.dumps(event).encode()


def _valid(exam: str) -> list[Out]:
    binary = (("trace", b"\x00\xff\x80"),)
    return [Out(f"{exam}:cand-1".encode(), v, binary) for v in proctoring_samples(exam, "cand-1")]


def _malformed(exam: str) -> list[Out]:
    missing = json.loads(_event(exam))
    del missing["candidateId"]
    return [
        Out(
            None,
            b'{"examId": oops',
            (("bin", b"\xff\xfe\x00\x80"), ("null", None), ("empty", b"")),
            "invalid_json",
        ),
        Out(
            f"bad:{exam}".encode(),
            json.dumps(missing).encode(),
            (("null", None),),
            "schema_violation",
        ),
        Out(None, b"", (("empty", b""), ("empty", b"")), "empty_payload"),
        Out(b"tomb", None, (("null", None), ("bin", bytes(range(256)))), "empty_payload"),
        Out(b"", _event(exam, type="TELEPORTED"), (), "unknown_event_type"),
    ]


def _interleave(valid: Sequence[Out], bad: Sequence[Out]) -> list[Out]:
    """Malformed records between valid ones, so both share batches."""
    out: list[Out] = []
    for n, record in enumerate(valid):
        out.append(record)
        if n < len(bad):
            out.append(bad[n])
    return out + list(bad[len(valid) :])


def _produce_sync(
    bootstrap: str, topic: str, partition: int, codec: str, records: Sequence[Out]
) -> list[Sent]:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            # The embedded broker has no InitProducerId.
            "enable.idempotence": False,
            "acks": "all",
            # Long enough that the records of one call share compressed batches.
            "linger.ms": 50,
        }
    )
    sent: list[Sent] = []
    errors: list[Any] = []

    def report(record: Out, err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            sent.append(Sent(msg.partition(), msg.offset(), record))

    for record in records:
        producer.produce(
            topic,
            value=record.value,
            key=record.key,
            partition=partition,
            headers=list(record.headers),
            on_delivery=functools.partial(report, record),
        )
    remaining = producer.flush(30)
    assert remaining == 0 and not errors, (remaining, errors)
    assert len(sent) == len(records)
    return sent


async def _produce(
    bootstrap: str, topic: str, partition: int, codec: str, records: Sequence[Out]
) -> list[Sent]:
    return await asyncio.to_thread(_produce_sync, bootstrap, topic, partition, codec, records)


async def _topics(topic_factory: TopicFactory, proctoring_partitions: int) -> Topics:
    proctoring, interview, dlq = await asyncio.gather(
        topic_factory(proctoring_partitions), topic_factory(1), topic_factory(1)
    )
    return Topics(proctoring, interview, dlq, unique_name("g_"))


def _next_offsets(topic: str, sent: Sequence[Sent]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for s in sent:
        out[(topic, s.partition)] = max(out.get((topic, s.partition), 0), s.offset + 1)
    return out


async def _rows_by_partition(database_url: str) -> dict[int, int]:
    rows = await fetch(
        database_url,
        "SELECT kafka_partition, count(*) AS n FROM proctoring_events GROUP BY 1",
    )
    return {r["kafka_partition"]: r["n"] for r in rows}


def _dlq_fields(letter: ConsumerRecord[bytes, bytes], original: int) -> dict[str, str]:
    added = list(letter.headers)[original:]
    assert [k for k, _ in added] == list(RUN_DLQ_HEADERS), added
    return {k: bytes(v).decode() for k, v in added}


async def test_every_codec_and_header_shape_is_stored_or_dead_lettered_byte_for_byte(
    kafka_bootstrap: str, database_url: str, topic_factory: TopicFactory
) -> None:
    topics = await _topics(topic_factory, len(CODECS))
    sent: list[Sent] = []
    for partition, codec in enumerate(CODECS):
        exam = f"exam-{codec}"
        records = _interleave(_valid(exam), _malformed(exam))
        sent += await _produce(kafka_bootstrap, topics.proctoring, partition, codec, records)
    assert {s.partition for s in sent} == set(range(len(CODECS)))
    by_coords = {(s.partition, s.offset): s.record for s in sent}
    assert len(by_coords) == len(sent)
    bad = [s for s in sent if s.record.reason is not None]

    settings = settings_for(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        await wait_for_offsets(
            database_url, topics.group_id, _next_offsets(topics.proctoring, sent)
        )

        # Every valid record stored, in the partition of its codec.
        valid_per_partition = len(_valid("x"))
        assert await _rows_by_partition(database_url) == dict.fromkeys(
            range(len(CODECS)), valid_per_partition
        )
        exams = await fetch(
            database_url, "SELECT DISTINCT kafka_partition, exam_id FROM proctoring_events"
        )
        assert {(r["kafka_partition"], r["exam_id"]) for r in exams} == {
            (p, f"exam-{c}") for p, c in enumerate(CODECS)
        }

        # Every malformed record dead-lettered exactly once, byte for byte; asking for one
        # more than expected proves there is no extra copy.
        letters = await consume_all(kafka_bootstrap, topics.dlq, len(bad) + 1, timeout=4)
        assert len(letters) == len(bad)
        seen: set[tuple[int, int]] = set()
        for letter in letters:
            headers = list(letter.headers)
            where = {k: bytes(v or b"").decode() for k, v in headers if k.startswith("dlq.")}
            coords = (int(where["dlq.original.partition"]), int(where["dlq.original.offset"]))
            assert coords in by_coords, coords
            record = by_coords[coords]
            fields = _dlq_fields(letter, len(record.headers))
            assert coords not in seen, f"dead-lettered twice: {coords}"
            seen.add(coords)
            assert fields["dlq.original.topic"] == topics.proctoring
            assert fields["dlq.reason"] == record.reason, (coords, fields["dlq.error"])
            assert letter.key == record.key, coords  # None stays None, b"" stays b""
            assert letter.value == record.value, coords
            # Original headers first, in order, null values still null.
            assert headers[: len(record.headers)] == list(record.headers), coords
        assert seen == {(s.partition, s.offset) for s in bad}

        ready, detail = await worker.readiness()
        assert ready, detail


def _refuse_snappy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process unable to read snappy batches, as without the codec library.

    aiokafka's record reader asks `aiokafka.codec.has_snappy()` before decompressing (the C
    reader too, through the module), and raises UnsupportedCodecError when it says no."""
    snappy = 2  # the codec id in a record batch's attributes
    builder = DefaultRecordBatchBuilder(2, snappy, 0, -1, -1, -1, 1 << 20)
    builder.append(0, timestamp=None, key=None, value=b"v" * 100, headers=[])
    raw = bytes(builder.build())
    monkeypatch.setattr(aiokafka.codec, "has_snappy", lambda: False)
    # The patch must reach the reader aiokafka actually uses (C or Python).
    batch = MemoryRecords(raw).next_batch()
    assert batch is not None
    with pytest.raises(UnsupportedCodecError):
        list(batch)


class _Log:
    """Stands in for a structlog logger: records (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def emit(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))

        return emit


async def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body = await http_get(port, path)
    return status, json.loads(body)


async def test_an_unreadable_batch_stalls_only_its_partition_and_is_reported(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topics = await _topics(topic_factory, 3)
    t = topics.proctoring
    # Partition 0: readable records, then a snappy batch; 1 and 2: uncompressed only.
    before = await _produce(kafka_bootstrap, t, 0, "none", _valid("exam-p0a"))
    snappy = await _produce(kafka_bootstrap, t, 0, "snappy", _valid("exam-p0b"))
    others: list[Sent] = []
    for p in (1, 2):
        records = _interleave(_valid(f"exam-p{p}"), _malformed(f"exam-p{p}")[:1])
        others += await _produce(kafka_bootstrap, t, p, "none", records)
    stuck_at = min(s.offset for s in snappy)
    assert stuck_at == max(s.offset for s in before) + 1

    log = _Log()
    monkeypatch.setattr("worker.fetch.log", log)
    _refuse_snappy(monkeypatch)
    port = free_port()
    settings = settings_for(
        kafka_bootstrap, database_url, topics, metrics_port=port, metrics_host="127.0.0.1"
    )
    async with running_worker(settings) as worker:
        # The other partitions and partition 0's readable records are all stored.
        readable = {**_next_offsets(t, others), (t, 0): stuck_at}
        await wait_for_offsets(database_url, topics.group_id, readable)
        n = len(_valid("x"))
        assert await _rows_by_partition(database_url) == {0: n, 1: n, 2: n}

        async def unready() -> dict[str, Any] | None:
            status, body = await _get(port, "/readyz")
            return body if status == 503 and body.get("partitions_stuck") else None

        body = await wait_for(unready, 30, "/readyz to report the stuck partition")
        assert body["partitions_stuck"] == [f"{t}[0]"], body
        registry = worker.metrics.registry
        labels = {"topic": t, "partition": "0"}
        assert registry.get_sample_value("worker_partition_stuck", labels) == 1
        assert (registry.get_sample_value("worker_unreadable_batches_total", labels) or 0) >= 1
        for p in (1, 2):
            other = {"topic": t, "partition": str(p)}
            assert not registry.get_sample_value("worker_partition_stuck", other)

        # ONE error line, naming the partition, the offset and the cause.
        errors = [line for line in log.lines if line[0] == "error"]
        assert len(errors) == 1, log.lines
        _, _, fields = errors[0]
        assert (fields["topic"], fields["partition"], fields["offset"]) == (t, 0, stuck_at)
        assert "snappy" in fields["error"], fields

        # Nothing past the unreadable batch was committed for partition 0.
        stored = await fetch(
            database_url,
            "SELECT next_offset FROM consumer_offsets WHERE topic = $1 AND partition = 0",
            t,
        )
        assert [r["next_offset"] for r in stored] == [stuck_at]

        # Read again with backoff while it stays unreadable, without another error line.
        async def retried() -> bool:
            failed = registry.get_sample_value("worker_unreadable_batches_total", labels) or 0
            return failed >= 3  # the first read, the one that confirmed it, one retry

        await wait_for(retried, 30, "a failed retry of the stuck partition")
        assert len([line for line in log.lines if line[0] == "error"]) == 1, log.lines

        # Readable again (the codec is back): the partition resumes by itself.
        monkeypatch.undo()
        monkeypatch.setattr("worker.fetch.log", log)
        await wait_for_offsets(
            database_url, topics.group_id, {(t, 0): max(s.offset for s in snappy) + 1}
        )
        assert await _rows_by_partition(database_url) == {0: 2 * n, 1: n, 2: n}

        async def ready() -> bool:
            return (await _get(port, "/readyz"))[0] == 200

        await wait_for(ready, 30, "/readyz to report ready again")
        assert registry.get_sample_value("worker_partition_stuck", labels) == 0
        assert len([line for line in log.lines if line[0] == "error"]) == 1, log.lines
