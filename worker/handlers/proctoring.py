"""Proctoring events: the event log, the per-session summary and the system checks.

An event's identity is (exam, candidate, type, createdAt), so a redelivery or a replay inserts
nothing. The session summary counts only the rows a batch actually added, which is what makes
`flag_count` count distinct events, and every summary column is an order-free aggregate (min,
max, sum), so batches may arrive in any split.

Two ways to the same rows (bench/sqlcost.py measures both):

The rows (`copy_row`, the COPY's column order) are built once per event: while the worker
decodes its records (`row`, then `prepare_rows` over the batch: one pass, no second walk over
the events), or from the items by `prepare` (a batch rebuilt after records were set aside).

* direct: one binary COPY of the batch straight into proctoring_events, under a savepoint
  when the transaction has one to fall back to (`Registers.guarded`); without, a duplicate
  loses the transaction, and the caller's next, guarded attempt goes staged.
  A batch is first reduced to the first event of each key, so when the COPY succeeds every
  row was new, and the summary is aggregated here, in Python, from exactly those rows. This is
  the steady state: the offsets in the same transaction mean a batch never repeats what an
  earlier one stored, unless the stream itself repeats events.
* staged: a text COPY into a temp table, then `INSERT ... ON CONFLICT DO NOTHING RETURNING`
  feeding the summary. Taken when the direct COPY met a unique violation (a replay, a
  producer's duplicate in another batch, another worker storing the same event), and after
  that until a staged batch finds no stored duplicates, so a replay does not pay for a failed
  COPY per batch. Also taken for a batch holding the first or last instant (see `_EXTREMES`).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Collection, Iterable, Sequence
from itertools import compress, starmap
from operator import itemgetter
from typing import Any, NamedTuple

import asyncpg
import structlog

from schemas.common import tag_of
from schemas.proctoring import FLAG_TYPES, PROCTORING_STRUCTS, SystemCheckCompleted
from worker.handlers.base import BatchHandler, Item, columns, to_json
from worker.handlers.merge import param, stamp, wire
from worker.handlers.registers import Registers

log = structlog.get_logger("worker")

# proctoring_events' columns as the worker writes them (ingested_at is the table's default).
_COLUMNS = (
    "exam_id",
    "candidate_id",
    "type",
    "created_at",
    "description",
    "media_url",
    "details",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
)

# The stage empties itself at commit (ON COMMIT DELETE ROWS: a truncate, far cheaper than
# deleting row by row). When a rejected batch is bisected under savepoints, a half that
# succeeded leaves its rows staged and the next half selects them again: they conflict,
# insert nothing and return nothing, so nothing counts twice.
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS stage_proctoring_events (
    exam_id text, candidate_id text, type text, created_us bigint, description text,
    media_url text, details jsonb, kafka_topic text, kafka_partition integer, kafka_offset bigint
) ON COMMIT DELETE ROWS
"""
_STAGE_COLUMNS = (*_COLUMNS[:3], "created_us", *_COLUMNS[4:])


def _session_update(at: int) -> str:
    """The sessions' upsert clause; parameter `at` is the transaction's time."""
    return f"""
ON CONFLICT (exam_id, candidate_id) DO UPDATE SET
    started_at = LEAST(s.started_at, EXCLUDED.started_at),
    ended_at = GREATEST(s.ended_at, EXCLUDED.ended_at),
    last_event_at = GREATEST(s.last_event_at, EXCLUDED.last_event_at),
    flag_count = s.flag_count + EXCLUDED.flag_count,
    event_count = s.event_count + EXCLUDED.event_count,
    {stamp(at)}
"""


_SESSION_COLUMNS = (
    "exam_id, candidate_id, started_at, ended_at, last_event_at, flag_count, event_count"
)

# The staged path's one statement; it returns how many events were new. (A data-modifying
# CTE runs to completion whether or not the outer query reads it.)
_INSERT_STAGED = f"""
WITH ins AS (
    INSERT INTO proctoring_events AS e ({", ".join(_COLUMNS)})
    -- Microseconds since the epoch: exact, and ~5x cheaper to format than an ISO string.
    -- Whole seconds and the rest separately: a float8 holds every second of years 1-9999
    -- exactly, but not every microsecond.
    SELECT exam_id, candidate_id, type,
           to_timestamp(created_us / 1000000) + (created_us % 1000000) * interval '1 microsecond',
           description, media_url, details, kafka_topic, kafka_partition, kafka_offset
    FROM pg_temp.stage_proctoring_events
    ON CONFLICT DO NOTHING
    RETURNING e.exam_id, e.candidate_id, e.type, e.created_at
), summary AS (
    INSERT INTO proctoring_sessions AS s ({_SESSION_COLUMNS})
    SELECT exam_id, candidate_id,
           min(created_at) FILTER (WHERE type = 'STARTED'),
           max(created_at) FILTER (WHERE type = 'END_PROCTORING'),
           max(created_at),
           count(*) FILTER (WHERE type = ANY($1::text[])),
           count(*)
    FROM ins
    GROUP BY exam_id, candidate_id
    ORDER BY exam_id, candidate_id
    {_session_update(2)}
)
SELECT count(*) FROM ins
"""

# The direct path's summary, aggregated in Python.
_UPSERT_SESSIONS = f"""
INSERT INTO proctoring_sessions AS s ({_SESSION_COLUMNS})
SELECT * FROM unnest(
    $1::text[], $2::text[], {param(3, "timestamptz")}, {param(4, "timestamptz")},
    {param(5, "timestamptz")}, $6::integer[], $7::integer[])
{_session_update(8)}
"""

# A check's own timestamp is a browser clock: it decides where the row goes, not whether the
# event is stored. Before `expired_before` retention has dropped the range (no partition is
# left there), so that row alone is not stored (docs/contract.md §7).
_INSERT_SYSTEM_CHECKS = """
INSERT INTO system_checks (exam_id, candidate_id, checked_at, success, results, created_at)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[]::timestamptz[], $4::boolean[], $5::jsonb[],
    $6::text[]::timestamptz[]
) AS c(exam_id, candidate_id, checked_at, success, results, created_at)
WHERE c.checked_at >= COALESCE((SELECT expired_before FROM retention_state), '-infinity')
ON CONFLICT DO NOTHING
"""

_FLAG_TYPES = sorted(FLAG_TYPES)
_TAGS = {cls: tag_of(cls) for cls in PROCTORING_STRUCTS}
# asyncpg's binary encoder turns these two valid instants into -infinity and infinity; a batch
# holding one goes the staged way, where instants travel as numbers.
_EXTREMES = frozenset(
    {dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC)}
)

# COPY text format: backslash, tab, newline and carriage return are escaped; \\N is NULL.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

Key = tuple[str, str, str, dt.datetime]
SessionKey = tuple[str, str]


def _copy_text(value: str) -> str:
    # translate() costs ~1.4 us a field; nearly every field needs nothing, which is cheap
    # to see (tab, newline and CR are not printable; backslash is).
    if value.isprintable() and "\\" not in value:
        return value
    return value.translate(_COPY_ESCAPES)


_AT = itemgetter(3)
_TAG = itemgetter(2)
_KEY = itemgetter(0, 1, 2, 3)
_IS_FLAG = frozenset(FLAG_TYPES).__contains__
# Per struct class: its tag, and whether it has the mediaUrl field (the media_url property,
# read per event, would cost a Python call each time).
_SHAPES = {cls: (_TAGS[cls], "mediaUrl" in cls.__struct_fields__) for cls in PROCTORING_STRUCTS}
_IS_CHECK = tag_of(SystemCheckCompleted).__eq__


def copy_row(ev: Any, topic: str, partition: int, offset: int) -> tuple[Any, ...]:
    """An event as a row of _COLUMNS."""
    cls = type(ev)
    tag, media = _SHAPES[cls]
    return (
        ev.examId,
        ev.candidateId,
        tag,
        ev.createdAt,
        ev.description,
        ev.mediaUrl if media else None,
        to_json(ev.systemCheck) if cls is SystemCheckCompleted else None,
        topic,
        partition,
        offset,
    )


def _check(ev: SystemCheckCompleted) -> tuple[object, ...]:
    """A system check's row of system_checks."""
    check = ev.systemCheck
    return (
        ev.examId,
        ev.candidateId,
        # As ISO text: see worker.handlers.merge.param (asyncpg's infinities).
        check.timestamp.isoformat(),
        check.success,
        to_json(check.data),
        ev.createdAt.isoformat(),
    )


def _checks(rows: Sequence[tuple[Any, ...]], items: Sequence[Item]) -> list[tuple[object, ...]]:
    """The system checks of the events whose rows are `rows` (parallel lists)."""
    return [_check(item.event) for item in compress(items, map(_IS_CHECK, map(_TAG, rows)))]


class Session:
    """One session's share of a batch: what its new events add to proctoring_sessions."""

    __slots__ = ("ended", "events", "flags", "last", "started")

    def __init__(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """From the session's rows (at least one); the aggregates run in C, not per row."""
        tags = list(map(_TAG, rows))
        self.events = len(rows)
        self.flags = sum(map(_IS_FLAG, tags))
        self.last: dt.datetime = max(map(_AT, rows))
        self.started: dt.datetime | None = None
        self.ended: dt.datetime | None = None
        if "STARTED" in tags:
            self.started = min(r[3] for r in rows if r[2] == "STARTED")
        if "END_PROCTORING" in tags:
            self.ended = max(r[3] for r in rows if r[2] == "END_PROCTORING")

    def merge(self, other: Session) -> None:
        self.events += other.events
        self.flags += other.flags
        self.last = max(self.last, other.last)
        for name, pick in (("started", min), ("ended", max)):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs if mine is None else pick(mine, theirs))


class Prepared(NamedTuple):
    rows: list[tuple[Any, ...]]  # _COLUMNS, the first event of each key, in stream order
    keys: Collection[Key]
    sessions: dict[SessionKey, Session]  # aggregated over `rows`
    checks: list[tuple[object, ...]]
    extreme: bool  # a row holds an instant of _EXTREMES


def _prepared(rows: Iterable[tuple[Any, ...]], checks: list[tuple[object, ...]]) -> Prepared:
    """Keep the first row of each key; aggregate the sessions over what is kept."""
    kept = rows if isinstance(rows, list) else list(rows)
    keys: Collection[Key] = set(map(_KEY, kept))  # built in C
    if len(keys) != len(kept):
        # An event repeated within the batch (rare): its first row only, in stream order.
        first: dict[Key, tuple[Any, ...]] = {}
        for row in kept:
            first.setdefault(row[:4], row)
        kept, keys = list(first.values()), first.keys()
    groups: dict[SessionKey, list[tuple[Any, ...]]] = {}
    for row in kept:
        key = row[:2]
        group = groups.get(key)
        if group is None:
            groups[key] = [row]
        else:
            group.append(row)
    return Prepared(
        kept,
        keys,
        {key: Session(group) for key, group in groups.items()},
        checks,
        not _EXTREMES.isdisjoint(map(_AT, kept)),
    )


def _stage_text(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """`rows` as COPY text for the stage (created_at as microseconds since the epoch)."""
    text = _copy_text
    lines = []
    for exam, candidate, tag, at, description, media, details, topic, partition, offset in rows:
        lines.append(
            f"{text(exam)}\t{text(candidate)}\t{tag}\t{(at - _EPOCH) // _MICROSECOND}\t"
            f"{text(description)}\t{_NULL if media is None else text(media)}\t"
            f"{_NULL if details is None else text(details)}\t"
            f"{text(topic)}\t{partition}\t{offset}\n"
        )
    return "".join(lines).encode("utf-8")


class ProctoringHandler(BatchHandler):
    """Stores all 13 proctoring event types; one instance serves them all so that a batch is
    one COPY, not thirteen statements."""

    name = "proctoring"

    def __init__(self) -> None:
        # Direct until a COPY meets a stored duplicate, then staged until a staged batch
        # finds none. Shared by the lanes: it only chooses the faster way, both are correct.
        self.direct = True

    # The row of one event, built while the worker decodes (worker/consumer.py).
    row = staticmethod(copy_row)

    def prepare(self, items: Sequence[Item]) -> Prepared:
        return self.prepare_rows(list(starmap(copy_row, items)), items)

    def prepare_rows(self, rows: list[tuple[Any, ...]], items: Sequence[Item]) -> Prepared:
        """`prepare` of `items` whose rows (`row`, in the same order) are already built."""
        return _prepared(rows, _checks(rows, items))

    def combine(self, parts: Sequence[Prepared]) -> Prepared:
        # Consumes `parts`: their Session objects are merged into, not copied.
        first, *rest = parts
        keys = set(first.keys)
        for part in rest:
            if not keys.isdisjoint(part.keys):
                # An event repeated across slices (rare): keep its first, aggregate again.
                rows = (row for p in parts for row in p.rows)
                return _prepared(rows, [c for p in parts for c in p.checks])
            keys.update(part.keys)
        sessions: dict[SessionKey, Session] = {}
        for part in parts:
            for key, session in part.sessions.items():
                mine = sessions.get(key)
                if mine is None:
                    sessions[key] = session
                else:
                    mine.merge(session)
        return Prepared(
            [row for p in parts for row in p.rows],
            keys,
            sessions,
            [c for p in parts for c in p.checks],
            any(p.extreme for p in parts),
        )

    async def write(
        self, conn: asyncpg.Connection, prepared: Prepared, registers: Registers
    ) -> None:
        if not prepared.rows:
            return
        if not conn.is_in_transaction():
            # The stage empties at commit: in autocommit mode it would be empty by the time
            # the INSERT reads it, and the batch would vanish without an error.
            raise RuntimeError("ProctoringHandler.write must run inside a transaction")
        at = registers.at
        stored = (
            self.direct
            and not prepared.extreme
            and await self._copy_direct(conn, prepared, at, registers.guarded)
        )
        if not stored:
            await self._insert_staged(conn, prepared, at)
        if prepared.checks:
            checks = sorted(prepared.checks, key=lambda r: (r[0], r[1], r[2]))
            await conn.execute(_INSERT_SYSTEM_CHECKS, *columns(checks, 6))

    async def _copy_direct(
        self, conn: asyncpg.Connection, prepared: Prepared, at: dt.datetime, guarded: bool
    ) -> bool:
        """COPY the rows into proctoring_events and add them to the sessions; False (nothing
        written) if one of them was already stored. Not `guarded`: without a savepoint of
        its own, and a stored duplicate is raised (the transaction is lost)."""
        try:
            if guarded:
                async with conn.transaction():
                    await self._copy(conn, prepared)
            else:
                await self._copy(conn, prepared)
        except asyncpg.UniqueViolationError:
            self.direct = False
            log.debug("proctoring batch repeats stored events: staged inserts until it stops")
            if not guarded:
                raise
            return False
        # Sorted by key, so that concurrent writers lock shared session rows in one order.
        ordered = sorted(prepared.sessions.items())
        keys = [k for k, _ in ordered]
        sessions = [s for _, s in ordered]
        await conn.execute(
            _UPSERT_SESSIONS,
            [k[0] for k in keys],
            [k[1] for k in keys],
            wire("timestamptz", [s.started for s in sessions]),
            wire("timestamptz", [s.ended for s in sessions]),
            wire("timestamptz", [s.last for s in sessions]),
            [s.flags for s in sessions],
            [s.events for s in sessions],
            at,
        )
        return True

    @staticmethod
    async def _copy(conn: asyncpg.Connection, prepared: Prepared) -> None:
        await conn.copy_records_to_table(
            "proctoring_events", records=prepared.rows, columns=_COLUMNS
        )

    async def _insert_staged(
        self, conn: asyncpg.Connection, prepared: Prepared, at: dt.datetime
    ) -> None:
        await conn.execute(_STAGE)
        await conn.copy_to_table(
            "stage_proctoring_events",
            source=io.BytesIO(_stage_text(prepared.rows)),
            columns=_STAGE_COLUMNS,
            schema_name="pg_temp",
            format="text",
        )
        new = await conn.fetchval(_INSERT_STAGED, _FLAG_TYPES, at)
        if new == len(prepared.rows):
            self.direct = True
