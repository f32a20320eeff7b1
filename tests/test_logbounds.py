"""The log ends the worker decides lost logs by, read from a real broker (worker/broker.py).

Produced in several batches, the end must be what was produced, whatever ListOffsets answers
(Tansu's under-reports by part of the last batch); and a consumer that has fetched a partition
before must not stand in for the broker: `log_ends` reads through a new one each time.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from support.infra import TopicFactory
from support.offsets import produce_to
from support.scripted_kafka import ScriptedBroker, ScriptedReader

from worker import broker as broker_module
from worker.broker import log_ends


@pytest.mark.integration
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


# -- what a slow or failing broker must not do to the log-end read (issue 24) -----------------


def _scripted(ends: int = 10) -> tuple[ScriptedReader, TopicPartition]:
    tp = TopicPartition("t", 0)
    broker = ScriptedBroker({"t": 1})
    for n in range(ends):
        broker.append(tp, b"%d" % n)
    return ScriptedReader(broker), tp


async def test_a_probe_that_times_out_is_unknown_not_the_listoffsets_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ListOffsets under-reports on some brokers, so when the fetch that would confirm the end
    never answers, the end is unknown: a rewind decided on the reported end could undo a reset
    or a new owner's progress."""
    monkeypatch.setattr(broker_module, "END_PROBE_S", 0.3)
    reader, tp = _scripted()
    reader.silent = True
    with pytest.raises(TimeoutError):
        await log_ends(lambda: reader, [tp])
    assert reader.stops == 1


async def test_a_reader_that_fails_to_start_is_stopped() -> None:
    reader, tp = _scripted()
    reader.fail_start = KafkaConnectionError("broker unreachable")
    with pytest.raises(KafkaConnectionError):
        await log_ends(lambda: reader, [tp])
    assert reader.stops == 1, "a reader that failed to start left its connections open"


async def test_the_whole_read_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that accepts the connection and never answers must not hold the worker's loop:
    the read gives up after LOG_ENDS_DEADLINE_S."""
    monkeypatch.setattr(broker_module, "LOG_ENDS_DEADLINE_S", 0.5, raising=False)
    reader, tp = _scripted()
    reader.hold()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(log_ends(lambda: reader, [tp]), 15)
    assert time.monotonic() - started < 5, "the read waited for the outer test bound"
    assert reader.stops == 1
