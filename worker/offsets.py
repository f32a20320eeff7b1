"""`consumer_offsets`: where each partition resumes, written in the batch's own transaction.

Every write is a compare-and-set against the offset this worker believes is stored. A worker
that lost its partition (a rebalance it slept through, a long pause) finds the row moved on by
the new owner, writes nothing, and rolls the batch back, so it can neither move progress
backwards nor apply a batch twice. The UPDATE also locks the row until commit, which queues a
competing owner behind this transaction instead of letting both succeed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import asyncpg
from aiokafka import TopicPartition

_LOAD = """
SELECT topic, partition, next_offset FROM consumer_offsets
WHERE group_id = $1 AND (topic, partition) IN (
    SELECT * FROM unnest($2::text[], $3::integer[]))
"""

_ADVANCE = """
UPDATE consumer_offsets AS o SET next_offset = u.next_offset, updated_at = now()
FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::bigint[])
    AS u(topic, partition, expected, next_offset)
WHERE o.group_id = $1 AND o.topic = u.topic AND o.partition = u.partition
  AND o.next_offset = u.expected
RETURNING o.topic, o.partition
"""

_CREATE = """
INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
SELECT $1, * FROM unnest($2::text[], $3::integer[], $4::bigint[])
ON CONFLICT DO NOTHING
RETURNING topic, partition
"""


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
) -> set[TopicPartition]:
    """Apply `{tp: (expected, next)}`; `expected=None` means "no row yet". Return the
    partitions whose compare-and-set succeeded."""
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
