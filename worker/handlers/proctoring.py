"""Proctoring events: the event log, the per-session summary and the system checks.

An event's identity is (exam, candidate, type, createdAt), so a redelivery or a replay inserts
nothing. The session summary is fed only from the rows the insert actually added (RETURNING),
which is what makes `flag_count` count distinct events, and every summary column is an
order-free aggregate (min, max, sum), so batches may arrive in any split.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from schemas.common import tag_of
from schemas.proctoring import FLAG_TYPES, PROCTORING_STRUCTS, SystemCheckCompleted
from worker.handlers.base import BatchHandler, Item, columns, to_json
from worker.handlers.people import Registers

# Rows arrive by COPY into a per-session staging table (text format, built while the previous
# batch commits), then move in one statement. The stage empties itself at commit (ON COMMIT
# DELETE ROWS: a truncate, far cheaper than deleting row by row). When a rejected batch is
# bisected under savepoints, a half that succeeded leaves its rows staged and the next half
# selects them again: they conflict, insert nothing and return nothing, so nothing counts twice.
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS stage_proctoring_events (
    exam_id text, candidate_id text, type text, created_us bigint, description text,
    media_url text, details jsonb, kafka_topic text, kafka_partition integer, kafka_offset bigint
) ON COMMIT DELETE ROWS
"""
_STAGE_COLUMNS = (
    "exam_id",
    "candidate_id",
    "type",
    "created_us",
    "description",
    "media_url",
    "details",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)

_INSERT_EVENTS = """
WITH ins AS (
    INSERT INTO proctoring_events AS e (
        exam_id, candidate_id, type, created_at, description, media_url, details,
        kafka_topic, kafka_partition, kafka_offset)
    -- Microseconds since the epoch: exact, and ~5x cheaper to format than an ISO string.
    -- Whole seconds and the rest separately: a float8 holds every second of years 1-9999
    -- exactly, but not every microsecond.
    SELECT exam_id, candidate_id, type,
           to_timestamp(created_us / 1000000) + (created_us % 1000000) * interval '1 microsecond',
           description, media_url, details, kafka_topic, kafka_partition, kafka_offset
    FROM pg_temp.stage_proctoring_events
    ON CONFLICT DO NOTHING
    RETURNING e.exam_id, e.candidate_id, e.type, e.created_at
)
INSERT INTO proctoring_sessions AS s (
    exam_id, candidate_id, started_at, ended_at, last_event_at, flag_count, event_count)
SELECT exam_id, candidate_id,
       min(created_at) FILTER (WHERE type = 'STARTED'),
       max(created_at) FILTER (WHERE type = 'END_PROCTORING'),
       max(created_at),
       count(*) FILTER (WHERE type = ANY($1::text[])),
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
    $1::text[], $2::text[], $3::text[]::timestamptz[], $4::boolean[], $5::jsonb[],
    $6::text[]::timestamptz[])
ON CONFLICT DO NOTHING
"""

_FLAG_TYPES = sorted(FLAG_TYPES)


# COPY text format: backslash, tab, newline and carriage return are escaped; \\N is NULL.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"
_TAGS = {cls: tag_of(cls) for cls in PROCTORING_STRUCTS}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _copy_text(value: str) -> str:
    # translate() costs ~1.4 us a field; nearly every field needs nothing, which is cheap
    # to see (tab, newline and CR are not printable; backslash is).
    if value.isprintable() and "\\" not in value:
        return value
    return value.translate(_COPY_ESCAPES)


class Prepared(NamedTuple):
    copy: bytes
    checks: list[tuple[object, ...]]


class ProctoringHandler(BatchHandler):
    """Stores all 13 proctoring event types; one instance serves them all so that a batch is
    one statement, not thirteen."""

    name = "proctoring"

    def prepare(self, items: Sequence[Item]) -> Prepared:
        lines: list[str] = []
        checks: list[tuple[object, ...]] = []
        text = _copy_text
        tags = _TAGS
        topics: dict[str, str] = {}
        for ev, topic, partition, offset in items:
            details = _NULL
            if type(ev) is SystemCheckCompleted:
                check = ev.systemCheck
                details = text(to_json(check))
                checks.append(
                    (
                        ev.examId,
                        ev.candidateId,
                        # As ISO text: see worker.handlers.merge.param (asyncpg's infinities).
                        check.timestamp.isoformat(),
                        check.success,
                        to_json(check.data),
                        ev.createdAt.isoformat(),
                    )
                )
            media = ev.media_url
            topic_text = topics.get(topic)
            if topic_text is None:
                topic_text = topics[topic] = text(topic)
            lines.append(
                f"{text(ev.examId)}\t{text(ev.candidateId)}\t{tags[type(ev)]}\t"
                f"{(ev.createdAt - _EPOCH) // _MICROSECOND}\t{text(ev.description)}\t"
                f"{_NULL if media is None else text(media)}\t{details}\t"
                f"{topic_text}\t{partition}\t{offset}\n"
            )
        return Prepared("".join(lines).encode("utf-8"), checks)

    def combine(self, parts: Sequence[Prepared]) -> Prepared:
        return Prepared(b"".join(p.copy for p in parts), [c for p in parts for c in p.checks])

    async def write(
        self, conn: asyncpg.Connection, prepared: Prepared, registers: Registers
    ) -> None:
        if not prepared.copy:
            return
        if not conn.is_in_transaction():
            # The stage empties at commit: in autocommit mode it would be empty by the time
            # the INSERT reads it, and the batch would vanish without an error.
            raise RuntimeError("ProctoringHandler.write must run inside a transaction")
        await conn.execute(_STAGE)
        await conn.copy_to_table(
            "stage_proctoring_events",
            source=io.BytesIO(prepared.copy),
            columns=_STAGE_COLUMNS,
            schema_name="pg_temp",
            format="text",
        )
        await conn.execute(_INSERT_EVENTS, _FLAG_TYPES)
        if prepared.checks:
            checks = sorted(prepared.checks, key=lambda r: (r[0], r[1], r[2]))
            await conn.execute(_INSERT_SYSTEM_CHECKS, *columns(checks, 6))
