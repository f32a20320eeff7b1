"""The reference points, each run in its own process (its own core, like the worker):

* `naive` - the consumer most tutorials show: per record `json.loads`, one INSERT in its own
  transaction, then a Kafka offset commit;
* `peer`  - what a careful engineer writes in an afternoon: a consumer group, a `getmany`
  loop, msgspec decode, one `executemany` of `INSERT ... ON CONFLICT DO NOTHING` per batch in
  one transaction, then the Kafka offset commit;
* `copy`  - PostgreSQL's COPY of the same rows, already decoded and in memory, into the real
  `proctoring_events`: the database's ingest ceiling for this table on this machine;
* `bare_copy` - the same COPY of the same rows' five identity and text columns into a table
  with nothing but its primary key: the ceiling of the server itself;
* `fetch` - aiokafka fetching every record (no group, all partitions assigned) plus the
  worker's msgspec decode, no database: the consume ceiling;
* `bare_consumer` - aiokafka with the worker's fetch settings reading a paced stream and
  noting, per record, when `getmany` returned it: the produce -> fetch latency the worker's
  own latency is compared with.

`python -m bench.baselines KIND PARAMS_JSON` prints one JSON line with the result (the last
line of its stdout). Lines before it are progress for the benchmark: `mark N` (N events done;
the benchmark takes a CPU snapshot), `hold` (after the last mark: the process waits for a line
on stdin, so it is still alive for that snapshot), `assigned` and `ready` (the bare consumer
waits for the warm-up records, then for the stream).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench.workerproc import vm_hwm_mb

COLUMNS = [
    "exam_id",
    "candidate_id",
    "type",
    "created_at",
    "description",
    "media_url",
    "details",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
]

_NAIVE_INSERT = """
INSERT INTO proctoring_events (
    exam_id, candidate_id, type, created_at, description, media_url, details,
    kafka_topic, kafka_partition, kafka_offset)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""


def _peak() -> float | None:
    return vm_hwm_mb(os.getpid())


def _say(line: str) -> None:
    """A progress line for the benchmark (see the module docstring)."""
    print(line, flush=True)


async def _final_mark(events: int) -> None:
    """The last `mark`, then wait (stdin) until the benchmark has taken its CPU snapshot, so
    this process and its PostgreSQL backend are still alive when it does."""
    _say(f"mark {events}")
    _say("hold")
    await asyncio.to_thread(sys.stdin.readline)


async def naive(p: dict[str, Any]) -> dict[str, Any]:
    """Tutorial-style: `async for msg in consumer`, json.loads, INSERT (autocommit: its own
    transaction), `await consumer.commit()`. Stops after `limit` records or `seconds`."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        p["topic"],
        bootstrap_servers=p["bootstrap_servers"],
        group_id=p["group_id"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    conn = await asyncpg.connect(p["database_url"])
    await consumer.start()
    count = 0
    first = last = 0.0
    try:
        async for msg in consumer:
            if count == 0:
                first = time.perf_counter()
            event = json.loads(msg.value)
            await conn.execute(
                _NAIVE_INSERT,
                event["examId"],
                event["candidateId"],
                event["type"],
                dt.datetime.fromisoformat(event["createdAt"]),
                event.get("description", ""),
                event.get("mediaUrl"),
                None,
                msg.topic,
                msg.partition,
                msg.offset,
            )
            await consumer.commit()
            count += 1
            last = time.perf_counter()
            if count >= p["limit"] or last - first >= p["seconds"]:
                break
    finally:
        await consumer.stop()
        await conn.close()
    seconds = last - first
    return {
        "events": count,
        "seconds": round(seconds, 4),
        # The first record's own work is inside the span, so all records count.
        "events_per_s": round(count / seconds, 1) if seconds > 0 else None,
        "peak_rss_mb": _peak(),
    }


def decoded_proctoring(spec: Any, partitions: int) -> list[tuple[Any, int, int]]:
    """The proctoring workload (a `bench.data.ProctoringSpec`) decoded by the worker's decoder,
    as (event, partition, offset), spread over `partitions` by the record key."""
    from bench.data import proctoring_workload
    from worker.decode import proctoring_decoder

    decoded: list[tuple[Any, int, int]] = []
    offsets: dict[int, int] = {}
    for rec in proctoring_workload(spec):
        partition = zlib.crc32(rec.key) % partitions
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        decoded.append((proctoring_decoder.decode(rec.value), partition, offset))
    return decoded


def copy_row(ev: Any, topic: str, partition: int, offset: int) -> tuple[Any, ...]:
    """An event as a row of COLUMNS."""
    from schemas.common import tag_of

    return (
        ev.examId,
        ev.candidateId,
        tag_of(ev),
        ev.createdAt,
        ev.description,
        ev.media_url,
        None,
        topic,
        partition,
        offset,
    )


def _copy_rows(p: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The proctoring workload, decoded by the worker's decoder into the handler's row shape."""
    from bench.data import ProctoringSpec

    decoded = decoded_proctoring(ProctoringSpec(**p["spec"]), p["partitions"])
    return [copy_row(ev, p["topic"], partition, offset) for ev, partition, offset in decoded]


async def copy(p: dict[str, Any]) -> dict[str, Any]:
    rows = _copy_rows(p)
    conn = await asyncpg.connect(p["database_url"])
    try:
        started = time.perf_counter()
        await conn.copy_records_to_table("proctoring_events", records=rows, columns=COLUMNS)
        seconds = time.perf_counter() - started
        stored = await conn.fetchval("SELECT count(*) FROM proctoring_events")
    finally:
        await conn.close()
    return {
        "events": len(rows),
        "stored": stored,
        "seconds": round(seconds, 4),
        "events_per_s": round(len(rows) / seconds, 1),
        "peak_rss_mb": _peak(),
    }


BARE_TABLE = "bench_bare_copy"
BARE_COLUMNS = COLUMNS[:5]
BARE_DDL = f"""
CREATE TABLE {BARE_TABLE} (
    exam_id      text        NOT NULL,
    candidate_id text        NOT NULL,
    type         text        NOT NULL,
    created_at   timestamptz NOT NULL,
    description  text        NOT NULL,
    PRIMARY KEY (exam_id, candidate_id, type, created_at)
)
"""


async def bare_copy(p: dict[str, Any]) -> dict[str, Any]:
    """Binary COPY (copy_records_to_table) of the workload's rows, as 5-tuples in memory, into
    a 5-column table that has only its primary key (no other index, no check, no defaults)."""
    rows = [row[:5] for row in _copy_rows(p)]
    conn = await asyncpg.connect(p["database_url"])
    try:
        await conn.execute(BARE_DDL)
        started = time.perf_counter()
        await conn.copy_records_to_table(BARE_TABLE, records=rows, columns=BARE_COLUMNS)
        seconds = time.perf_counter() - started
        stored = await conn.fetchval(f"SELECT count(*) FROM {BARE_TABLE}")
    finally:
        await conn.close()
    return {
        "events": len(rows),
        "stored": stored,
        "seconds": round(seconds, 4),
        "events_per_s": round(len(rows) / seconds, 1),
        "table": BARE_DDL.strip(),
        "peak_rss_mb": _peak(),
    }


class PeerEvent(msgspec.Struct):
    """The proctoring fields, as a peer would declare them (unknown fields ignored)."""

    examId: str
    candidateId: str
    type: str
    createdAt: dt.datetime
    description: str = ""
    mediaUrl: str | None = None


_PEER_INSERT = """
INSERT INTO proctoring_events (
    exam_id, candidate_id, type, created_at, description, media_url,
    kafka_topic, kafka_partition, kafka_offset)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
"""


async def peer(p: dict[str, Any]) -> dict[str, Any]:
    """The competent peer: subscribe in a consumer group, `getmany(timeout_ms, max_records)`,
    decode each record with a msgspec Struct, `executemany` of the INSERT ... ON CONFLICT DO
    NOTHING inside one transaction per batch, then `consumer.commit()`. Stops once `events`
    records are stored (or after `timeout` s)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        p["topic"],
        bootstrap_servers=p["bootstrap_servers"],
        group_id=p["group_id"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    decode = msgspec.json.Decoder(PeerEvent).decode
    conn = await asyncpg.connect(p["database_url"])
    await consumer.start()
    total = p["events"]
    count = batches = failures = 0
    first = last = 0.0
    deadline = time.monotonic() + p["timeout"]
    try:
        while count < total and time.monotonic() < deadline:
            fetched = await consumer.getmany(
                timeout_ms=p["timeout_ms"], max_records=p["max_records"]
            )
            if not fetched:
                continue
            rows = []
            for tp, records in fetched.items():
                for r in records:
                    try:
                        ev = decode(r.value)
                    except msgspec.DecodeError:
                        failures += 1
                        continue
                    rows.append(
                        (
                            ev.examId,
                            ev.candidateId,
                            ev.type,
                            ev.createdAt,
                            ev.description,
                            ev.mediaUrl,
                            tp.topic,
                            tp.partition,
                            r.offset,
                        )
                    )
            if count == 0:
                first = time.perf_counter()
            async with conn.transaction():
                await conn.executemany(_PEER_INSERT, rows)
            await consumer.commit()
            count += sum(len(records) for records in fetched.values())
            batches += 1
            last = time.perf_counter()
            if count < total:
                _say(f"mark {count}")
        await _final_mark(count)
    finally:
        await consumer.stop()
        await conn.close()
    seconds = last - first
    return {
        "events": count,
        "batches": batches,
        "decode_failures": failures,
        "seconds_own_clock": round(seconds, 4),
        "timeout_ms": p["timeout_ms"],
        "max_records": p["max_records"],
        "peak_rss_mb": _peak(),
    }


class _Probe(msgspec.Struct):
    examId: str
    createdAt: dt.datetime


def worker_fetch_sizes() -> dict[str, int]:
    """The worker's consumer fetch sizes, as worker/clients.py derives them from the settings
    (WORKER_MAX_BATCH_BYTES bounds them), so a baseline fetches exactly as the worker does."""
    from worker.clients import fetch_sizes
    from worker.config import Settings

    return fetch_sizes(Settings.from_env(os.environ))


def _reader(p: dict[str, Any], **extra: Any) -> Any:
    """A consumer outside any group, fetching with the worker's sizes (worker/clients.py) from
    the log start; the caller assigns the partitions."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        bootstrap_servers=p["bootstrap_servers"],
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **worker_fetch_sizes(),
        isolation_level="read_committed",
        **extra,
    )


def worker_fetch_wait_ms() -> int:
    """The worker's fetch wait: WORKER_FETCH_WAIT_MS, else its configured default."""
    value = os.environ.get("WORKER_FETCH_WAIT_MS", "").strip()
    if value:
        return int(value)
    try:
        import dataclasses

        from worker.config import Settings

        return int({f.name: f.default for f in dataclasses.fields(Settings)}["fetch_wait_ms"])
    except Exception:
        return 50


async def bare_consumer(p: dict[str, Any]) -> dict[str, Any]:
    """Assign every partition (no group), read from the log start; once the warm-up record of
    each partition has arrived, print `ready`; then, per stream record, note its `createdAt`
    (the send time) and the moment the `getmany` that returned it came back. Stops after
    `events` stream records, 10 s without one, or `timeout` s. The samples (created epoch s,
    latency ms) go to `samples_path` as JSON, written by main() once the loop has ended."""
    from aiokafka import TopicPartition

    fetch_wait = worker_fetch_wait_ms()
    # The worker's fetch settings, so only the worker's own work separates the two latencies.
    consumer = _reader(p, fetch_max_wait_ms=fetch_wait)
    await consumer.start()
    tps = [TopicPartition(p["topic"], i) for i in range(p["partitions"])]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    decode = msgspec.json.Decoder(_Probe).decode
    warmup_exam = p["warmup_exam"]
    total = p["events"]
    warm = 0
    created: list[float] = []
    latency: list[float] = []
    deadline = time.monotonic() + p["timeout"]
    idle_since = time.monotonic()
    _say("assigned")
    try:
        while len(created) < total:
            fetched = await consumer.getmany(timeout_ms=fetch_wait, max_records=p["max_records"])
            now = time.time()
            mono = time.monotonic()
            n = 0
            for records in fetched.values():
                for r in records:
                    ev = decode(r.value)
                    if ev.examId == warmup_exam:
                        warm += 1
                        if warm == p["partitions"]:
                            _say("ready")
                        continue
                    sent = ev.createdAt.timestamp()
                    created.append(sent)
                    latency.append((now - sent) * 1000.0)
                    n += 1
            if n:
                idle_since = mono
            elif created and mono - idle_since > 10.0:
                break
            if mono > deadline:
                break
        await _final_mark(len(created))
    finally:
        await consumer.stop()
    return {
        # Written to samples_path by main(), not printed.
        "samples": (p["samples_path"], [created, latency]),
        "events": len(created),
        "fetch_max_wait_ms": fetch_wait,
        "max_records": p["max_records"],
        "peak_rss_mb": _peak(),
    }


async def fetch(p: dict[str, Any]) -> dict[str, Any]:
    """Fetch all records with the worker's consumer settings, decode each with its decoder."""
    from aiokafka import TopicPartition

    from worker.decode import proctoring_decoder
    from worker.dlq import DecodeFailure

    consumer = _reader(p)
    await consumer.start()
    tps = [TopicPartition(p["topic"], i) for i in range(p["partitions"])]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    decode = proctoring_decoder.decode
    total = p["events"]
    count = failures = 0
    first = last = 0.0
    first_batch = 0
    deadline = time.monotonic() + p["timeout"]
    try:
        while count < total:
            batch = await consumer.getmany(timeout_ms=100, max_records=p["max_records"])
            n = 0
            for records in batch.values():
                for record in records:
                    if isinstance(decode(record.value), DecodeFailure):
                        failures += 1
                n += len(records)
            if n:
                if count == 0:
                    first, first_batch = time.perf_counter(), n
                count += n
                last = time.perf_counter()
            if time.monotonic() > deadline:
                break
    finally:
        await consumer.stop()
    seconds = last - first
    return {
        "events": count,
        "first_batch_events": first_batch,
        "decode_failures": failures,
        "seconds": round(seconds, 4),
        # Same convention as the worker: the first batch arrived before the clock started.
        "events_per_s": round((count - first_batch) / seconds, 1) if seconds > 0 else None,
        "peak_rss_mb": _peak(),
    }


KINDS = {
    "naive": naive,
    "peer": peer,
    "copy": copy,
    "bare_copy": bare_copy,
    "fetch": fetch,
    "bare_consumer": bare_consumer,
}


def main() -> int:
    kind, params = sys.argv[1], json.loads(sys.argv[2])
    from worker.runner import event_loop_runner

    result = event_loop_runner()(KINDS[kind](params))
    if "samples" in result:
        path, samples = result.pop("samples")
        Path(path).write_bytes(msgspec.json.encode(samples))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
