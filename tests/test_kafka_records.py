"""worker/kafka_records.py against the real aiokafka: the records it builds are aiokafka's, field
for field, and a fetch response dropped half-read is freed without a garbage collection;
worker/reclaim.py's schedule of full collections."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from worker import kafka_records, reclaim

TP = TopicPartition("t", 3)
READ_COMMITTED = 1


def _response(count: int = 60, per_batch: int = 20) -> bytes:
    """A fetch response's records: `count` records in batches, with null keys, null values and
    headers among them, offsets from 100."""
    out = bytearray()
    offset = 100
    for start in range(0, count, per_batch):
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
        for i in range(start, min(count, start + per_batch)):
            key = None if i % 7 == 0 else f"k{i}".encode()
            value = None if i % 11 == 0 else f'{{"n":{i}}}'.encode()
            headers = [("h", f"{i}".encode()), ("empty", None)] if i % 3 == 0 else []
            builder.append(i - start, 1_700_000_000_000 + i, key, value, headers)
        batch = builder.build()
        batch[0:8] = offset.to_bytes(8, "big")  # the base offset, as a broker assigns it
        offset += min(count, start + per_batch) - start
        out += batch
    return bytes(out)


def _records(cls: type, data: bytes, **kwargs: Any) -> Any:
    return cls(TP, MemoryRecords(data), [], 100, None, None, True, READ_COMMITTED, **kwargs)


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_installs_into_this_aiokafka() -> None:
    # aiokafka's wheels for this platform carry the C record reader, and it is what the worker
    # (and the benchmark) reads with unless it is switched off.
    assert kafka_records.C_READER is not bool(os.environ.get("AIOKAFKA_NO_EXTENSIONS"))
    assert kafka_records.install()
    assert fetcher.PartitionRecords is kafka_records.PartitionRecords
    assert kafka_records.install()  # idempotent
    assert kafka_records.installed()


def test_records_are_aiokafkas_field_for_field() -> None:
    data = _response()
    theirs = list(_records(kafka_records._ORIGINAL, data))
    ours = list(_records(kafka_records.PartitionRecords, data))
    assert len(ours) == len(theirs) == 60
    fields = kafka_records.Record.__struct_fields__
    assert fields == tuple(fetcher.ConsumerRecord.__dataclass_fields__)
    for mine, original in zip(ours, theirs, strict=True):
        assert type(mine) is kafka_records.Record
        assert not gc.is_tracked(mine)
        assert [getattr(mine, f) for f in fields] == [getattr(original, f) for f in fields]


def test_position_and_next_one_by_one_as_aiokafkas() -> None:
    """FetchResult.getone calls next(), getall iterates: both read the same records and leave
    the same next_fetch_offset as aiokafka's own class."""
    data = _response(count=30, per_batch=10)
    for cls in (kafka_records.PartitionRecords, kafka_records._ORIGINAL):
        records = _records(cls, data)
        assert [next(records).offset for _ in range(5)] == list(range(100, 105))
        assert records.next_fetch_offset == 105
        assert [r.offset for r in records] == list(range(105, 130))
        assert records.next_fetch_offset == 130


def test_deserializers_keep_aiokafkas_records() -> None:
    data = _response(count=5, per_batch=5)
    records = list(
        kafka_records.PartitionRecords(
            TP, MemoryRecords(data), [], 100, None, lambda v: v and v.upper(), True, 1
        )
    )
    assert all(isinstance(r, fetcher.ConsumerRecord) for r in records)
    assert records[1].value == b'{"N":1}'


def test_a_response_dropped_half_read_is_freed_without_a_collection(no_collector: None) -> None:
    data = _response()
    ours = _records(kafka_records.PartitionRecords, data)
    next(ours)
    gone = weakref.ref(ours)
    del ours
    assert gone() is None
    # aiokafka's own stays in its cycle until a collection: the reason for the subclass.
    theirs = _records(kafka_records._ORIGINAL, data)
    next(theirs)
    kept = weakref.ref(theirs)
    del theirs
    assert kept() is not None
    gc.collect()
    assert kept() is None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """reclaim's view of the collector and the clock, scripted."""
    state: dict[str, Any] = {"collections": 0, "middles": 0, "clock": _Clock()}

    def collect() -> int:
        state["collections"] += 1
        state["middles"] = 0
        return 0

    monkeypatch.setattr(reclaim.gc, "collect", collect)
    monkeypatch.setattr(reclaim.gc, "get_count", lambda: (0, 0, state["middles"]))
    monkeypatch.setattr(reclaim.time, "monotonic", state["clock"])
    return state


def _settled() -> reclaim.Reclaimer:
    """A Reclaimer past its first turn (start-up frozen)."""
    r = reclaim.Reclaimer()
    r._settled = True
    return r


def test_start_up_is_frozen_at_the_first_idle_turn(
    collector: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[int] = []
    monkeypatch.setattr(reclaim.gc, "freeze", lambda: frozen.append(collector["collections"]))
    r = reclaim.Reclaimer()
    r.collect_if_due(idle=False)
    assert (collector["collections"], frozen) == (0, [])
    r.collect_if_due(idle=True)
    assert (collector["collections"], frozen) == (1, [1]), "collected, then frozen"
    r.collect_if_due(idle=True)
    assert (collector["collections"], frozen) == (1, [1]), "once"


def test_full_collections_only_when_idle_and_due(collector: dict[str, Any]) -> None:
    clock = collector["clock"]
    r = _settled()
    clock.now += reclaim.IDLE_INTERVAL_S + 1
    r.collect_if_due(idle=True)
    assert collector["collections"] == 0, "nothing reached the old generation yet"
    collector["middles"] = 3
    r.collect_if_due(idle=False)
    assert collector["collections"] == 0, "a batch is in flight"
    r.collect_if_due(idle=True)
    assert collector["collections"] == 1
    collector["middles"] = 3
    clock.now += 1
    r.collect_if_due(idle=True)
    assert collector["collections"] == 1, "at most once per IDLE_INTERVAL_S"
    collector["middles"] = reclaim.FORCE_AFTER_MIDDLE
    r.collect_if_due(idle=False)
    assert collector["collections"] == 2, "bounded under load without an idle turn"


def test_after_a_drop_the_next_idle_turn_collects(collector: dict[str, Any]) -> None:
    """Dropped buffers themselves need no collection once installed, but what dropped them (a
    back-off, a rebalance) leaves cycles: collected at the next idle turn, never mid-batch."""
    assert kafka_records.install()
    r = _settled()
    r.dropped()
    collector["clock"].now += reclaim.MIN_INTERVAL_S + 1
    r.collect_if_due(idle=False)
    assert collector["collections"] == 0
    r.collect_if_due(idle=True)
    assert collector["collections"] == 1
    r.collect_if_due(idle=True)
    assert collector["collections"] == 1, "once per drop"


def test_without_the_subclass_dropped_buffers_are_collected(
    collector: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetcher, "PartitionRecords", kafka_records._ORIGINAL)
    assert not kafka_records.installed()
    r = _settled()
    r.dropped()
    collector["clock"].now += reclaim.MIN_INTERVAL_S + 1
    r.collect_if_due(idle=False)
    assert collector["collections"] == 1
    r.dropped()
    r.collect_if_due(idle=False)
    assert collector["collections"] == 1, "at most once per MIN_INTERVAL_S"


def test_tune_freezes_and_never_schedules_a_full_collection() -> None:
    before = gc.get_threshold()
    try:
        reclaim.tune()
        young, middle, old = gc.get_threshold()
        assert (young, middle) == (reclaim.YOUNG_THRESHOLD, reclaim.MIDDLE_THRESHOLD)
        assert old == reclaim.OLD_NEVER
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
