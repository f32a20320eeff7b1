"""Taking partitions on and giving them up: where each one reads from, and when it moves.

The group's rebalance callbacks arrive here (`listener()`); so do the fences the commit path
meets. Every (re)positioning reads the database's row (or, with none, the log start), gives
the partition's state a new generation and seeks the consumer there in one synchronous step,
so a fetch can never return records of the old position stamped with the new generation.

- assignment: a new `PartitionState`, paused until positioned; a partition given back while
  its previous assignment's commit is in flight waits for that commit first;
- revocation: the states are revoked at once (nothing a late commit returns is applied), then
  their in-flight commit is waited for, bounded by REVOKE_WAIT_S;
- fence: another writer (a new owner, `worker offsets reset`, a deleted row) moved an offset;
  continue from what is stored now;
- lost log: a stored offset beyond the log end, read fresh from the broker (a cached high
  watermark is stale for every partition not fetched since, paused ones above all, and a
  stale one would turn a reset or a new owner's progress into a rewind to offset 0); read the
  new log from its start;
- hold: while a commit lane backs off from a transient failure every partition stays paused
  (`hold`/`release`); a partition positioned meanwhile is resumed only at the release;
- what the consumer returned: `stamp(tp)` at every getmany return, and after every fetch
  `settle()`: a partition with a stamped chunk nobody claimed (an error dropped it, a poll
  during a back-off returned it) is sought back to where its claims end
  (worker/partitions.py), so it is read again rather than skipped;
- moved offsets under idle partitions, which no commit would ever find fenced: compared with
  the database every CHECK_INTERVAL_S;
- operator pauses (worker/pauses.py): read with every positioning, so a partition assigned
  paused is never resumed; every PAUSES_INTERVAL_S by a task of their own (`follow_pauses`),
  so a pause is followed whatever the loop is doing (a lane backing off included); and in
  every batch's transaction (worker/commit.py), which reports a paused partition here
  (`paused_by_operator`). A paused partition stays assigned (the group keeps the member) and
  paused in the consumer, and every resume here names only `fetchable` partitions; a resumed
  one is positioned again from the database before it is fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import asyncpg
import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

from worker import offsets, pauses
from worker.broker import log_ends
from worker.config import Settings
from worker.logs import tp_name, tp_names
from worker.metrics import Metrics
from worker.partitions import Partitions, PartitionState, Phase, Stamp
from worker.reclaim import Reclaimer
from worker.retry import TRANSIENT, describe

log = structlog.get_logger("worker")

# How long a revocation waits for the revoked partitions' commit in flight, so that the next
# owner starts where it ended. Past it nothing breaks: the revoked states ignore what the
# commit returns, and the compare-and-set fences whoever is behind.
REVOKE_WAIT_S = 10.0
# How often the loop looks for lost logs and for offsets moved under idle partitions.
CHECK_INTERVAL_S = 5.0
# A suspected lost log (stored offset above the cached high watermark) that the broker's
# fresh answer clears is not asked about again for this long, unless its offset moves.
CLEARED_FOR_S = 60.0

RetryingCall = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
# A group-less consumer, unstarted, for reading log ends fresh (worker/clients.py).
ReaderFactory = Callable[[], Any]


class Ownership:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        retrying_call: RetryingCall,
        reader: ReaderFactory | None = None,
    ) -> None:
        self._group_id = settings.group_id
        self._metrics = metrics
        self._retrying_call = retrying_call
        self._reader = reader
        self.partitions = Partitions()
        # Every pause, seek and revocation drops buffered fetch data (worker/reclaim.py).
        self.reclaim = Reclaimer()
        # Partitions read again from the start because their log was lost: the state and the
        # stored offset it was rewound from, so that it is rewound once.
        self._rewound: dict[TopicPartition, tuple[PartitionState, int | None]] = {}
        # Suspected lost logs the broker's fresh log end cleared: (state, generation,
        # stored) and until when they are not asked about again.
        self._cleared: dict[TopicPartition, tuple[tuple[Any, ...], float]] = {}
        # Every partition paused: a commit lane is backing off.
        self._held = False
        self._stamped: set[PartitionState] = set()  # since the last settle()
        self._pool: asyncpg.Pool | None = None
        self._consumer: Any = None

    def attach(self, pool: asyncpg.Pool, consumer: Any) -> None:
        self._pool = pool
        self._consumer = consumer

    # -- holding every partition while a lane backs off -----------------------------------

    def hold(self) -> None:
        """Pause every assigned partition until `release()`."""
        self._held = True
        self._consumer.pause(*self._consumer.assignment())
        self.reclaim.dropped()

    def release(self) -> None:
        """Resume the consuming partitions (a stuck one is paused again by worker/fetch.py
        before its next read is due)."""
        self._held = False
        self._consumer.resume(*(s.tp for s in self.partitions.fetchable()))

    def stamp(self, tp: TopicPartition) -> Stamp | None:
        """The stamp of records of `tp` getmany returns now (None: not fetchable)."""
        state = self.partitions.get(tp)
        stamp = None if state is None else state.stamp()
        if stamp is not None:
            self._stamped.add(state)
        return stamp

    def settle(self) -> None:
        """After a fetch's returns were claimed (or the fetch failed, or a poll returned
        records nobody claims): read each partition with a return left unclaimed again from
        where its claims end. Synchronous after the fetch: nothing was stamped in between.
        Only the partitions stamped since the last settle are looked at (a fetch costs the
        partitions it returned, not all those owned)."""
        stamped, self._stamped = self._stamped, set()
        for state in stamped:
            offset = state.unclaimed()
            if offset is None:
                continue
            self._consumer.seek(state.tp, offset)
            self.reclaim.dropped()
            self._metrics.rereads.labels(state.tp.topic).inc()
            log.info(
                "records returned and not claimed; reading the partition again from there",
                partition=tp_name(state.tp),
                offset=offset,
            )

    def listener(self) -> ConsumerRebalanceListener:
        return _Listener(self)

    def stored_offsets(self) -> Mapping[TopicPartition, int | None]:
        return self.partitions.stored_offsets()

    def assigned(self, assigned: set[TopicPartition]) -> None:
        new = self.partitions.assign(assigned)
        if not new:
            return
        # Until its stored offset is known, a partition must not deliver records.
        self._consumer.pause(*(s.tp for s in new))
        log.info("partitions assigned", partitions=tp_names(s.tp for s in new))

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        gone = self.partitions.revoke(revoked)
        if not gone:
            return
        self.reclaim.dropped()
        log.info("partitions revoked", partitions=tp_names(s.tp for s in gone))
        # Let the commit in flight finish so the next owner starts where it ended.
        try:
            async with asyncio.timeout(REVOKE_WAIT_S):
                for state in gone:
                    await state.wait_idle()
        except TimeoutError:
            log.warning(
                "revoked partitions still committing; what that commit returns is ignored",
                partitions=tp_names(s.tp for s in gone),
                waited_s=REVOKE_WAIT_S,
            )

    async def _stored_and_starts(
        self, tps: set[TopicPartition]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """The stored rows of `tps`, and where the logs of those without one start."""

        async def load() -> dict[TopicPartition, int]:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                return await offsets.load(conn, self._group_id, tps)

        stored = await self._retrying_call("database", load)
        starts = await self._retrying_call(
            "kafka", functools.partial(offsets.log_starts, self._consumer, tps - stored.keys())
        )
        return stored, starts

    async def position_pending(self) -> None:
        """Seek newly assigned partitions to their stored offset, and a partition without a
        row to the start of its log: Kafka's committed offset (written for lag tools only)
        would turn a deleted row into records skipped instead of replayed."""
        pending = self.partitions.pending()
        if not pending:
            return
        stored, starts = await self._stored_and_starts({s.tp for s in pending})
        held = await self._retrying_call("database", self._load_pauses)
        for state in pending:
            if state.tp in held:
                state.pause()
        positioned = self._reposition(pending, stored, starts, resume=True)
        log.info(
            "partitions positioned",
            stored={tp_name(tp): stored.get(tp) for tp in sorted(positioned)},
            from_log_start={tp_name(tp): starts[tp] for tp in sorted(positioned - stored.keys())},
            paused_by_operator=tp_names(positioned & held),
        )

    async def _load_pauses(self) -> set[TopicPartition]:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            return await pauses.load(conn, self._group_id)

    async def follow_pauses(self, stop: asyncio.Event) -> None:
        """Every PAUSES_INTERVAL_S until `stop`: pause and resume the positioned partitions as
        `partition_pauses` says."""
        while not stop.is_set():
            with contextlib.suppress(TRANSIENT):  # read again next time
                await self._follow_pauses()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pauses.PAUSES_INTERVAL_S)

    def paused_by_operator(self, tps: Iterable[TopicPartition]) -> None:
        """These partitions are paused in `partition_pauses` (found by a batch's transaction,
        or by the follower): stop fetching them and claim nothing more of them."""
        paused = [s for tp in tps if (s := self.partitions.get(tp)) and s.consuming and s.pause()]
        if paused:
            self._consumer.pause(*(s.tp for s in paused))
            self.reclaim.dropped()
            log.info("partitions paused by an operator", partitions=tp_names(s.tp for s in paused))

    async def _follow_pauses(self) -> None:
        if self._pool is None:
            return
        held = await self._load_pauses()
        self.paused_by_operator(held)
        resuming = {s.tp for s in self.partitions.consuming() if s.paused and s.tp not in held}
        if not resuming:
            return
        # From what is stored: records fetched before the pause were never claimed. Flag
        # cleared and position taken with no await in between, so no resume of the consumer
        # elsewhere (a lane's release) can fetch the partition from where it was.
        stored, starts = await self._stored_and_starts(resuming)
        resumed = [s for tp in resuming if (s := self.partitions.get(tp)) and s.consuming]
        positioned = self._reposition([s for s in resumed if s.resume()], stored, starts, True)
        log.info(
            "partitions resumed by an operator",
            stored={tp_name(tp): stored.get(tp) for tp in sorted(positioned)},
        )

    async def refence(self, tps: set[TopicPartition]) -> None:
        """Another worker, or an operator (`worker offsets reset`, a deleted row), moved these
        partitions' offsets: continue from what is stored now, and where no row is left from
        the start of the log, as at assignment (staying put would skip the replay asked for)."""
        stored, starts = await self._stored_and_starts(tps)
        # Counted once both reads succeeded: the caller retries this whole call on failure.
        self._metrics.fenced.inc()
        states = [s for tp in tps if (s := self.partitions.get(tp)) is not None]
        self._reposition([s for s in states if s.consuming], stored, starts)
        log.warning(
            "offsets fenced by another writer",
            partitions=tp_names(tps),
            stored={tp_name(tp): stored.get(tp) for tp in sorted(tps)},
        )

    def _reposition(
        self,
        states: list[PartitionState],
        stored: dict[TopicPartition, int],
        starts: dict[TopicPartition, int],
        resume: bool = False,
    ) -> set[TopicPartition]:
        """Give each state still ours a new generation at its position and seek there, with
        no await in between: a fetch returns records either before both (stamped with the
        old generation, so stale) or after both (from the new position). With `resume`,
        resume the fetchable ones, unless a lane started backing off during the reads before
        (then they stay paused like every other partition, and `release` resumes them)."""
        done: set[TopicPartition] = set()
        consumer = self._consumer
        owned = consumer.assignment()
        for state in states:
            tp = state.tp
            if state.phase is Phase.REVOKED or tp not in owned:
                continue
            start = stored[tp] if tp in stored else starts[tp]
            # None, not the log start: the compare-and-set must expect "no row", so that the
            # first commit creates it (and loses to anyone who created it first).
            state.positioned(stored.get(tp), start)
            consumer.seek(tp, start)
            done.add(tp)
        if done:
            self.reclaim.dropped()
        if resume and not self._held:
            consumer.resume(*(s.tp for s in states if s.tp in done and s.fetchable))
        return done

    async def rewind_lost_logs(self) -> None:
        """A stored offset beyond the broker's log end means the log was lost (topic deleted
        and recreated, a broker without its data). Kafka answers such a fetch with
        OffsetOutOfRange and the consumer resets to the earliest offset; some brokers just
        return nothing, forever. Either way the records now in the log are new: read them
        from the start (the compare-and-set still expects the stored offset).

        The cached high watermark only says which partitions to ask about: it is as old as
        the last fetch of the partition, and a paused partition is not fetched. The log end
        that decides is read from the broker now, and a partition is rewound only if its
        state did not change while it was read (no fence, reset or commit moved it)."""
        consumer = self._consumer
        now = asyncio.get_running_loop().time()
        suspects: dict[TopicPartition, tuple[Any, ...]] = {}
        for state in self.partitions.consuming():
            tp = state.tp
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # revoked meanwhile
                continue
            if state.stored is None or highwater is None or state.stored <= highwater:
                continue
            if self._rewound.get(tp) == (state, state.stored):
                continue  # already reading it again from the start
            seen = (state, state.generation, state.stored)
            cleared = self._cleared.get(tp)
            if cleared is not None and cleared[0] == seen and now < cleared[1]:
                continue
            suspects[tp] = seen
        if not suspects or self._reader is None:
            return
        try:
            ends = await log_ends(self._reader, set(suspects))
        except TRANSIENT as exc:
            log.warning("could not read log ends; checked again later", error=describe(exc))
            return
        for tp, seen in suspects.items():
            state, generation, stored = seen
            end = ends.get(tp)
            if end is None:
                continue  # unknown: look again next time
            if stored <= end:
                self._cleared[tp] = (seen, now + CLEARED_FOR_S)
                continue
            # Not if it moved, was revoked or given away while the end was read.
            if tp not in consumer.assignment() or not state.rewind(generation, stored):
                continue
            log.warning(
                "stored offset is beyond the partition's log end; reading it from the start",
                topic=tp.topic,
                partition=tp.partition,
                stored_offset=stored,
                log_end=end,
            )
            self._rewound[tp] = (state, stored)
            consumer.seek(tp, 0)
            self.reclaim.dropped()

    async def follow_moved_offsets(self) -> None:
        """Follow an operator's `worker offsets reset` (or deleted rows) on partitions that
        have nothing to commit: a busy partition finds out at its next commit, fenced by the
        compare-and-set; an idle one would never. Only partitions with no commit in flight
        before and after the read are compared, so a commit of our own is never mistaken
        for someone else's move."""
        idle = {s.tp: (s, s.generation, s.stored) for s in self.partitions.consuming() if s.idle}
        if not idle or self._pool is None:
            return
        try:
            async with self._pool.acquire() as conn:
                stored = await offsets.load(conn, self._group_id, idle)
        except TRANSIENT:
            return  # checked again next time; a commit would meet the outage anyway
        moved = {
            tp
            for tp, (state, generation, was) in idle.items()
            if state.idle
            and (state.generation, state.stored) == (generation, was)
            and stored.get(tp) != was
        }
        if moved:
            await self._retrying_call("database", functools.partial(self.refence, moved))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ownership: Ownership) -> None:
        self._ownership = ownership

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._ownership.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._ownership.assigned(set(assigned))
