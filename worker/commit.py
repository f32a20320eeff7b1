"""The commit path of one batch: dead letters, then one PostgreSQL transaction, then Kafka.

1. The dead letters are screened by the erasure ledger and published, and acknowledged by the
   broker, before the batch's transaction opens (in one of their own that holds only the
   ledger's lock in share mode, worker/erasure.py), so a slow or refusing broker never holds
   row locks, and the offset that passes a dead letter commits only after its
   acknowledgement (a crash in between re-sends it: a dead letter may repeat, never be lost).
   A letter of an erased person is not sent: it is counted as erased.
2. In ONE transaction, at READ COMMITTED whatever the database's default (the ledger's check
   must see an erasure it waited for): the offsets of the batch's partitions are
   compare-and-set from what this worker believes is stored (`Fenced` when another writer
   moved them, `Paused` when an operator holds one paused: worker/offsets.py), and the
   handlers write the events. The first attempt writes without savepoints (each costs two
   round trips, and a batch almost never needs one); if the database rejects a record, that
   transaction is lost, and the next attempt writes under savepoints, where the record is
   isolated by bisection; the transaction is then rolled back, the rejected records
   dead-lettered (step 1 again) and the batch stored without them.
3. After the commit, the offsets are also committed to Kafka, for lag tools only, beside the
   lanes (`KafkaOffsets`): a lane notes what it stored and takes its next batch at once, so a
   broker round trip never sits between a batch and the one behind it.

Before step 2, records past the retention horizon (worker/horizon.py) are moved out of each
part's items into its `expired` list; in step 2, before anything is written, the records of
erased candidates that were in the log when the erasure was made (worker/erasure.py) are moved
into its `erased` list, inside the transaction because the ledger's check must be serialised
with erasures. Either way they store nothing, but their offsets commit with the rest: the
place for any further check that turns a record into a counted discard.
After the handlers, the same transaction records in the interview rows the stored records
were applied to the age those records give them (`last_event_at`, worker/horizon.py), by which
retention deletes them.

A transient failure anywhere propagates to the caller, which retries the same batch; what a
failed attempt learnt (which letters the broker acknowledged, which records the database
rejected) is kept in `Letters`, so a retry neither re-sends nor re-discovers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from schemas.common import tag_of
from worker import offsets, pauses
from worker.batch import Batch, Part, record_of, set_aside_erased
from worker.clock import transaction_time
from worker.dlq import (
    REJECTED_BY_DATABASE,
    SCHEMA_VIOLATION,
    DeadLetter,
    DeadLetterPublisher,
    StorageRefusal,
    truncate,
)
from worker.erasure import Ledger
from worker.handlers.base import Item
from worker.horizon import Ages, Horizon, raise_ages, row_ages
from worker.retry import describe, is_record_error
from worker.router import Prepared, PrepareError, prepare_batch, write_batch

log = structlog.get_logger("worker")

Coordinates = tuple[str, int, int]


class Fenced(Exception):
    def __init__(self, partitions: set[TopicPartition]) -> None:
        super().__init__(f"offsets moved by another writer: {sorted(partitions)}")
        self.partitions = partitions


class Paused(Exception):
    """Partitions of the batch an operator holds paused: nothing of them may be stored."""

    def __init__(self, partitions: set[TopicPartition]) -> None:
        super().__init__(f"partitions paused by an operator: {sorted(partitions)}")
        self.partitions = partitions


class _Rejected(Exception):
    """The database rejected records of a batch: roll back, dead-letter them, store the rest."""

    def __init__(self, found: list[tuple[Item, str, str]]) -> None:
        super().__init__(f"{len(found)} records rejected")
        self.found = found


class _Unguarded(Exception):
    """A record failed in an attempt without savepoints: its transaction is lost; the next
    attempt is guarded (`Committer.store`)."""


class Letters:
    """A batch's dead letters across its attempts: which the broker has acknowledged, and
    which records the database rejected (they stay out of every later attempt)."""

    __slots__ = ("_rejected_at", "_sent", "erased", "rejected")

    def __init__(self) -> None:
        self._sent: set[Coordinates] = set()
        self._rejected_at: set[Coordinates] = set()
        self.rejected: list[DeadLetter] = []
        self.erased: list[DeadLetter] = []  # kept out by the erasure ledger, never sent

    def unsent(self, decoded_out: Sequence[DeadLetter]) -> list[DeadLetter]:
        """The letters the broker has not acknowledged yet, in partition and offset order."""
        pending = [
            d for d in (*decoded_out, *self.rejected) if coordinates(d.record) not in self._sent
        ]
        pending.sort(key=lambda d: (d.record.partition, d.record.offset))
        return pending

    def sent(self, letters: Sequence[DeadLetter]) -> None:
        self._sent.update(coordinates(d.record) for d in letters)

    def storable(self, items: list[Item]) -> list[Item]:
        if not self._rejected_at:
            return items
        return [i for i in items if (i.topic, i.partition, i.offset) not in self._rejected_at]

    def reject(self, part: Part, item: Item, reason: str, message: str) -> None:
        record = part.record_at(item.offset)
        self._rejected_at.add((item.topic, item.partition, item.offset))
        self.rejected.append(DeadLetter(record, StorageRefusal(reason, message)))
        log.warning(
            "record rejected by database"
            if reason == REJECTED_BY_DATABASE
            else "record could not be prepared for storage",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            event_type=tag_of(item.event),
            error=message,
        )


def _set_aside(batch: Batch) -> bool:
    """Whether any part of the batch holds expired or erased items (its preparation then no
    longer matches its items)."""
    return any(part.expired or part.erased for part in batch.values())


def coordinates(record: Any) -> Coordinates:
    return (record.topic, record.partition, record.offset)


class Committer:
    """Commits batches through one pool and one dead-letter publisher."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dlq: DeadLetterPublisher,
        group_id: str,
        ledger: Ledger,
        horizon: Horizon | None = None,
    ) -> None:
        self._pool = pool
        self._dlq = dlq
        self._group_id = group_id
        self._ledger = ledger
        self._horizon = horizon

    def _sift(self, batch: Batch, live: set[TopicPartition]) -> None:
        """Move the items past the horizon out of the live parts."""
        if self._horizon is not None:
            for tp in live:
                part = batch[tp]
                part.items, expired = self._horizon.sift_part(part)
                part.expired.extend(expired)

    async def commit(
        self,
        batch: Batch,
        live: set[TopicPartition],
        batch_prepared: Prepared | None,
        letters: Letters,
    ) -> tuple[int, int]:
        """Dead letters, then the rows and offsets of the `live` partitions of `batch` in one
        transaction. Raises `Fenced` or `Paused` (nothing committed) or a transient error.
        Returns when the committed transaction began and ended (`time.time_ns()`, for its
        trace span)."""
        self._sift(batch, live)
        decoded_out = [letter for tp in sorted(live) for letter in batch[tp].letters]
        guarded = False
        while True:
            pending = letters.unsent(decoded_out)
            letters.erased += await self._ledger.publish_screened(
                self._pool, pending, self._publish
            )
            letters.sent(pending)
            # Recomputed each attempt: an attempt may have set erased items aside.
            items = [item for tp in sorted(live) for item in batch[tp].items]
            storable = letters.storable(items)
            # The batch was prepared for all its records; if some were lost since (a
            # rebalance during the previous commit, a rejected, expired or erased record),
            # they are prepared again.
            whole = live == set(batch) and not letters.rejected and not _set_aside(batch)
            prepared = batch_prepared if whole else None
            try:
                began = time.time_ns()
                async with (
                    self._pool.acquire() as conn,
                    conn.transaction(isolation="read_committed"),
                ):
                    # One time for every row this transaction writes (updated_at).
                    at = transaction_time()
                    moves = {
                        tp: (batch[tp].claim.state.stored, batch[tp].next_offset) for tp in live
                    }
                    done = await offsets.advance(conn, self._group_id, moves, at)
                    if done != live:
                        refused = live - done
                        held = await pauses.among(conn, self._group_id, refused)
                        raise Paused(held) if held else Fenced(refused)
                    kept, erased = await self._ledger.screen(
                        conn, storable, functools.partial(record_of, batch)
                    )
                    if erased:
                        set_aside_erased(batch, erased)
                        prepared = None
                    ages = row_ages(kept, lambda i: record_of(batch, i).timestamp)
                    found = await self.store(conn, kept, prepared, at, guarded, ages)
                    if found:
                        raise _Rejected(found)  # rolls the transaction back
                    await raise_ages(conn, ages)
                return began, time.time_ns()
            except _Unguarded:
                guarded = True  # rolled back: again, under savepoints
            except _Rejected as rejected:
                for item, reason, message in rejected.found:
                    part = batch[TopicPartition(item.topic, item.partition)]
                    letters.reject(part, item, reason, message)

    async def _publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send dead letters and wait for the broker's acknowledgement of all of them."""
        for letter in letters:
            r = letter.record
            log.debug(
                "dead letter",
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                reason=letter.failure.reason,
            )
        await self._dlq.publish(letters)

    async def store(
        self,
        conn: asyncpg.Connection,
        items: Sequence[Item],
        prepared: Prepared | None = None,
        at: dt.datetime | None = None,
        guarded: bool = True,
        ages: Ages | None = None,
    ) -> list[tuple[Item, str, str]]:
        """Write `items`; isolate records the database rejects (or a handler cannot prepare)
        by bisection under savepoints. Returns the rejected items, dead-letter reason and
        message. Not `guarded`: no savepoint, and a rejected record raises `_Unguarded` (the
        transaction is lost). `ages`: the interview rows' ages, which a row created now is
        born with (worker/horizon.py)."""
        if not items:
            return []
        at = transaction_time() if at is None else at
        try:
            async with conn.transaction() if guarded else contextlib.nullcontext():
                batch = prepare_batch(items) if prepared is None else prepared
                await write_batch(conn, batch, at, guarded, ages)
            return []
        except PrepareError as exc:
            if not guarded:
                raise _Unguarded from exc
            if len(items) == 1:
                return [(items[0], SCHEMA_VIOLATION, truncate(str(exc)))]
        except Exception as exc:
            if not is_record_error(exc):
                raise
            if not guarded:
                raise _Unguarded from exc
            if len(items) == 1:
                return [(items[0], REJECTED_BY_DATABASE, truncate(describe(exc)))]
        mid = len(items) // 2
        return await self.store(conn, items[:mid], None, at, True, ages) + await self.store(
            conn, items[mid:], None, at, True, ages
        )


class KafkaOffsets:
    """Kafka's copy of the stored offsets, committed by one task beside the lanes: each commit
    takes the latest offset noted per partition (later notes of a partition replace earlier
    ones), so the copy trails the database by at most one broker round trip."""

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, consumer: Any, moves: dict[TopicPartition, int]) -> None:
        """Commit `moves` soon; returns at once."""
        if not moves:
            return
        self._pending.update(moves)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._commit(consumer))

    async def _commit(self, consumer: Any) -> None:
        while self._pending:
            moves, self._pending = self._pending, {}
            try:
                await commit_kafka(consumer, moves)
            except Exception as exc:  # for lag tools only: never a reason to stop
                log.warning("kafka offset commit failed", error=describe(exc))

    async def flush(self) -> None:
        """Wait until everything noted is committed (or skipped), as before a consumer stops."""
        while self._task is not None and not self._task.done():
            await self._task


async def commit_kafka(consumer: Any, moves: dict[TopicPartition, int]) -> None:
    """Kafka's copy of the offsets, for lag tools: the database is the source of truth, so a
    failure here is only logged."""
    owned = consumer.assignment()
    commit = {tp: OffsetAndMetadata(n, "") for tp, n in moves.items() if tp in owned}
    if not commit:
        return
    try:
        await consumer.commit(commit)
    except KafkaError as exc:
        log.debug("kafka offset commit skipped", error=describe(exc))
