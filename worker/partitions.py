"""The state of each partition this worker owns: one object per partition, its phase and claims.

A `PartitionState` lives from an assignment to its revocation; a later assignment of the same
partition is a new object, so nothing an old one hears (a late commit, a late fetch) can touch
the new one. Its phases, in the spirit of aiokafka's `TopicPartitionState`:

    assigned ──positioned()──▶ consuming ──positioned() again (fence, reset, lost log)──┐
        │                         ▲                                                  │
        │                         └──────────────────────────────────────────────────┘
        └──────────────revoke()────────────────▶ revoked (final)

Every (re)positioning starts a new *generation*, a number no other positioning of any partition
state has. The invariants, which the commit path relies
on and tests/test_partition_state.py checks under random interleavings:

- `stored` is consumer_offsets' next offset for the partition as far as this worker knows
  (None: no row); the compare-and-set of the next commit expects exactly it.
- A `Claim` is taken on the records of one fetch, stamped with the *epoch* they were fetched
  in: every seek starts a new epoch (a positioning starts a generation and its first epoch),
  and records fetched before a seek are stale whatever their offsets, since the seek reads
  them again. Within a generation,
  claims are contiguous: each starts where the previous one ended (`next_fetch`), so a batch
  never skips a record. Records that start above `next_fetch` are a gap, and a gap is taken
  only when the records prove it: they are the first ones returned after a seek to
  `next_fetch` (compaction or transaction markers left those offsets empty). Any other gap
  means records were returned and not claimed; the claim is refused with a `Refetch` at
  `next_fetch`, and the caller seeks there, so the missing records are read again (or the
  gap is proven by the read after the seek).
- A claim may commit only while the partition is consuming in the claim's generation and the
  claim starts at `stored`: a batch behind an abandoned or fenced one can never commit past
  the records that were not stored. Committing moves `stored` to the claim's end, forward.
- A revoked partition accepts nothing: a commit that finishes after the revocation returns
  without changing any state here.

An operator's pause (`worker pause`, worker/pauses.py) is a flag beside the phase, since a
partition is paused whatever its phase and stays paused through positionings (a fence, an
offsets reset, a new assignment read from the table): `pause()` starts a new epoch, so
records fetched before it are stale, and from then on no claim is taken and none may
commit (a commit already in flight completes, and moves `stored` as usual). `resume()` clears
the flag; the caller then positions the partition again from the database, so reading
continues from what is stored whatever was fetched before the pause. Every resume of the
consumer goes through `fetchable`, so no other path (a lane's back-off ending, a positioning,
a stuck partition's retry) can resume a paused partition.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

_generations = itertools.count(1)


class Phase(enum.Enum):
    ASSIGNED = "assigned"  # paused until positioned from the database
    CONSUMING = "consuming"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Refetch:
    """Records came after a gap nothing proves: seek the partition to `offset` and read
    from there (the fetch after that seek proves or fills the gap)."""

    offset: int


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to commit [start, end) of one partition, in one generation."""

    state: PartitionState
    generation: int
    start: int  # the offset this claim's batch continues from
    end: int  # the next offset after its records (what is stored when it commits)
    # The first claim of its generation starts where the partition was positioned (or, after
    # a log reset, at the new log's records), not necessarily at the stored offset.
    first: bool


class PartitionState:
    __slots__ = (
        "_claimed",
        "_idle",
        "_inflight",
        "_sought",
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
        # Changes at every seek; the stamp of the records fetched since (a generation's
        # first epoch is the generation's own number, both from one counter).
        self.epoch = 0
        self.stored: int | None = None
        # The offset the next fetched record continues from (None: not positioned).
        self.next_fetch: int | None = None
        self._claimed = False  # whether this generation has handed out a claim
        # The offset the consumer was last sought to, until records are claimed after it:
        # the first records a fetch returns after a seek prove any gap below them.
        self._sought: int | None = None
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

    def positioned(self, stored: int | None, start: int) -> int:
        """Read from `start` on, `stored` being the database's row (None: none; then
        `start` is the log's start). A new generation: what was fetched before is stale."""
        if self.phase is Phase.REVOKED:
            return self.generation
        self.phase = Phase.CONSUMING
        # Unique across objects: records fetched for an earlier assignment of the same
        # partition must not match a generation of the next one.
        self.generation = self.epoch = next(_generations)
        self.stored = stored
        self.next_fetch = start
        self._claimed = False
        self._sought = start
        return self.generation

    def rewound(self, start: int) -> int:
        """The log was lost (its end is below `stored`): read the new log from `start`. The
        compare-and-set still expects the stored row, which the first commit moves."""
        return self.positioned(self.stored, start)

    def revoke(self) -> None:
        self.phase = Phase.REVOKED

    def pause(self) -> bool:
        """An operator paused the partition; True if it was not paused. Records fetched
        before are stale from now on."""
        if self.paused:
            return False
        self.paused = True
        self.epoch = next(_generations)
        return True

    def resume(self) -> bool:
        """An operator resumed the partition; True if it was paused. The caller positions
        it again before the consumer fetches it."""
        if not self.paused:
            return False
        self.paused = False
        return True

    def put_back(self, epoch: int, first: int) -> bool:
        """Records stamped `epoch`, starting at `first`, were returned by a fetch and will
        not be claimed: the caller seeks to `first` (True) unless the partition was sought
        since (False: that seek already decides where it reads). A new epoch either way,
        since whatever else was fetched before the seek is read again after it."""
        if epoch != self.epoch or not self.consuming:
            return False
        self.epoch = next(_generations)
        self._sought = first
        return True

    # -- fetching ------------------------------------------------------------------------

    def fetch_epoch(self) -> int | None:
        """The stamp of records fetched now (None: not consuming): the epoch since the last
        seek of this partition."""
        return self.epoch if self.fetchable else None

    def claim(self, epoch: int, records: list[Any]) -> tuple[Claim | Refetch | None, bool]:
        """A claim on `records` (one fetch, in offset order) fetched in `epoch`.

        None when they are stale: fetched before the last seek, or not consuming. A
        `Refetch` when they start above `next_fetch` and are not the first records after a
        seek to `next_fetch` (a gap nothing proves). The flag says the log was reset under
        us: the records start below where this generation had read to, which only the
        consumer's own reset to the earliest offset does (the log was deleted and recreated);
        they are new records and are taken, from there."""
        if not records or epoch != self.epoch or not self.fetchable:
            return None, False
        assert self.next_fetch is not None
        first = int(records[0].offset)
        if first > self.next_fetch and self._sought != self.next_fetch:
            self._sought = self.next_fetch
            self.epoch = next(_generations)
            return Refetch(self.next_fetch), False
        reset = first < self.next_fetch
        start = first if reset else self.next_fetch
        end = int(records[-1].offset) + 1
        first_claim = reset or not self._claimed
        self.next_fetch = end
        self._claimed = True
        self._sought = None
        return Claim(self, self.generation, start, end, first_claim), reset

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

    def __len__(self) -> int:
        return len(self._states)

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
