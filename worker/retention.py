"""Retention of the proctoring tables (docs/contract.md §7): their monthly partitions, the
horizon, and the ingest check that keeps a late record or a replay from writing back what
retention removed.

Layout (sql/005_time_partitions.sql): each of `proctoring_events` (by created_at) and
`system_checks` (by checked_at) is `<table>_far_past` [MINVALUE, A), one partition per UTC
month [A, B), `<table>_far_future` [B, MAXVALUE). Both tables keep the same bounds. Any instant
of years 1-9999 therefore has a partition, unless retention dropped its range (below).

Maintenance (`apply`, run by `worker run` every `INTERVAL_S` on one replica at a time, under an
advisory lock, and by `worker retention apply --execute`):

1. Ahead: months up to `AHEAD_MONTHS` past the current one exist before data needs them. They
   are carved out of far_future: detach it, create the months and a new far_future, re-insert
   its rows through the parent (rows route to their month), drop the detached table. Normal
   traffic never lands in far_future, so there is little to move.
2. Back, with `WORKER_PROCTORING_RETENTION_DAYS=N`: the months from the drop bound's month up
   to far_past's upper bound are carved out of far_past the same way, so that what is left of
   far_past is wholly past the horizon.
3. Drop: every partition whose whole range lies before the drop bound (now - N days - `GRACE`)
   is dropped (DDL: never a row DELETE on these tables). In the same transaction,
   `retention_state.expired_before` is raised to the highest upper bound dropped, and the
   sessions whose `last_event_at` is below it (all their events are gone) are deleted.

DDL takes the parent's ACCESS EXCLUSIVE lock; each step sets a short `lock_timeout`, so a step
that would queue behind a long transaction (and every insert behind itself) gives up and is
tried again at the next pass.

Ingest (`Horizon`, used by worker/commit.py before the handlers write): a proctoring record is
*expired* when an instant it would store (createdAt; a system check's timestamp too) lies
before `max(now - N days, expired_before)`. It stores nothing (no event, no session change, no
system check), is counted in `worker_records_expired_total{topic}`, and its offset commits.
Why a replay after a drop changes no table:

- every dropped row is below `expired_before`, which only grows and is read at start and at
  every pass; and a dropped partition's upper bound is at most now - N - GRACE, so a replica
  whose clock is behind by less than GRACE already treats its rows as expired: a record whose
  row was dropped is expired, so it neither re-inserts the row nor counts again in a kept
  session's `flag_count`;
- a deleted session has `last_event_at < expired_before`, so every one of its events is
  expired and none re-creates it;
- a record not expired finds its row (partitions past the horizon but not wholly are kept):
  the insert conflicts and adds nothing, as for any replay (docs/contract.md §5).

All replicas must run with the same `WORKER_PROCTORING_RETENTION_DAYS`; `expired_before`
protects what was dropped even from a replica with a longer horizon or none, from its next
pass on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from schemas.proctoring import ProctoringEvent, SystemCheckCompleted

log = structlog.get_logger("worker.retention")

UTC = dt.UTC
# Partitioned tables and their partition column.
TABLES: tuple[tuple[str, str], ...] = (
    ("proctoring_events", "created_at"),
    ("system_checks", "checked_at"),
)
FAR_PAST = "far_past"
FAR_FUTURE = "far_future"
# The current month and the next two exist at every pass: a pass that fails for weeks still
# leaves data a partition of its own.
AHEAD_MONTHS = 3
# A partition is dropped this long after it has wholly passed the horizon: a replica whose
# clock is behind by less still treats the rows of a dropped partition as expired.
GRACE = dt.timedelta(hours=1)
INTERVAL_S = 600.0
LOCK_TIMEOUT = "2s"
# "event-worker retention" hashed, like migrate.MIGRATION_LOCK_ID.
LOCK_ID = 0x6576_656E_7477_6B02


# -- time -------------------------------------------------------------------------------------


def month_floor(instant: dt.datetime) -> dt.datetime:
    """The start of `instant`'s UTC month."""
    t = instant.astimezone(UTC)
    return dt.datetime(t.year, t.month, 1, tzinfo=UTC)


def add_months(month: dt.datetime, n: int) -> dt.datetime:
    index = month.year * 12 + month.month - 1 + n
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def months(lo: dt.datetime, hi: dt.datetime) -> list[dt.datetime]:
    """The month starts in [lo, hi) (both month starts)."""
    out = []
    while lo < hi:
        out.append(lo)
        lo = add_months(lo, 1)
    return out


def drop_bound(days: int, now: dt.datetime) -> dt.datetime:
    """Partitions whose upper bound is at most this are dropped."""
    return now - dt.timedelta(days=days) - GRACE


# -- the ingest check ---------------------------------------------------------------------------


class Horizon:
    """Which records are past the horizon. `expired_before` is refreshed by `Maintenance`."""

    __slots__ = ("days", "expired_before")

    def __init__(self, days: int | None, expired_before: dt.datetime | None = None) -> None:
        self.days = days
        self.expired_before = expired_before

    def cutoff(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """Instants before this are expired; None: nothing is."""
        bound = self.expired_before
        if self.days is not None:
            by_age = (now or dt.datetime.now(UTC)) - dt.timedelta(days=self.days)
            bound = by_age if bound is None else max(bound, by_age)
        return bound

    @staticmethod
    def expired(event: Any, cutoff: dt.datetime) -> bool:
        """Whether a decoded event would store an instant before `cutoff`."""
        if not isinstance(event, ProctoringEvent):
            return False
        if event.createdAt < cutoff:
            return True
        return type(event) is SystemCheckCompleted and event.systemCheck.timestamp < cutoff

    def sift(
        self, items: Sequence[Any], now: dt.datetime | None = None
    ) -> tuple[list[Any], list[Any]]:
        """`items` (anything with `.event`) split into (kept, expired), each in order."""
        cutoff = self.cutoff(now)
        if cutoff is None:
            return items if isinstance(items, list) else list(items), []
        kept: list[Any] = []
        gone: list[Any] = []
        expired = self.expired
        for item in items:
            (gone if expired(item.event, cutoff) else kept).append(item)
        return kept, gone


async def read_expired_before(conn: asyncpg.Connection) -> dt.datetime | None:
    return await conn.fetchval("SELECT expired_before FROM retention_state")


# -- the catalogue ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    table: str
    name: str
    lo: dt.datetime | None  # None: MINVALUE
    hi: dt.datetime | None  # None: MAXVALUE
    rows: int | None = None  # counted only when asked

    @property
    def kind(self) -> str:
        for kind in (FAR_PAST, FAR_FUTURE):
            if self.name == f"{self.table}_{kind}":
                return kind
        return "month"

    def past(self, bound: dt.datetime | None) -> bool:
        """Wholly before `bound`."""
        return bound is not None and self.hi is not None and self.hi <= bound


_PARTITIONS = r"""
SELECT c.relname AS name,
       NULLIF(btrim(b[1], ''''), 'MINVALUE')::timestamptz AS lo,
       NULLIF(btrim(b[2], ''''), 'MAXVALUE')::timestamptz AS hi
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid AND c.relkind = 'r',
LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \((.+)\) TO \((.+)\)') AS b
WHERE i.inhparent = $1::regclass
ORDER BY lo NULLS FIRST
"""


async def partitions(conn: asyncpg.Connection, table: str, rows: bool = False) -> list[Partition]:
    """The partitions of `table`, oldest first; with their exact row counts if `rows`."""
    found = [
        Partition(table, r["name"], r["lo"], r["hi"]) for r in await conn.fetch(_PARTITIONS, table)
    ]
    if not rows:
        return found
    counted = []
    for p in found:
        n = await conn.fetchval(f'SELECT count(*) FROM "{p.name}"')
        counted.append(Partition(p.table, p.name, p.lo, p.hi, n))
    return counted


# -- the plan -----------------------------------------------------------------------------------


@dataclass
class TablePlan:
    table: str
    column: str
    ahead: list[dt.datetime] = field(default_factory=list)  # months carved from far_future
    back: list[dt.datetime] = field(default_factory=list)  # months carved from far_past
    drop: list[Partition] = field(default_factory=list)


@dataclass
class Plan:
    now: dt.datetime
    days: int | None
    bound: dt.datetime | None  # partitions wholly before it are dropped
    expired_before: dt.datetime | None  # stored now
    tables: list[TablePlan]
    sessions: int = 0  # sessions to delete (counted by `plan`)

    @property
    def new_expired_before(self) -> dt.datetime | None:
        highs = [p.hi for t in self.tables for p in t.drop if p.hi is not None]
        candidates = [*highs, *([self.expired_before] if self.expired_before else [])]
        return max(candidates) if candidates else None

    @property
    def empty(self) -> bool:
        return not any(t.ahead or t.back or t.drop for t in self.tables)


def _table_plan(
    table: str, column: str, parts: list[Partition], now: dt.datetime, bound: dt.datetime | None
) -> TablePlan:
    plan = TablePlan(table, column)
    by_kind = {p.kind: p for p in parts if p.kind != "month"}
    future = by_kind.get(FAR_FUTURE)
    end = add_months(month_floor(now), AHEAD_MONTHS)
    if future is not None and future.lo is not None and future.lo < end:
        plan.ahead = months(future.lo, end)
    past = by_kind.get(FAR_PAST)
    if bound is not None and past is not None and past.hi is not None and past.hi > bound:
        # What stays in far_past is wholly before the bound, so it is dropped below.
        plan.back = months(month_floor(bound), past.hi)
    # After carving, far_past ends at the bound's month and the new months start there.
    for p in parts:
        hi = month_floor(bound) if p.kind == FAR_PAST and plan.back and bound else p.hi
        if p.kind == FAR_FUTURE:
            continue
        if Partition(p.table, p.name, p.lo, hi).past(bound):
            plan.drop.append(Partition(p.table, p.name, p.lo, hi))
    return plan


async def plan(conn: asyncpg.Connection, days: int | None, now: dt.datetime | None = None) -> Plan:
    """What `apply` would do now."""
    now = now or dt.datetime.now(UTC)
    bound = drop_bound(days, now) if days is not None else None
    tables = [
        _table_plan(table, column, await partitions(conn, table), now, bound)
        for table, column in TABLES
    ]
    result = Plan(now, days, bound, await read_expired_before(conn), tables)
    new = result.new_expired_before
    if new is not None and new != result.expired_before:
        result.sessions = await conn.fetchval(
            "SELECT count(*) FROM proctoring_sessions WHERE last_event_at < $1", new
        )
    return result


# -- applying -----------------------------------------------------------------------------------


async def _carve(
    conn: asyncpg.Connection, table: str, kind: str, new_months: list[dt.datetime]
) -> None:
    """Replace the catch-all `kind` of `table` by `new_months` and a narrower catch-all, its
    rows re-inserted through the parent (one transaction, the caller's)."""
    name = f"{table}_{kind}"
    carving = f"{name}_carving"
    await conn.execute(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"')
    await conn.execute(f'ALTER TABLE "{name}" RENAME TO "{carving}"')
    for month in new_months:
        await conn.fetchval("SELECT worker_month_partition($1, $2)", table, month)
    if kind == FAR_PAST:
        bound = f"FROM (MINVALUE) TO ('{new_months[0].isoformat()}')"
    else:
        bound = f"FROM ('{add_months(new_months[-1], 1).isoformat()}') TO (MAXVALUE)"
    await conn.execute(f'CREATE TABLE "{name}" PARTITION OF "{table}" FOR VALUES {bound}')
    moved = await conn.execute(f'INSERT INTO "{table}" SELECT * FROM "{carving}"')
    await conn.execute(f'DROP TABLE "{carving}"')
    log.info("partitions carved", table=table, catch_all=kind, months=len(new_months), rows=moved)


async def apply(conn: asyncpg.Connection, days: int | None, now: dt.datetime | None = None) -> Plan:
    """Create the partitions ahead, carve and drop what is past the horizon. The caller holds
    `LOCK_ID`. Each step is its own transaction; a step that fails leaves the earlier ones done."""
    result = await plan(conn, days, now)
    for t in result.tables:
        for kind, new_months in ((FAR_FUTURE, t.ahead), (FAR_PAST, t.back)):
            if new_months:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                    await _carve(conn, t.table, kind, new_months)
    drops = [p for t in result.tables for p in t.drop]
    if drops:
        new = result.new_expired_before
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute("DROP TABLE " + ", ".join(f'"{p.name}"' for p in drops))
            await conn.execute(
                """
                INSERT INTO retention_state (expired_before) VALUES ($1)
                ON CONFLICT (singleton) DO UPDATE
                SET expired_before = GREATEST(
                        retention_state.expired_before, EXCLUDED.expired_before),
                    updated_at = now()
                """,
                new,
            )
            deleted = await conn.execute(
                "DELETE FROM proctoring_sessions WHERE last_event_at < $1", new
            )
        log.info(
            "partitions dropped",
            partitions=[p.name for p in drops],
            expired_before=new.isoformat() if new else None,
            sessions=deleted,
        )
    return result


async def apply_locked(
    conn: asyncpg.Connection, days: int | None, wait: bool, now: dt.datetime | None = None
) -> Plan | None:
    """`apply` under `LOCK_ID`; None if another replica holds it and not `wait`."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_ID):
        return None
    try:
        return await apply(conn, days, now)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)


# -- inside `worker run` ------------------------------------------------------------------------


class Maintenance:
    """Runs `apply` every `INTERVAL_S` (one replica at a time) and keeps `horizon` current."""

    def __init__(
        self, days: int | None, pool: asyncpg.Pool, interval_s: float = INTERVAL_S
    ) -> None:
        self.horizon = Horizon(days)
        self._pool = pool
        self._interval_s = interval_s

    async def load(self) -> None:
        """Read what was dropped before: called before the first batch."""
        async with self._pool.acquire() as conn:
            self.horizon.expired_before = await read_expired_before(conn)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed pass is tried again at the next one
                log.warning("retention maintenance failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)

    async def once(self) -> Plan | None:
        async with self._pool.acquire() as conn:
            done = await apply_locked(conn, self.horizon.days, wait=False)
            self.horizon.expired_before = await read_expired_before(conn)
        return done


def describe_months(items: Iterable[dt.datetime]) -> str:
    return ", ".join(m.strftime("%Y-%m") for m in items)
