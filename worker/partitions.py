"""The state of each partition this worker owns: one object per partition, its phase and claims.

A `PartitionState` lives from an assignment to its revocation; a later assignment of the same
partition is a new object, so nothing an old one hears (a late commit, a late fetch) can touch
the new one. Its phases, in the spirit of aiokafka's `TopicPartitionState`:

    assigned ──positioned()──▶ consuming ──positioned() again (fence, reset, lost log)──┐
        │                         ▲                                                  │
        │                         └──────────────────────────────────────────────────┘
        └──────────────revoke()────────────────▶ revoked (final)

Claims follow from what the consumer returned, never from the offsets of the records:

- Every seek of the consumer starts a new *epoch* (a positioning also starts a new
  *generation*: claims of an older one can never commit). Every time getmany returns records
  of the partition, they are stamped right then with the epoch and the next *sequence* number
  of that epoch (`stamp()`), and the consumer's position right after the drain is recorded
  with them (worker/fetch.py).
- A claim is taken only on the next sequence of the current epoch, and runs from where the
  previous claim ended (`next_fetch`) to that recorded position. The consumer reads in order
  from its position, so when no chunk of the epoch is missing, every offset of [next_fetch,
  position) it did not return holds no record (compaction, a transaction's markers, an aborted
  transaction): a claim spans such holes without anything to prove. Records stamped before a
  seek are stale and claim nothing (the seek reads them again).
- A chunk stamped and never claimed (dropped with an error, returned by a poll while backing
  off) is the one thing that can go wrong, and it has one rule: `unclaimed()` says the
  partition must be sought back to `next_fetch` (a new epoch), and later chunks of the epoch
  claim nothing meanwhile. Nothing the consumer returned is ever skipped.
- Records below `next_fetch` in the next sequence mean the consumer reset its position to the
  log's start by itself (the log was deleted and recreated): new records, claimed from there.
- A claim may commit only while the partition is consuming in the claim's generation, not
  paused, and the claim starts at `stored`: a batch behind an abandoned or fenced one can
  never commit past the records that were not stored. Committing moves `stored` to the claim's
  end, forward.
- A revoked partition accepts nothing: a commit that finishes after the revocation returns
  without changing any state here.

An operator's pause (`worker pause`, worker/pauses.py) is a flag beside the phase, since a
partition is paused whatever its phase and stays paused through positionings: `pause()` starts
a new epoch, and from then on no claim is taken and none may commit (a commit already in flight
completes, and moves `stored` as usual). `resume()` clears the flag; the caller then positions
the partition again from the database, so reading continues from what is stored. Every resume
of the consumer names only `fetchable` partitions, so no other path (a lane's back-off ending,
a positioning, a stuck partition's retry) can resume a paused one.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

# Generations and epochs come from one counter: unique across partition states, so records
# stamped for an earlier assignment of a partition never match a later one.
_numbers = itertools.count(1)

Stamp = tuple[int, int]  # (epoch, sequence)


class Phase(enum.Enum):
    ASSIGNED = "assigned"  # paused until positioned from the database
    CONSUMING = "consuming"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to commit [start, end) of one partition, in one generation."""

    state: PartitionState
    generation: int
    start: int  # the offset this claim's batch continues from
    end: int  # where the consumer was after its records (what is stored when it commits)
    # The first claim of its generation starts where the partition was positioned (or, after
    # a log reset, at the new log's records), not necessarily at the stored offset.
    first: bool


class PartitionState:
    __slots__ = (
        "_claimed",
        "_fresh",
        "_idle",
        "_inflight",
        "_issued",
        "epoch",
        "generation",
        "next_fetch",
        "paused",
        "phase",
        "stored",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.phase = Phase.ASSIGNED
        self.generation = 0
        self.epoch = 0
        self._issued = 0  # the last sequence stamped in this epoch
        self._claimed = 0  # the last sequence claimed in this epoch
        self._fresh = False  # positioned, and no claim taken in this generation yet
        self.stored: int | None = None
        # Where the next claim starts: the end of the last one (None: not positioned).
        self.next_fetch: int | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.paused = False  # held by an operator (worker pause)

    def __repr__(self) -> str:
        return (
            f"PartitionState({self.tp.topic}[{self.tp.partition}] {self.phase.value} "
            f"gen={self.generation} stored={self.stored} next_fetch={self.next_fetch}"
            f"{' paused' if self.paused else ''})"
        )

    @property
    def consuming(self) -> bool:
        return self.phase is Phase.CONSUMING

    @property
    def fetchable(self) -> bool:
        """Positioned and not paused by an operator: the consumer may fetch it."""
        return self.phase is Phase.CONSUMING and not self.paused

    @property
    def idle(self) -> bool:
        """No commit of this partition in flight."""
        return not self._inflight

    # -- transitions ---------------------------------------------------------------------

    def _new_epoch(self) -> None:
        self.epoch = next(_numbers)
        self._issued = self._claimed = 0

    def positioned(self, stored: int | None, start: int) -> int:
        """Read from `start` on, `stored` being the database's row (None: none; then
        `start` is the log's start). A new generation: what was fetched before is stale."""
        if self.phase is Phase.REVOKED:
            return self.generation
        self.phase = Phase.CONSUMING
        self._new_epoch()
        self.generation = self.epoch
        self.stored = stored
        self.next_fetch = start
        self._fresh = True
        return self.generation

    def rewind(self, generation: int, stored: int | None) -> bool:
        """The log was lost (its end is below `stored`, read while the state was in
        `generation` with `stored`): read the new log from its start, unless the state moved
        or was revoked meanwhile. The compare-and-set still expects the stored row, which the
        first commit moves."""
        if not self.consuming or (self.generation, self.stored) != (generation, stored):
            return False
        self.positioned(self.stored, 0)
        return True

    def revoke(self) -> None:
        self.phase = Phase.REVOKED

    def pause(self) -> bool:
        """An operator paused the partition; True if it was not paused. Records fetched
        before are stale from now on."""
        if self.paused:
            return False
        self.paused = True
        self._new_epoch()
        return True

    def resume(self) -> bool:
        """An operator resumed the partition; True if it was paused. The caller positions
        it again before the consumer fetches it."""
        if not self.paused:
            return False
        self.paused = False
        return True

    # -- fetching ------------------------------------------------------------------------

    def stamp(self) -> Stamp | None:
        """The stamp of records getmany returns now (None: not fetchable): called once per
        return, before anything else runs."""
        if not self.fetchable:
            return None
        self._issued += 1
        return self.epoch, self._issued

    def claim(
        self, stamp: Stamp | None, records: list[Any], position: int | None
    ) -> tuple[Claim | None, bool]:
        """A claim on `records` (one getmany return, in offset order) stamped `stamp`, after
        which the consumer's position was `position` (None: not known; the records' end).

        None when stale (stamped before a seek, or not fetchable) or when an earlier chunk of
        the epoch was never claimed (`unclaimed()` then says where to read again). The flag
        says the consumer reset its position below where this generation had read (the log
        was deleted and recreated): new records, taken from there."""
        if stamp is None or not records or not self.fetchable:
            return None, False
        epoch, sequence = stamp
        if epoch != self.epoch or sequence != self._claimed + 1:
            return None, False
        assert self.next_fetch is not None
        self._claimed = sequence
        first = records[0].offset
        reset = first < self.next_fetch
        start = first if reset else self.next_fetch
        end = records[-1].offset + 1
        if position is not None and position > end:
            end = position
        first_claim = reset or self._fresh
        self._fresh = False
        self.next_fetch = end
        return Claim(self, self.generation, start, end, first_claim), reset

    @property
    def dropped(self) -> bool:
        """A return stamped in this epoch was not claimed (yet)."""
        return self._issued != self._claimed

    def unclaimed(self) -> int | None:
        """Where to seek if a return stamped in this epoch was never claimed (a new epoch
        starts: the consumer reads again from where the claims end); None if none was."""
        if not self.dropped or not self.fetchable:
            return None
        self._new_epoch()
        return self.next_fetch

    # -- committing ----------------------------------------------------------------------

    def may_commit(self, claim: Claim) -> bool:
        """Whether `claim` is still this partition's next batch: not paused, same generation,
        still consuming, and continuing the stored offset (the first claim of a generation
        starts where the generation was positioned)."""
        return not self.paused and self._current(claim)

    def _current(self, claim: Claim) -> bool:
        return (
            claim.state is self
            and self.consuming
            and claim.generation == self.generation
            and (claim.first or claim.start == self.stored)
        )

    def commit_started(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def commit_finished(self, claim: Claim | None) -> bool:
        """The commit of `claim` ended (None: rolled back or abandoned). Applies it if it
        committed and is still current; True if it did."""
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()
        # Not may_commit: a commit in flight when the partition was paused did store.
        if claim is None or not self._current(claim):
            return False
        self.stored = claim.end
        return True

    async def wait_idle(self) -> None:
        """Until no commit of this partition is in flight."""
        await self._idle.wait()


class Partitions:
    """The partitions this worker owns, by TopicPartition; read-only views for the rest."""

    def __init__(self) -> None:
        self._states: dict[TopicPartition, PartitionState] = {}
        # Revoked states whose commit was still in flight: a new assignment of the partition
        # is positioned only once that commit has ended, so that it reads the offset the
        # commit stored instead of reading the records (and sending their dead letters) again.
        self._retiring: dict[TopicPartition, PartitionState] = {}

    def assign(self, tps: Iterable[TopicPartition]) -> list[PartitionState]:
        new = [PartitionState(tp) for tp in tps if tp not in self._states]
        self._states.update((s.tp, s) for s in new)
        return new

    def revoke(self, tps: Iterable[TopicPartition]) -> list[PartitionState]:
        gone = [self._states.pop(tp) for tp in list(tps) if tp in self._states]
        for state in gone:
            state.revoke()
            if not state.idle:
                self._retiring[state.tp] = state
        return gone

    def get(self, tp: TopicPartition) -> PartitionState | None:
        return self._states.get(tp)

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(list(self._states.values()))

    def pending(self) -> list[PartitionState]:
        """Assigned, not yet positioned, and not waiting for an earlier assignment's commit."""
        for tp, old in list(self._retiring.items()):
            if old.idle:
                del self._retiring[tp]
        return [s for s in self if s.phase is Phase.ASSIGNED and s.tp not in self._retiring]

    def waiting(self) -> list[PartitionState]:
        """Assigned, held back until an earlier assignment's commit ends."""
        return [s for s in self if s.phase is Phase.ASSIGNED and s.tp in self._retiring]

    def consuming(self) -> list[PartitionState]:
        return [s for s in self if s.consuming]

    def fetchable(self) -> list[PartitionState]:
        """Consuming and not paused by an operator: what a resume of the consumer may name."""
        return [s for s in self if s.fetchable]

    def paused(self) -> list[PartitionState]:
        """Held paused by an operator (positioned or not)."""
        return [s for s in self if s.paused]

    def stored_offsets(self) -> Mapping[TopicPartition, int | None]:
        """The stored next offset of every positioned partition (for lag and the CLI)."""
        return {s.tp: s.stored for s in self if s.consuming}
