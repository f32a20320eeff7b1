"""Unit tests: the batch budget (records and bytes) and the split of a failing batch."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition

from worker.batch import BatchBudget, Part, halves
from worker.commit import Letters
from worker.decode import proctoring_decoder
from worker.dlq import DeadLetter, DecodeFailure
from worker.handlers.base import Item
from worker.partitions import PartitionState


def test_a_batch_is_full_at_its_record_limit() -> None:
    fill = BatchBudget(max_records=10, max_bytes=1 << 30).start()
    fill.add(9, 90)
    assert not fill.full and fill.room() == 1
    fill.add(1, 10)
    assert fill.full


def test_a_batch_is_full_at_its_byte_limit_and_fetches_what_the_bytes_hold() -> None:
    budget = BatchBudget(max_records=20_000, max_bytes=4 << 20)
    fill = budget.start()
    fill.add(2, 1_000_000)  # two records of 500 kB
    assert not fill.full
    # The average is learnt: room for the rest of the 4 MiB at ~500 kB, not 20 000 records.
    assert 1 <= fill.room() <= 8
    fill.add(8, 4_000_000)
    assert fill.full
    assert fill.room() == 1  # a batch always makes progress: one record at least
    # The next batch starts empty but remembers the size of records.
    assert budget.start().room() <= 9


def test_small_records_are_bounded_by_the_record_limit() -> None:
    fill = BatchBudget(max_records=500, max_bytes=16 << 20).start()
    fill.add(100, 10_000)
    assert fill.room() == 400


def record(topic: str, partition: int, offset: int) -> SimpleNamespace:
    return SimpleNamespace(
        topic=topic,
        partition=partition,
        offset=offset,
        serialized_key_size=-1,
        serialized_value_size=10,
    )


def part_of(tp: TopicPartition, offsets: list[int], bad: set[int] = frozenset()) -> Part:
    state = PartitionState(tp)
    state.positioned(offsets[0], offsets[0])
    records = [record(tp.topic, tp.partition, o) for o in offsets]
    claim, _ = state.claim(state.stamp(), records, None)
    assert claim is not None
    part = Part(claim)
    for o in offsets:
        r = record(tp.topic, tp.partition, o)
        part.records.append(r)
        if o in bad:
            part.letters.append(DeadLetter(r, DecodeFailure("invalid_json", "x")))
        else:
            part.items.append(Item(EVENT, tp.topic, tp.partition, o))
    return part


TP0, TP1, TP2 = (TopicPartition("t", p) for p in range(3))
EVENT = proctoring_decoder.decode(
    b'{"examId": "e", "candidateId": "c", "type": "STARTED", "createdAt": "2025-01-01T00:00:00Z"}'
)


def test_a_lone_partition_is_cut_in_two_in_offset_order() -> None:
    # Offsets with gaps (compaction, transaction markers): the cut is by position.
    part = part_of(TP0, [3, 4, 9, 10, 11], bad={4, 10})
    split = halves({TP0: part})
    assert split is not None
    head, tail = split[0][TP0], split[1][TP0]
    assert [r.offset for r in head.records] == [3, 4, 9]
    assert [r.offset for r in tail.records] == [10, 11]
    assert [i.offset for i in head.items] == [3, 9] and [i.offset for i in tail.items] == [11]
    assert [d.record.offset for d in head.letters] == [4]
    assert [d.record.offset for d in tail.letters] == [10]
    assert head.next_offset == 10 and tail.next_offset == 12
    assert (head.nbytes, tail.nbytes) == (30, 20)
    # The claim is shared: the tail continues exactly where the head ends.
    assert (head.claim.start, head.claim.end, tail.claim.start) == (3, 10, 10)
    assert head.claim.generation == tail.claim.generation


def test_several_partitions_split_by_whole_partitions() -> None:
    batch = {tp: part_of(tp, [0]) for tp in (TP2, TP0, TP1)}
    split = halves(batch)
    assert split is not None
    assert [sorted(h) for h in split] == [[TP0], [TP1, TP2]]


def test_a_single_record_cannot_be_split() -> None:
    assert halves({TP0: part_of(TP0, [7])}) is None


def test_rejected_records_are_found_by_offset_and_left_out_of_later_attempts() -> None:
    part = part_of(TP0, list(range(1000)))
    letters = Letters()
    for item in part.items[::100]:
        letters.reject(part, item, "rejected_by_database", "boom")
    assert [d.record.offset for d in letters.rejected] == list(range(0, 1000, 100))
    assert all(d.record is part.record_at(d.record.offset) for d in letters.rejected)
    kept = letters.storable(part.items)
    assert len(kept) == 990 and all(i.offset % 100 for i in kept)
    # Published once: acknowledged letters are not sent again on the next attempt.
    pending = letters.unsent([])
    assert len(pending) == 10
    letters.sent(pending)
    assert letters.unsent([]) == []
