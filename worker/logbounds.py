"""Where a partition's log starts and ends now, read from the broker by a group-less consumer.

The end is the larger of two answers, because brokers differ: ListOffsets (`end_offsets`) is
exact on Kafka but under-reports on some Kafka-protocol brokers (Tansu answers with an offset
inside the last batch), while the high watermark of a fetch response is exact on both. So
the reader is positioned at the reported end and fetches until every partition's response
has come back. A consumer's cached high watermark is never used as the end: it is as old as
that consumer's last fetch of the partition, and a paused partition is not fetched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from aiokafka import TopicPartition

# How long the fetches that read the high watermarks may take before the reported ends stand.
END_PROBE_S = 5.0


async def topic_partitions(consumer: Any, topics: Collection[str]) -> list[TopicPartition]:
    """Every partition of `topics` (metadata of all topics: asking for some by name could
    create them); a topic the broker does not have contributes none."""
    existing = await consumer.topics()
    found: list[TopicPartition] = []
    for topic in topics:
        numbers = consumer.partitions_for_topic(topic) if topic in existing else None
        found.extend(TopicPartition(topic, p) for p in sorted(numbers or ()))
    return found


async def log_bounds(
    consumer: Any, tps: Collection[TopicPartition]
) -> dict[TopicPartition, tuple[int, int]]:
    """{tp: (log start, log end)} now, through `consumer` (started, group-less; it is
    assigned `tps` and its positions are moved)."""
    tps = list(tps)
    starts = await consumer.beginning_offsets(tps)
    reported = await consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, reported[tp])
    deadline = time.monotonic() + END_PROBE_S
    while unanswered := [tp for tp in tps if consumer.highwater(tp) is None]:
        if time.monotonic() > deadline:
            break
        await consumer.getmany(*unanswered, timeout_ms=200)
    bounds: dict[TopicPartition, tuple[int, int]] = {}
    for tp in tps:
        seen = consumer.last_stable_offset(tp)
        if seen is None:
            seen = consumer.highwater(tp)
        bounds[tp] = (starts[tp], max(reported[tp], seen or 0))
    return bounds


async def log_ends(
    reader: Callable[[], Any], tps: Collection[TopicPartition]
) -> dict[TopicPartition, int]:
    """{tp: log end} now, through a new consumer from `reader()` (a fresh one, so that no high
    watermark of an earlier read can stand in for the broker's answer)."""
    consumer = reader()
    await consumer.start()
    try:
        bounds = await log_bounds(consumer, tps)
    finally:
        await consumer.stop()
    return {tp: end for tp, (_, end) in bounds.items()}
