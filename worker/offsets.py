"""`consumer_offsets`: where each partition resumes, written in the batch's own transaction.

Invariants:

- A row says where the partition resumes; a partition without a row is read from the start of
  its log (the broker's log-start offset, which retention moves above 0), never from Kafka's
  committed offset: the worker commits to Kafka only for lag tools. Deleting rows is a replay.
- Every write by a worker is a compare-and-set against the offset it believes is stored, and
  "no row" is a belief too (`expected=None`: the first commit inserts the row, and fails if
  another writer inserted one first). A worker that lost its partition (a rebalance it slept
  through, a long pause) or whose row an operator moved finds the row changed, writes nothing,
  and rolls the batch back, so it can neither move progress backwards nor apply a batch twice.
  The UPDATE also locks the row until commit, which queues a competing owner behind this
  transaction instead of letting both succeed.
- An operator's reset (`worker offsets reset`) writes the rows it moves, unconditionally and in
  one transaction, and never deletes one: the running workers' compare-and-set fails on them,
  and they continue from the new value at their next batch.
- A partition an operator holds paused (`partition_pauses`, worker/pauses.py) refuses the
  compare-and-set as a moved row would: a batch fetched before the pause, whose worker has not
  heard of it yet, stores nothing. The check is in the statement that moves the offset, so no
  path of the worker can miss it and the common case pays no extra round trip; the caller
  tells a pause from a fence with `pauses.among` only when a move was refused.
- Rows are locked in one order (topic, partition) by every writer.
- `updated_at` is bound by the writer (the batch's transaction time), never `now()` in the
  SQL: Citus refuses a non-immutable function in `DO UPDATE SET` (worker/distribution.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Protocol

import asyncpg
from aiokafka import TopicPartition

from worker.clock import transaction_time

_LOAD = """
SELECT topic, partition, next_offset FROM consumer_offsets
WHERE group_id = $1 AND (topic, partition) IN (
    SELECT * FROM unnest($2::text[], $3::integer[]))
"""

_ADVANCE = """
UPDATE consumer_offsets AS o SET next_offset = u.next_offset, updated_at = $6::timestamptz
FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::bigint[])
    AS u(topic, partition, expected, next_offset)
WHERE o.group_id = $1 AND o.topic = u.topic AND o.partition = u.partition
  AND o.next_offset = u.expected
  AND NOT EXISTS (
    SELECT 1 FROM partition_pauses AS p
    WHERE p.group_id = $1 AND p.topic = u.topic AND p.partition = u.partition)
RETURNING o.topic, o.partition
"""

_CREATE = """
INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
SELECT $1, u.* FROM unnest($2::text[], $3::integer[], $4::bigint[]) AS u(topic, partition, n)
WHERE NOT EXISTS (
    SELECT 1 FROM partition_pauses AS p
    WHERE p.group_id = $1 AND p.topic = u.topic AND p.partition = u.partition)
ON CONFLICT DO NOTHING
RETURNING topic, partition
"""

# Locks every row the reset may write before reading them, so the values it reports as
# replaced are the ones it replaced (workers may commit meanwhile).
_LOCK = """
SELECT topic, partition, next_offset FROM consumer_offsets
WHERE group_id = $1 AND (topic, partition) IN (
    SELECT * FROM unnest($2::text[], $3::integer[]))
ORDER BY topic, partition
FOR UPDATE
"""

_SET = """
INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
SELECT $1, * FROM unnest($2::text[], $3::integer[], $4::bigint[])
ON CONFLICT (group_id, topic, partition)
DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = $5::timestamptz
"""


class _LogStarts(Protocol):
    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]: ...


async def load(
    conn: asyncpg.Connection, group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    tps = sorted(partitions)
    rows = await conn.fetch(_LOAD, group_id, [tp.topic for tp in tps], [tp.partition for tp in tps])
    return {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def advance(
    conn: asyncpg.Connection,
    group_id: str,
    moves: Mapping[TopicPartition, tuple[int | None, int]],
    at: dt.datetime | None = None,
) -> set[TopicPartition]:
    """Apply `{tp: (expected, next)}`; `expected=None` means "no row yet". Return the
    partitions whose compare-and-set succeeded (not those moved by another writer, nor those
    an operator holds paused). `at` is the transaction's time (taken now if
    the caller has none)."""
    ordered = sorted(moves.items())  # one lock order for every worker
    update = [(tp, exp, nxt) for tp, (exp, nxt) in ordered if exp is not None]
    create = [(tp, nxt) for tp, (exp, nxt) in ordered if exp is None]
    done: set[TopicPartition] = set()
    if update:
        rows = await conn.fetch(
            _ADVANCE,
            group_id,
            [tp.topic for tp, _, _ in update],
            [tp.partition for tp, _, _ in update],
            [exp for _, exp, _ in update],
            [nxt for _, _, nxt in update],
            transaction_time() if at is None else at,
        )
        done.update(TopicPartition(r["topic"], r["partition"]) for r in rows)
    if create:
        rows = await conn.fetch(
            _CREATE,
            group_id,
            [tp.topic for tp, _ in create],
            [tp.partition for tp, _ in create],
            [nxt for _, nxt in create],
        )
        done.update(TopicPartition(r["topic"], r["partition"]) for r in rows)
    return done


async def log_starts(
    consumer: _LogStarts, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Where the logs of `partitions` start now (ListOffsets earliest): where a partition
    without a row is read from. Not 0 once retention has deleted the first records."""
    tps = sorted(partitions)
    if not tps:
        return {}
    return dict(await consumer.beginning_offsets(tps))


async def reset(
    conn: asyncpg.Connection, group_id: str, targets: Mapping[TopicPartition, int]
) -> dict[TopicPartition, tuple[int | None, int]]:
    """Set the rows of `targets` in one transaction, creating missing ones; rows already at
    their target are not written (their updated_at keeps saying when a worker last moved
    them). Returns `{tp: (replaced, new)}` for every target, `replaced=None` for no row.

    READ COMMITTED whatever the database's default: a row a worker commits while the reset
    waits for its lock is then overwritten (and the worker fenced), not a serialization
    failure."""
    tps = sorted(targets)
    async with conn.transaction(isolation="read_committed"):
        rows = await conn.fetch(
            _LOCK, group_id, [tp.topic for tp in tps], [tp.partition for tp in tps]
        )
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        plan = {tp: (stored.get(tp), targets[tp]) for tp in tps}
        moved = [tp for tp, (old, new) in plan.items() if old != new]
        if moved:
            await conn.execute(
                _SET,
                group_id,
                [tp.topic for tp in moved],
                [tp.partition for tp in moved],
                [targets[tp] for tp in moved],
                transaction_time(),
            )
    return plan
