"""The partition state object under every interleaving hypothesis finds (issue: partition
ownership as one state object).

A `RuleBasedStateMachine` plays a worker's life on one partition against a model of the world:
a log of offsets, the database's `consumer_offsets` row (with the compare-and-set the commit
path does), a consumer position that follows seeks, and another worker that may take the
partition over and store progress of its own. Fetches, claims (the decode step, which may
wait while other steps run), commit start, the database commit, commit finish, fences,
revocations and reassignments interleave freely, and so do polls whose records are returned
and never claimed (a getmany while backing off): the next claim then starts above where the
partition was read to, and must be refused with a seek back rather than span the hole; the log
has holes (compaction), which a claim may span only once a fetch after a seek proves them.
Invariants: the stored offset only moves forward, no offset is stored twice and none is
skipped (what this worker and the other one stored tiles the log from 0 to the stored offset),
no claim skips a record, and a revoked state never changes again.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from worker.partitions import Claim, PartitionState, Phase, Refetch

TP = TopicPartition("t", 0)
LOG_END = 200
# Offsets compaction (or transaction markers) left empty: no record is ever returned for them,
# so a fetch can start above where the previous one ended without anything being lost.
HOLES = frozenset(o for o in range(LOG_END) if o % 11 == 5 or o % 17 == 3)


@dataclass(frozen=True)
class Record:
    offset: int


@dataclass
class Commit:
    claim: Claim
    expected: int | None
    committed: bool | None = None  # None: the database has not answered yet


class PartitionLife(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.db: int | None = None  # consumer_offsets.next_offset; None: no row
        self.stored_ranges: list[tuple[int, int]] = []  # [start, end) stored by anyone
        self.state: PartitionState | None = None
        self.old_states: list[tuple[PartitionState, tuple[object, ...]]] = []
        self.position = 0  # the consumer's fetch position
        self.fetched: list[tuple[int, list[Record]]] = []  # (generation, records), unclaimed
        self.claims: list[Claim] = []  # claimed, not yet committing, in order
        self.commits: list[Commit] = []  # started, in order

    # -- the world -------------------------------------------------------------------------

    def _position_from_db(self, state: PartitionState) -> None:
        start = self.db if self.db is not None else 0
        state.positioned(self.db, start)
        self.position = start  # consumer.seek

    def _cas(self, expected: int | None, end: int, start: int) -> bool:
        if self.db != expected:
            return False
        self.stored_ranges.append((start if expected is None else expected, end))
        self.db = end
        return True

    # -- rules -----------------------------------------------------------------------------

    @precondition(lambda self: self.state is None)
    @rule()
    def assign(self) -> None:
        self.state = PartitionState(TP)
        self._position_from_db(self.state)

    @precondition(lambda self: self.state is not None)
    @rule()
    def revoke(self) -> None:
        assert self.state is not None
        self.state.revoke()
        self.old_states.append((self.state, self._snapshot(self.state)))
        self.state = None

    @precondition(lambda self: self.state is not None and self.state.consuming)
    @rule(n=st.integers(1, 7))
    def fetch(self, n: int) -> None:
        assert self.state is not None
        generation = self.state.fetch_epoch()
        end = min(self.position + n, LOG_END)
        records = [Record(o) for o in range(self.position, end) if o not in HOLES]
        self.position = end
        if records and generation is not None:
            self.fetched.append((generation, records))

    @precondition(lambda self: self.state is not None and self.state.consuming)
    @rule(n=st.integers(1, 7))
    def poll_drops(self, n: int) -> None:
        """A getmany returns records that nobody claims (a poll while backing off): the worker
        puts them back, seeking to the first of them."""
        assert self.state is not None
        epoch = self.state.fetch_epoch()
        returned = [o for o in range(self.position, min(self.position + n, LOG_END))]
        returned = [o for o in returned if o not in HOLES]
        if not returned:
            return
        self.position = returned[-1] + 1
        if epoch is not None and self.state.put_back(epoch, returned[0]):
            self.position = returned[0]

    @precondition(lambda self: self.fetched)
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        # The decode of an earlier fetch may finish after later steps: any fetch may be next.
        generation, records = self.fetched.pop(0)
        if self.state is None:
            return
        claim, reset = self.state.claim(generation, records)
        assert not reset, "no log reset happens in this model"
        if isinstance(claim, Refetch):
            self.position = claim.offset  # consumer.seek
            return
        if claim is not None:
            skipped = range(claim.start, records[0].offset)
            assert all(o in HOLES for o in skipped), f"claim {claim} skips records {skipped}"
            self.claims.append(claim)

    # A partition's batches commit one after the other (one lane, one batch in flight).
    @precondition(lambda self: self.claims and not self.commits)
    @rule()
    def commit_start(self) -> None:
        claim = self.claims.pop(0)
        state = claim.state
        if not state.may_commit(claim):
            return  # the lane drops a stale part
        state.commit_started()
        self.commits.append(Commit(claim, state.stored))

    @precondition(lambda self: any(c.committed is None for c in self.commits))
    @rule()
    def commit_in_database(self) -> None:
        commit = next(c for c in self.commits if c.committed is None)
        commit.committed = self._cas(commit.expected, commit.claim.end, commit.claim.start)

    @precondition(lambda self: self.commits and self.commits[0].committed is not None)
    @rule()
    def commit_finish(self) -> None:
        commit = self.commits.pop(0)
        state = commit.claim.state
        applied = state.commit_finished(commit.claim if commit.committed else None)
        if commit.committed is False and state.consuming:
            # Fenced: re-read the row and continue from there (worker._refence).
            self._position_from_db(state)
        if applied:
            assert state.stored == commit.claim.end

    @precondition(lambda self: self.state is not None)
    @rule(ahead=st.integers(0, 20))
    def another_worker_stores(self, ahead: int) -> None:
        """The group gave the partition to someone else for a while, who stored progress."""
        start = self.db if self.db is not None else 0
        end = min(start + ahead, LOG_END)
        if end > start or self.db is None:
            self._cas(self.db, end, start)

    # -- invariants ------------------------------------------------------------------------

    @staticmethod
    def _snapshot(state: PartitionState) -> tuple[object, ...]:
        return (state.phase, state.generation, state.stored, state.next_fetch)

    @invariant()
    def stored_ranges_tile_the_log(self) -> None:
        expected_start = 0
        for start, end in self.stored_ranges:
            assert start == expected_start, f"gap or overlap: {self.stored_ranges}"
            assert end >= start
            expected_start = end
        assert (self.db or 0) == expected_start

    @invariant()
    def revoked_states_never_change(self) -> None:
        for state, snapshot in self.old_states:
            assert state.phase is Phase.REVOKED
            assert self._snapshot(state) == snapshot, state

    @invariant()
    def the_state_never_claims_ahead_of_the_database(self) -> None:
        state = self.state
        if state is not None and state.stored is not None and self.db is not None:
            assert state.stored <= self.db


PartitionLife.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_partition_life = PartitionLife.TestCase
