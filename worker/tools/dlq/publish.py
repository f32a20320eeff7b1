"""Publishing a replay: each dead letter back to its original topic.

A dead letter goes to its original topic (`dlq.original.topic`), to its original partition when
that still exists (beside its key's other events even when the original producer's partitioner
differs from ours), with its original key, value and headers (every header but the `dlq.*`
ones), plus `dlq.replay.count` (previous count + 1), `dlq.replay.of`
(`<dlq topic>:<partition>:<offset>`) and `dlq.replay.origin` (the dead letter's signed
`dlq.origin`, verbatim). Every send is awaited: a failure is reported per record.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from worker import broker
from worker.config import Settings
from worker.dlq import Header
from worker.retry import describe
from worker.tools.dlq.read import REPLAY_COUNT_HEADER, REPLAY_OF_HEADER, DeadLetterView


def replay_headers(view: DeadLetterView) -> list[tuple[str, bytes]]:
    """The original headers (without any `dlq.*` header a producer set), the replay count and
    reference, and the dead letter's signed `dlq.origin` copied verbatim as
    `dlq.replay.origin`: the worker believes it only if the signature verifies, so the tool
    neither builds nor signs one (worker/origin.py)."""
    signed = view.headers.get(Header.ORIGIN)
    return [
        *view.original_headers(),
        (REPLAY_COUNT_HEADER, str(view.replay_count + 1).encode()),
        (REPLAY_OF_HEADER, view.ref.encode()),
        *([(Header.REPLAY_ORIGIN, signed)] if signed else []),
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
    await broker.start(producer)
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
