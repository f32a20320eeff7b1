"""A batch: per partition, the records taken from the fetches, decoded or dead-lettered, and
the claim (worker/partitions.py) that lets them commit; and how large the next batch may grow.

The budget (`BatchBudget`): a record count and a byte size, whichever comes first.

Bytes are what bound memory (a batch of large records is gigabytes at the same count), so the
fetch asks for as many records as the remaining bytes hold at the recent average record size;
one fetch can still overshoot by what it returns beyond that estimate, and a single record
larger than the whole budget still forms a batch of its own.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from worker.dlq import DeadLetter
from worker.handlers.base import Item
from worker.partitions import Claim


class Part:
    """One partition's share of a batch."""

    __slots__ = (
        "_by_offset",
        "claim",
        "erased",
        "expired",
        "items",
        "letters",
        "nbytes",
        "records",
        "row_handler",
        "rows",
    )

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.records: list[Any] = []
        self.items: list[Item] = []
        # The rows of `items` for their handler (worker/router.py row_handler), built while
        # decoding: valid while there is one per item (the batch's preparation checks), and
        # only read by it; a part changed later (split, items set aside) is prepared again
        # from its items.
        self.row_handler: Any = None
        self.rows: list[Any] = []
        self.letters: list[DeadLetter] = []
        # Items the commit path moved out of `items`, counted, never stored: past the
        # retention horizon (worker/retention.py), or of an erased candidate and already in
        # the log when the erasure was made (worker/erasure.py).
        self.expired: list[Item] = []
        self.erased: list[Item] = []
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
            part.expired = [i for i in self.expired if keep(i.offset)]
            part.erased = [i for i in self.erased if keep(i.offset)]
        return head, tail


Batch = dict[TopicPartition, Part]


def record_of(batch: Batch, item: Any) -> Any:
    """The record `item` (an Item of one of the batch's parts) was decoded from."""
    return batch[TopicPartition(item.topic, item.partition)].record_at(item.offset)


def set_aside_erased(batch: Batch, erased: list[Item]) -> None:
    """Move `erased` out of their parts' items into their `erased` lists."""
    gone = {(i.topic, i.partition, i.offset) for i in erased}
    for tp in {TopicPartition(i.topic, i.partition) for i in erased}:
        part = batch[tp]
        part.erased.extend(i for i in part.items if (i.topic, i.partition, i.offset) in gone)
        part.items = [i for i in part.items if (i.topic, i.partition, i.offset) not in gone]


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


class BatchBudget:
    """The limits, plus the average record size learnt from the batches so far."""

    # Before any record is seen: small enough that the first fetch of large records cannot
    # overshoot much, large enough not to throttle small ones.
    INITIAL_RECORD_BYTES = 1024

    __slots__ = ("_avg_bytes", "_learnt", "max_bytes", "max_records")

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._avg_bytes = float(self.INITIAL_RECORD_BYTES)
        self._learnt = False

    def start(self) -> Fill:
        return Fill(self)

    def learn(self, records: int, nbytes: int) -> None:
        if not records:
            return
        observed = nbytes / records
        # Moving average: follows a change of workload within a few fetches; the first
        # observation replaces the guess.
        self._avg_bytes = 0.5 * self._avg_bytes + 0.5 * observed if self._learnt else observed
        self._learnt = True

    def records_for(self, nbytes: int) -> int:
        return int(nbytes // max(self._avg_bytes, 1.0))


class Fill:
    """One batch's use of its budget."""

    __slots__ = ("_budget", "nbytes", "records")

    def __init__(self, budget: BatchBudget) -> None:
        self._budget = budget
        self.records = 0
        self.nbytes = 0

    def add(self, records: int, nbytes: int) -> None:
        self.records += records
        self.nbytes += nbytes
        self._budget.learn(records, nbytes)

    @property
    def full(self) -> bool:
        b = self._budget
        return self.records >= b.max_records or self.nbytes >= b.max_bytes

    def room(self) -> int:
        """How many records the next fetch may return (at least one)."""
        b = self._budget
        by_bytes = b.records_for(b.max_bytes - self.nbytes)
        return max(1, min(b.max_records - self.records, by_bytes))
