"""The partition state object under every interleaving hypothesis finds.

A `RuleBasedStateMachine` plays a worker's life on one partition against a model of the world:
a log whose offsets are records or holes (transaction markers, compacted records: offsets no
fetch returns), the database's `consumer_offsets` row (with the compare-and-set the commit
path does), a consumer position that follows seeks, and another worker that may take the
partition over and store progress of its own.

Each getmany return is stamped (`PartitionState.stamp`) with the consumer's position after it,
which runs past trailing holes unless the return was cut short by `max_records`. Returns are
claimed in order, as the worker does right after its fetch; any of them may instead be dropped
(an error in the middle of a drain, a poll while backing off), and `settle` (the worker's
`Ownership.settle`, run once nothing stamped is left to claim) must then seek back to where
the claims end. Fences, pauses and resumes, revocations and reassignments, commit start, the
database commit and commit finish interleave freely.

Invariants: the stored offset only moves forward; what this worker and the other one stored
tiles the log from 0 to the stored offset, holes included, with no gap and no overlap; every
claim covers exactly the records it carries (nothing the consumer did not return, nothing it
returned left out); no record is stored twice; a revoked state never changes again.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from worker.partitions import Claim, PartitionState, Phase, Stamp

TP = TopicPartition("t", 0)
LOG_END = 200
# Offsets without a record: transaction markers (every 11th from 5) and compacted records.
HOLES = frozenset(o for o in range(LOG_END) if o % 11 == 5 or o % 17 == 3)


@dataclass(frozen=True)
class Record:
    offset: int


@dataclass
class Chunk:
    """One getmany return, as worker/fetch.py hands it over."""

    stamp: Stamp | None
    records: list[Record]
    position: int


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
        self.stored_records: list[int] = []  # record offsets stored by this worker
        self.state: PartitionState | None = None
        self.old_states: list[tuple[PartitionState, tuple[object, ...]]] = []
        self.position = 0  # the consumer's fetch position
        self.pending: list[Chunk] = []  # returned, not yet claimed or dropped, in order
        self.claims: list[tuple[Claim, list[Record]]] = []  # claimed, not yet committing
        self.commits: list[tuple[Commit, list[Record]]] = []  # started, in order
        self.paused_in_db = False  # partition_pauses has the row

    # -- the world -------------------------------------------------------------------------

    def _position_from_db(self, state: PartitionState) -> None:
        start = self.db if self.db is not None else 0
        state.positioned(self.db, start)
        self.position = start  # consumer.seek

    def _cas(self, expected: int | None, end: int, start: int) -> bool:
        if self.db != expected or self.paused_in_db:
            return False
        self.stored_ranges.append((start if expected is None else expected, end))
        self.db = end
        return True

    # -- the consumer ----------------------------------------------------------------------

    @precondition(lambda self: self.state is None)
    @rule()
    def assign(self) -> None:
        self.state = PartitionState(TP)
        self.pending.clear()  # a new assignment: nothing fetched before is returned
        self._position_from_db(self.state)
        if self.paused_in_db:
            self.state.pause()

    @precondition(lambda self: self.state is not None)
    @rule()
    def revoke(self) -> None:
        assert self.state is not None
        self.state.revoke()
        self.old_states.append((self.state, self._snapshot(self.state)))
        self.state = None

    @precondition(lambda self: self.state is not None and self.state.fetchable)
    @rule(n=st.integers(1, 7), cut=st.booleans())
    def getmany_returns(self, n: int, cut: bool) -> None:
        """A getmany drains up to `n` offsets; `cut`: max_records stopped it right after its
        last record (otherwise its position runs past the holes it reached)."""
        assert self.state is not None
        end = min(self.position + n, LOG_END)
        records = [Record(o) for o in range(self.position, end) if o not in HOLES]
        if cut and records:
            end = records[-1].offset + 1
        self.position = end
        if records:  # a return without records is no return: nothing stamped
            self.pending.append(Chunk(self.state.stamp(), records, end))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        """A return never claimed: an error later in the same drain, a poll while backing
        off, a fetch cancelled."""
        self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))

    @precondition(lambda self: self.pending)
    @rule()
    def claim(self) -> None:
        chunk = self.pending.pop(0)
        if self.state is None:
            return
        claim, reset = self.state.claim(chunk.stamp, chunk.records, chunk.position)
        assert not reset, "no log reset happens in this model"
        if claim is None:
            return
        covered = [o for o in range(claim.start, claim.end) if o not in HOLES]
        carried = [r.offset for r in chunk.records]
        assert covered == carried, f"claim {claim.start}-{claim.end} carries {carried}"
        self.claims.append((claim, chunk.records))

    @precondition(lambda self: self.state is not None and not self.pending)
    @rule()
    def settle(self) -> None:
        """After a fetch, nothing stamped left to claim: seek back what was dropped."""
        assert self.state is not None
        offset = self.state.unclaimed()
        if offset is not None:
            self.position = offset

    # -- operator pauses -------------------------------------------------------------------

    @precondition(lambda self: not self.paused_in_db)
    @rule()
    def operator_pauses(self) -> None:
        self.paused_in_db = True

    @precondition(lambda self: self.state is not None and self.paused_in_db)
    @rule()
    def worker_follows_the_pause(self) -> None:
        assert self.state is not None
        if self.state.consuming:
            self.state.pause()

    @precondition(lambda self: self.paused_in_db)
    @rule()
    def operator_resumes(self) -> None:
        self.paused_in_db = False
        state = self.state
        if state is not None and state.consuming and state.resume():
            self._position_from_db(state)  # worker/ownership.py's follower

    # -- committing ------------------------------------------------------------------------

    # A partition's batches commit one after the other (one lane, one batch in flight).
    @precondition(lambda self: self.claims and not self.commits)
    @rule()
    def commit_start(self) -> None:
        claim, records = self.claims.pop(0)
        state = claim.state
        if not state.may_commit(claim):
            return  # the lane drops a stale part
        state.commit_started()
        self.commits.append((Commit(claim, state.stored), records))

    @precondition(lambda self: any(c.committed is None for c, _ in self.commits))
    @rule()
    def commit_in_database(self) -> None:
        commit, records = next((c, r) for c, r in self.commits if c.committed is None)
        commit.committed = self._cas(commit.expected, commit.claim.end, commit.claim.start)
        if commit.committed:
            self.stored_records.extend(r.offset for r in records)

    @precondition(lambda self: self.commits and self.commits[0][0].committed is not None)
    @rule()
    def commit_finish(self) -> None:
        commit, _ = self.commits.pop(0)
        state = commit.claim.state
        applied = state.commit_finished(commit.claim if commit.committed else None)
        if commit.committed is False and state.consuming and not self.paused_in_db:
            # Fenced: re-read the row and continue from there (Ownership.refence).
            self._position_from_db(state)
        elif commit.committed is False and state.consuming:
            state.pause()  # refused for the pause (worker/offsets.py): Paused
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
    def no_record_is_stored_twice(self) -> None:
        assert len(self.stored_records) == len(set(self.stored_records))

    @invariant()
    def nothing_returned_is_passed_over(self) -> None:
        """Once every return is claimed, the consumer reads on from where the claims end
        (offsets between them are holes); a dropped one is settled by a seek back."""
        state = self.state
        if state is None or not state.fetchable or self.pending or state.dropped:
            return
        assert state.next_fetch is not None
        passed = [o for o in range(state.next_fetch, self.position) if o not in HOLES]
        assert not passed, f"records {passed} returned and neither claimed nor read again"

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


PartitionLife.TestCase.settings = settings(max_examples=400, stateful_step_count=60, deadline=None)
test_partition_life = PartitionLife.TestCase


def test_a_dropped_return_is_read_again_and_markers_cost_nothing() -> None:
    """The rule in one example: a return after a marker continues the claim; a dropped return
    stops the next ones from claiming and sends the partition back to where claims end."""
    state = PartitionState(TP)
    state.positioned(None, 0)
    first = state.stamp()
    claim, _ = state.claim(first, [Record(0), Record(1)], 3)  # 2 is a marker
    assert claim is not None and (claim.start, claim.end) == (0, 3)
    state.stamp()  # [3, 4] returned, then lost with an error
    later = state.stamp()
    assert state.claim(later, [Record(5)], 6) == (None, False)
    assert state.unclaimed() == 3  # seek back to 3
    again = state.stamp()
    claim, _ = state.claim(again, [Record(3), Record(4), Record(5)], 6)
    assert claim is not None and (claim.start, claim.end) == (3, 6)
    assert state.unclaimed() is None
