"""A batch: per partition, the records taken from the fetches, decoded or dead-lettered, and
the claim (worker/partitions.py) that lets them commit.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from worker.dlq import DeadLetter
from worker.handlers.base import Item
from worker.partitions import Claim


class Part:
    """One partition's share of a batch."""

    __slots__ = ("_by_offset", "claim", "items", "letters", "nbytes", "records")

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.records: list[Any] = []
        self.items: list[Item] = []
        self.letters: list[DeadLetter] = []
        self.nbytes = 0  # keys and values, as fetched
        self._by_offset: dict[int, Any] | None = None

    @property
    def tp(self) -> TopicPartition:
        return self.claim.state.tp

    @property
    def next_offset(self) -> int:
        return self.claim.end

    def extend(self, claim: Claim) -> bool:
        """Take the next claim of the same generation, if it continues this one."""
        mine = self.claim
        if claim.generation != mine.generation or claim.start != mine.end or claim.first:
            return False
        self.claim = Claim(mine.state, mine.generation, mine.start, claim.end, mine.first)
        return True

    def record_at(self, offset: int) -> Any:
        """The record at `offset`, in constant time (the index is built on first use: only
        batches with records the database rejected need it)."""
        if self._by_offset is None:
            self._by_offset = {record.offset: record for record in self.records}
        return self._by_offset[offset]

    def split(self) -> tuple[Part, Part]:
        """The first half of the records (with their items and letters) and the rest, each
        with its share of the claim."""
        cut = int(self.records[(len(self.records) + 1) // 2].offset)
        c = self.claim
        head = Part(Claim(c.state, c.generation, c.start, cut, c.first))
        tail = Part(Claim(c.state, c.generation, cut, c.end, False))
        for part, keep in ((head, lambda o: o < cut), (tail, lambda o: o >= cut)):
            part.records = [r for r in self.records if keep(r.offset)]
            part.nbytes = sum(record_size(r) for r in part.records)
            part.items = [i for i in self.items if keep(i.offset)]
            part.letters = [d for d in self.letters if keep(d.record.offset)]
        return head, tail


Batch = dict[TopicPartition, Part]


def record_of(batch: Batch, item: Any) -> Any:
    """The record `item` (an Item of one of the batch's parts) was decoded from."""
    return batch[TopicPartition(item.topic, item.partition)].record_at(item.offset)


def halves(batch: Batch) -> tuple[Batch, Batch] | None:
    """`batch` in two smaller batches to commit one after the other, or None for a single
    record. Whole partitions go to either half while there are several; a lone partition is
    cut in two, its first records first."""
    tps = sorted(batch)
    if len(tps) > 1:
        mid = len(tps) // 2
        return {tp: batch[tp] for tp in tps[:mid]}, {tp: batch[tp] for tp in tps[mid:]}
    (tp,) = tps
    if len(batch[tp].records) < 2:
        return None
    head, tail = batch[tp].split()
    return {tp: head}, {tp: tail}


def record_size(record: Any) -> int:
    """A record's key and value bytes (aiokafka gives -1 for a null one)."""
    return max(record.serialized_value_size, 0) + max(record.serialized_key_size, 0)
