"""The log ends the worker decides lost logs by, read from a real broker (worker/broker.py).

Produced in several batches, the end must be what was produced, whatever ListOffsets answers
(Tansu's under-reports by part of the last batch); and a consumer that has fetched a partition
before must not stand in for the broker: `log_ends` reads through a new one each time.
"""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from support.infra import TopicFactory
from support.offsets import produce_to

from worker.broker import log_ends

pytestmark = pytest.mark.integration


async def test_log_ends_are_what_was_produced_across_batches(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory(2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    readers: list[AIOKafkaConsumer] = []

    def reader() -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        readers.append(consumer)
        return consumer

    produced = 0
    for n in (1, 5, 10, 3):  # one producer batch each
        await produce_to(kafka_bootstrap, topic, {0: [(None, b"x", None)] * n})
        produced += n
    assert await log_ends(reader, [tp0, tp1]) == {tp0: produced, tp1: 0}

    await produce_to(kafka_bootstrap, topic, {0: [(None, b"y", None)] * 4})
    assert await log_ends(reader, [tp0]) == {tp0: produced + 4}
    assert len({id(r) for r in readers}) == 2, "each read must use a new consumer"
