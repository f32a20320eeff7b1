"""How large the next batch may grow: a record count and a byte size, whichever comes first.

Bytes are what bound memory (a batch of large records is gigabytes at the same count), so the
fetch asks for as many records as the remaining bytes hold at the recent average record size;
one fetch can still overshoot by what it returns beyond that estimate, and a single record
larger than the whole budget still forms a batch of its own.
"""

from __future__ import annotations


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
