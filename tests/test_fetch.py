"""PartitionReader against a stand-in consumer that fails the way aiokafka's getmany does.

aiokafka decodes records while getmany drains them; an undecodable batch raises out of the
call, dropping what it had drained from other partitions (whose positions have moved), and
raises again at the same position next time. The stand-in does exactly that, so these tests
show the reader loses nothing, names the partition even when the failure happens during a
wait, and stops the partition exactly at the batch. test_codecs.py does the same through the
real broker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import UnsupportedCodecError

from worker import fetch
from worker.fetch import PartitionReader, Positions
from worker.metrics import Metrics

BAD = "bad"
P0, P1, P2 = (TopicPartition("t", p) for p in range(3))


@dataclass(frozen=True)
class Rec:
    tp: TopicPartition
    offset: int


class LossyConsumer:
    """getmany with aiokafka's failure semantics over in-memory logs (BAD: unreadable)."""

    def __init__(self, logs: dict[TopicPartition, list[Any]]) -> None:
        self.logs = logs
        self.positions = dict.fromkeys(logs, 0)
        self._paused: set[TopicPartition] = set()
        # Appended to the logs while a getmany waits: data arriving during the wait.
        self.arrivals: list[tuple[TopicPartition, Any]] = []
        # After a failure aiokafka fetches the partition again; until then it has no data.
        self.refetch_s = 0.0
        self._hidden_until: dict[TopicPartition, float] = {}
        self.calls = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def positions_of(self, tps: Any = None) -> Positions:
        """What `fetch.aiokafka_positions` reads from aiokafka: here, of every partition."""
        return Positions(
            self, {tp: self.positions[tp] for tp in (self.logs if tps is None else tps)}
        )

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Rec]]:
        self.calls += 1
        await asyncio.sleep(0)
        drained = self._drain(tps, max_records)
        if not drained and timeout_ms:
            for tp, item in self.arrivals:
                self.logs[tp].append(item)
            self.arrivals.clear()
            await asyncio.sleep(timeout_ms / 1000)
            drained = self._drain(tps, max_records)
        return drained

    def _drain(
        self, tps: tuple[TopicPartition, ...], max_records: int | None
    ) -> dict[TopicPartition, list[Rec]]:
        drained: dict[TopicPartition, list[Rec]] = {}
        n = 0
        for tp in self.logs:
            if (tps and tp not in tps) or tp in self._paused:
                continue
            if time.monotonic() < self._hidden_until.get(tp, 0.0):
                continue
            position = self.positions[tp]
            while position < len(self.logs[tp]) and (max_records is None or n < max_records):
                if self.logs[tp][position] == BAD:
                    self._hidden_until[tp] = time.monotonic() + self.refetch_s
                    # Drained partitions keep their moved positions; this one does not move.
                    raise UnsupportedCodecError("Libraries for snappy compression codec not found")
                drained.setdefault(tp, []).append(Rec(tp, position))
                position += 1
                n += 1
            self.positions[tp] = position
        return drained


def _no_stamp(tp: TopicPartition) -> None:
    return None


@pytest.fixture(params=["one-call", "per-partition"])
def reader_for(request: pytest.FixtureRequest) -> Any:
    """A PartitionReader draining all healthy partitions in one getmany (positions readable,
    as from aiokafka), or each by its own call (positions not readable)."""

    def make(consumer: LossyConsumer, **kwargs: Any) -> PartitionReader:
        if request.param == "one-call":
            return PartitionReader(
                Metrics(), _no_stamp, positions=LossyConsumer.positions_of, **kwargs
            )
        return PartitionReader(Metrics(), _no_stamp, positions=lambda c, tps: None, **kwargs)

    make.mode = request.param  # type: ignore[attr-defined]
    return make


async def _read(reader: PartitionReader, consumer: LossyConsumer, rounds: int) -> list[Rec]:
    got: list[Rec] = []
    for _ in range(rounds):
        fetched = await reader.fetch(consumer, timeout_ms=1, max_records=1000)  # type: ignore[arg-type]
        got.extend(record for chunk in fetched for record in chunk.records)
    return got


def _offsets(records: list[Rec], tp: TopicPartition) -> list[int]:
    return [r.offset for r in records if r.tp == tp]


async def test_other_partitions_lose_nothing_and_the_partition_stops_at_the_batch(
    reader_for: Any,
) -> None:
    consumer = LossyConsumer({P0: list(range(5)), P1: [0, 1, BAD, 3, 4], P2: list(range(5))})
    reader = reader_for(consumer, retry_initial_s=60)
    metrics = reader._metrics
    got = await _read(reader, consumer, rounds=5)
    assert _offsets(got, P0) == list(range(5))
    assert _offsets(got, P2) == list(range(5))
    assert _offsets(got, P1) == [0, 1]  # everything before the batch, nothing after
    assert reader.stuck() == [P1]
    assert consumer.paused() == {P1}
    labels = {"topic": "t", "partition": "1"}
    assert metrics.registry.get_sample_value("worker_partition_stuck", labels) == 1


async def test_a_batch_failing_during_the_wait_is_still_attributed(reader_for: Any) -> None:
    consumer = LossyConsumer({P0: [], P1: [], P2: []})
    # P0 comes first in the consumer's order, so the wait's getmany itself raises, naming
    # no partition.
    consumer.arrivals = [(P0, BAD), (P1, 0), (P2, 0)]
    reader = reader_for(consumer, retry_initial_s=60)
    got = await _read(reader, consumer, rounds=5)
    assert reader.stuck() == [P0]
    assert sorted((r.tp.partition, r.offset) for r in got) == [(1, 0), (2, 0)]


async def test_a_batch_fetched_again_during_each_wait_is_still_attributed(
    reader_for: Any,
) -> None:
    # The batch fails in the wait (no partition named) and, fetched again while the next
    # wait runs, would fail there again every time: polling single partitions breaks that.
    consumer = LossyConsumer({P0: [BAD], P1: [], P2: []})
    consumer.refetch_s = 0.02
    reader = reader_for(consumer, retry_initial_s=60)
    for _ in range(6):
        await reader.fetch(consumer, timeout_ms=50, max_records=1000)  # type: ignore[arg-type]
    assert reader.stuck() == [P0]


async def test_a_stuck_partition_resumes_once_readable_and_logs_one_error(
    monkeypatch: Any, reader_for: Any
) -> None:
    lines: list[str] = []

    class Log:
        def __getattr__(self, level: str) -> Any:
            return lambda event, **fields: lines.append(level)

    monkeypatch.setattr(fetch, "log", Log())
    consumer = LossyConsumer({P0: [0, BAD, 2], P1: [0]})
    reader = reader_for(consumer, retry_initial_s=0, retry_max_s=0)  # retry at once
    got = await _read(reader, consumer, rounds=6)
    assert reader.stuck() == [P0]
    consumer.logs[P0][1] = 1  # readable now
    got += await _read(reader, consumer, rounds=6)
    assert _offsets(got, P0) == [0, 1, 2]
    assert reader.stuck() == [] and consumer.paused() == set()
    # Retried while unreadable (debug lines), one error line, one line when readable again.
    assert lines.count("debug") >= 1, lines
    assert lines.count("error") == 1 and lines.count("info") == 1, lines


async def test_the_calls_per_fetch_do_not_grow_with_the_partitions(reader_for: Any) -> None:
    """Flat cost: one getmany drains every healthy partition; per partition only without
    readable positions (another aiokafka) or while a failure is being attributed."""
    calls = {}
    for count in (12, 96):
        tps = [TopicPartition("t", p) for p in range(count)]
        consumer = LossyConsumer({tp: list(range(3)) for tp in tps})
        reader = reader_for(consumer)
        fetched = await reader.fetch(consumer, timeout_ms=0, max_records=10_000)  # type: ignore[arg-type]
        assert fetched.size() == 3 * count
        calls[count] = consumer.calls
    if reader_for.mode == "one-call":
        assert calls == {12: 1, 96: 1}
    else:
        assert calls == {12: 12, 96: 96}


async def test_a_failing_partition_is_drained_alone_and_the_others_in_one_call() -> None:
    consumer = LossyConsumer({P0: [0, BAD, 2], P1: list(range(4)), P2: list(range(4))})
    reader = PartitionReader(
        Metrics(), _no_stamp, retry_initial_s=60, positions=LossyConsumer.positions_of
    )
    got = await _read(reader, consumer, rounds=8)
    assert reader.stuck() == [P0]
    assert (_offsets(got, P0), _offsets(got, P1), _offsets(got, P2)) == (
        [0],
        [0, 1, 2, 3],
        [0, 1, 2, 3],
    )
    consumer.logs[P1] += [4, 5]
    consumer.logs[P2] += [4]
    before = consumer.calls
    fetched = await reader.fetch(consumer, timeout_ms=0, max_records=100)  # type: ignore[arg-type]
    assert sorted((c.tp.partition, [r.offset for r in c.records]) for c in fetched) == [
        (1, [4, 5]),
        (2, [4]),
    ]
    assert consumer.calls - before == 1  # P0 is paused: the healthy two in one call
