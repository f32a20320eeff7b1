"""The reference points, each run in its own process (its own core, like the worker):

* `naive` - the consumer most tutorials show: per record `json.loads`, one INSERT in its own
  transaction, then a Kafka offset commit;
* `copy`  - PostgreSQL's COPY of the same rows, already decoded and in memory: the database's
  ingest ceiling for this table on this machine;
* `fetch` - aiokafka fetching every record (no group, all partitions assigned) plus the
  worker's msgspec decode, no database: the consume ceiling.

`python -m bench.baselines KIND PARAMS_JSON` prints one JSON line with the result.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import zlib
from typing import Any

import asyncpg

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
    import os

    return vm_hwm_mb(os.getpid())


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


def _copy_rows(p: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The proctoring workload, decoded by the worker's decoder into the handler's row shape."""
    from bench.data import ProctoringSpec, proctoring_workload
    from schemas.common import tag_of
    from worker.decode import proctoring_decoder

    spec = ProctoringSpec(**p["spec"])
    rows: list[tuple[Any, ...]] = []
    offsets: dict[int, int] = {}
    for rec in proctoring_workload(spec):
        ev: Any = proctoring_decoder.decode(rec.value)
        partition = zlib.crc32(rec.key) % p["partitions"]
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        rows.append(
            (
                ev.examId,
                ev.candidateId,
                tag_of(ev),
                ev.createdAt,
                ev.description,
                ev.media_url,
                None,
                p["topic"],
                partition,
                offset,
            )
        )
    return rows


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


async def fetch(p: dict[str, Any]) -> dict[str, Any]:
    """Fetch all records with the worker's consumer settings, decode each with its decoder."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from worker.decode import DecodeFailure, proctoring_decoder

    consumer = AIOKafkaConsumer(
        bootstrap_servers=p["bootstrap_servers"],
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
        isolation_level="read_committed",
    )
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


KINDS = {"naive": naive, "copy": copy, "fetch": fetch}


def main() -> int:
    kind, params = sys.argv[1], json.loads(sys.argv[2])
    from worker.cli import _event_loop_runner

    result = _event_loop_runner()(KINDS[kind](params))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
