"""Operator pauses (`worker pause` / `worker resume`): the `partition_pauses` table.

The table is the only truth: a row means the group's workers hold that partition paused. The
workers read it (whole, for their group: a handful of rows) when they position a partition,
so a pause outlasts restarts and rebalances, and every PAUSES_INTERVAL_S while they run
(worker/ownership.py `follow_pauses`, a task of its own), so a pause or a resume reaches every
member within that interval whatever the worker is doing. Every batch's offset
compare-and-set also refuses a paused partition (worker/offsets.py): a batch fetched before the
pause stores nothing once the pause has committed. Pausing and resuming are idempotent set
operations.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg
from aiokafka import TopicPartition

# How often running workers read the pauses; docs/contract.md §1 promises they follow within 5 s.
PAUSES_INTERVAL_S = 2.0

_LOAD = "SELECT topic, partition FROM partition_pauses WHERE group_id = $1"
_AMONG = """
SELECT topic, partition FROM partition_pauses
WHERE group_id = $1 AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[]))
"""
_PAUSE = """
INSERT INTO partition_pauses (group_id, topic, partition)
SELECT $1, t, p FROM unnest($2::text[], $3::int[]) AS u(t, p)
ON CONFLICT (group_id, topic, partition) DO NOTHING
RETURNING topic, partition
"""
_RESUME = """
DELETE FROM partition_pauses
WHERE group_id = $1
  AND (topic, partition) IN (SELECT t, p FROM unnest($2::text[], $3::int[]) AS u(t, p))
RETURNING topic, partition
"""


async def load(conn: asyncpg.Connection, group_id: str) -> set[TopicPartition]:
    """The partitions the group holds paused."""
    return {TopicPartition(r["topic"], r["partition"]) for r in await conn.fetch(_LOAD, group_id)}


async def among(
    conn: asyncpg.Connection, group_id: str, tps: Iterable[TopicPartition]
) -> set[TopicPartition]:
    """Which of `tps` the group holds paused."""
    return await _apply(conn, _AMONG, group_id, tps)


async def pause(
    conn: asyncpg.Connection, group_id: str, tps: Iterable[TopicPartition]
) -> set[TopicPartition]:
    """Pause `tps`; returns those that were not paused yet."""
    return await _apply(conn, _PAUSE, group_id, tps)


async def resume(
    conn: asyncpg.Connection, group_id: str, tps: Iterable[TopicPartition]
) -> set[TopicPartition]:
    """Resume `tps`; returns those that were paused."""
    return await _apply(conn, _RESUME, group_id, tps)


async def _apply(
    conn: asyncpg.Connection, sql: str, group_id: str, tps: Iterable[TopicPartition]
) -> set[TopicPartition]:
    ordered = sorted(set(tps))
    rows = await conn.fetch(
        sql, group_id, [tp.topic for tp in ordered], [tp.partition for tp in ordered]
    )
    return {TopicPartition(r["topic"], r["partition"]) for r in rows}
