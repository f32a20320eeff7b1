"""The broker read without a consumer group: which topics exist, their partitions, and where
their logs start and end.

The worker (its start check, its lost-log check) and the operator tools (worker/tools/) ask
these questions here, one way:

- Which topics exist is read from the metadata of all topics (`consumer.topics()`): asking for
  a topic by name can create it on a broker that auto-creates topics.
- A consumed or dead-letter topic the broker does not have is a configuration error naming its
  setting (`topic_missing`), which the command line turns into exit code 2.
- `reader()` builds a consumer outside any group: it never joins the workers' group, so it
  triggers no rebalance, and it commits nothing.
- A log's end (`log_bounds`) is the larger of two answers, because brokers differ: ListOffsets
  (`end_offsets`) is exact on Kafka but under-reports on some Kafka-protocol brokers (Tansu
  answers with an offset inside the last batch), while the high watermark of a fetch response
  is exact on both. So the reader is positioned at the reported end and fetches until every
  partition's response has come back; if one has not within END_PROBE_S, its end is unknown
  (TimeoutError), never the reported one, which may be short. A consumer's cached high
  watermark is never used as the end: it is as old as that consumer's last fetch of the
  partition, and a paused partition is not fetched (`log_ends` reads through a new consumer
  every time, stops it whatever happens, and gives up after LOG_ENDS_DEADLINE_S, so a broker
  that never answers cannot hold the worker's loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.config import ConfigError, Settings

# The settings that name a topic the worker needs, in the order a start check reports them.
TOPIC_SETTINGS: tuple[str, ...] = ("proctoring_topic", "interview_topic", "dlq_topic")
# How long the fetches that read the high watermarks may take before the ends are unknown.
END_PROBE_S = 5.0
# The bound on a whole `log_ends` read: connecting, ListOffsets, the probe, closing.
LOG_ENDS_DEADLINE_S = 15.0


def reader(settings: Settings, client_id: str, **options: Any) -> AIOKafkaConsumer:
    """An unstarted consumer outside any group, with the settings' connection and security."""
    return AIOKafkaConsumer(
        **settings.kafka_options(),
        group_id=None,
        client_id=client_id,
        enable_auto_commit=False,
        **options,
    )


async def start(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Start a client; close it if starting fails, so no connection is left behind."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


def topic_missing(settings: Settings, topic: str) -> ConfigError:
    """The configuration error for `topic`, one of the settings' topics, missing on the broker."""
    field = next(f for f in TOPIC_SETTINGS if getattr(settings, f) == topic)
    return ConfigError(f"{Settings.env_name(field)}: topic {topic!r} does not exist on the broker")


def require_topics(existing: Collection[str], settings: Settings, topics: Iterable[str]) -> None:
    """Raise `topic_missing` for the first of `topics` not in `existing` (the broker's topics)."""
    for topic in topics:
        if topic not in existing:
            raise topic_missing(settings, topic)


async def partitions(
    consumer: AIOKafkaConsumer, topic: str, *, wait_s: float = 0.0
) -> list[TopicPartition]:
    """The partitions of `topic` in order; [] if the broker still has none after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        existing = await consumer.topics()
        numbers = consumer.partitions_for_topic(topic) if topic in existing else None
        if numbers:
            return [TopicPartition(topic, p) for p in sorted(numbers)]
        if time.monotonic() >= deadline:
            return []
        await asyncio.sleep(0.2)


async def log_bounds(
    consumer: Any, tps: Collection[TopicPartition], probe_s: float = END_PROBE_S
) -> dict[TopicPartition, tuple[int, int]]:
    """{tp: (log start, log end)} now, through `consumer` (started, group-less; it is
    assigned `tps` and its positions are moved)."""
    tps = list(tps)
    starts = await consumer.beginning_offsets(tps)
    reported = await consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, reported[tp])
    deadline = time.monotonic() + probe_s
    while unanswered := [tp for tp in tps if consumer.highwater(tp) is None]:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no fetch answer within {probe_s} s for {len(unanswered)} partition(s): "
                "their log ends are unknown"
            )
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
    watermark of an earlier read can stand in for the broker's answer). Raises TimeoutError
    when the broker does not answer within LOG_ENDS_DEADLINE_S."""
    consumer = reader()
    try:
        async with asyncio.timeout(LOG_ENDS_DEADLINE_S):
            await consumer.start()
            bounds = await log_bounds(consumer, tps)
    finally:
        await consumer.stop()
    return {tp: end for tp, (_, end) in bounds.items()}
