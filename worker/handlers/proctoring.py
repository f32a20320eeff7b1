"""Proctoring events: the event log, the per-session summary and the system checks.

An event's identity is (exam, candidate, type, createdAt), so a redelivery or a replay inserts
nothing. The session summary is fed only from the rows the insert actually added (RETURNING),
which is what makes `flag_count` count distinct events, and every summary column is an
order-free aggregate (min, max, sum), so batches may arrive in any split.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from schemas.common import tag_of
from schemas.proctoring import FLAG_TYPES, SystemCheckCompleted
from worker.handlers.base import Item, columns, to_json

_INSERT_EVENTS = """
WITH ins AS (
    INSERT INTO proctoring_events AS e (
        exam_id, candidate_id, type, created_at, description, media_url, details,
        kafka_topic, kafka_partition, kafka_offset)
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
        $7::jsonb[], $8::text[], $9::integer[], $10::bigint[])
    ON CONFLICT DO NOTHING
    RETURNING e.exam_id, e.candidate_id, e.type, e.created_at
)
INSERT INTO proctoring_sessions AS s (
    exam_id, candidate_id, started_at, ended_at, last_event_at, flag_count, event_count)
SELECT exam_id, candidate_id,
       min(created_at) FILTER (WHERE type = 'STARTED'),
       max(created_at) FILTER (WHERE type = 'END_PROCTORING'),
       max(created_at),
       count(*) FILTER (WHERE type = ANY($11::text[])),
       count(*)
FROM ins
GROUP BY exam_id, candidate_id
ORDER BY exam_id, candidate_id
ON CONFLICT (exam_id, candidate_id) DO UPDATE SET
    started_at = LEAST(s.started_at, EXCLUDED.started_at),
    ended_at = GREATEST(s.ended_at, EXCLUDED.ended_at),
    last_event_at = GREATEST(s.last_event_at, EXCLUDED.last_event_at),
    flag_count = s.flag_count + EXCLUDED.flag_count,
    event_count = s.event_count + EXCLUDED.event_count,
    updated_at = now()
"""

_INSERT_SYSTEM_CHECKS = """
INSERT INTO system_checks (exam_id, candidate_id, checked_at, success, results, created_at)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::timestamptz[], $4::boolean[], $5::jsonb[], $6::timestamptz[])
ON CONFLICT DO NOTHING
"""

_FLAG_TYPES = sorted(FLAG_TYPES)


class ProctoringHandler:
    """Stores all 13 proctoring event types; one instance serves them all so that a batch is
    one statement, not thirteen."""

    name = "proctoring"

    async def apply(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        events: list[tuple[object, ...]] = []
        checks: list[tuple[object, ...]] = []
        for item in items:
            ev = item.event
            details = None
            if isinstance(ev, SystemCheckCompleted):
                check = ev.systemCheck
                results = to_json(check.data)
                details = to_json(check)
                checks.append(
                    (
                        ev.examId,
                        ev.candidateId,
                        check.timestamp,
                        check.success,
                        results,
                        ev.createdAt,
                    )
                )
            events.append(
                (
                    ev.examId,
                    ev.candidateId,
                    tag_of(ev),
                    ev.createdAt,
                    ev.description,
                    ev.media_url,
                    details,
                    item.topic,
                    item.partition,
                    item.offset,
                )
            )
        # Sorted by primary key so concurrent writers take row locks in one order.
        events.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        await conn.execute(_INSERT_EVENTS, *columns(events, 10), _FLAG_TYPES)
        if checks:
            checks.sort(key=lambda r: (r[0], r[1], r[2]))
            await conn.execute(_INSERT_SYSTEM_CHECKS, *columns(checks, 6))
