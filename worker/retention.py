"""Retention maintenance (docs/contract.md §7): the monthly partitions of the proctoring
tables, dropping what is past the horizon, and deleting the sessions and interview rows that
go with it. Which records are past the horizon at ingest, and the ages of interview rows, are
worker/horizon.py's.

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
3. Sessions: when partitions are to be dropped, the sessions whose `last_event_at` is below
   the highest upper bound to drop (all their events are in those partitions) are deleted
   first, by a sweep: `SWEEP_ROWS` entries of the primary key at a time, each chunk its own
   short transaction that locks no partitioned table.
4. Drop: every partition whose whole range lies before the drop bound (now - N days - `GRACE`)
   is dropped (DDL: never a row DELETE on these tables), one month at a time, oldest first:
   the month's partitions of both tables, and `retention_state.expired_before` raised to its
   end, in one short transaction each, the only moments inserts wait for retention. A DROP's
   lock request waits for every transaction in flight on the table and queues every new insert
   behind itself meanwhile, so it gives up after `DROP_LOCK_TIMEOUT` and tries again: no insert
   waits much longer than that and one month's DROP.
5. Interview rows, with `WORKER_INTERVIEW_RETENTION_DAYS=N`, once a day
   (`INTERVIEW_SWEEP_EVERY`): the rows of the aged tables whose `last_event_at` (without one:
   whose `updated_at`) is before now - N days - `GRACE` are deleted by a sweep, and
   `interview_expired_before` is raised to that bound.

Neither sweep goes through an index on the column that ages the rows: those rows are
rewritten by the batches that touch them (a session by nearly every batch), and an index on
that column would end their HOT updates (sql/002) and cost ingest a write per index per row.
A sweep costs the pass a scan of the table instead, once a month for the sessions and once a
day for the interview tables, in short transactions that hold nothing ingest waits for.

Why deleting before recording is safe, for sessions (3 before 4) and interview rows (5): a
pass that stops in between leaves the partitions (or the bound) unrecorded, and the next pass
computes the same or a later bound and finishes. Meanwhile nothing comes back: a record whose
rows are being deleted is older than now - N days by the same clock that chose the bound, so it
is expired at ingest already; and a session is deleted only when none of its stored events is
at or after the bound, so a new event that is not expired creates a fresh session, exactly as
after the drop. Recording first instead would leave a window in which such an event merges
into a session whose older events were already dropped.

DDL takes the parent's ACCESS EXCLUSIVE lock; each step sets a short `lock_timeout`, so a step
that would queue behind a long transaction (and every insert behind itself) gives up and is
tried again at the next pass.

All replicas must run with the same retention settings; `expired_before` and
`interview_expired_before` protect what was removed even from a replica with a longer horizon
or none, from its next pass on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import asyncpg
import structlog

from worker.horizon import AGED_TABLES, Horizon, Span

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
# Primary-key entries one delete transaction of a sweep looks at.
SWEEP_ROWS = 10_000
# A pass of `worker run` sweeps the interview tables (a scan of each) once this much time has
# moved their bound on; `worker retention apply --execute` sweeps them at once.
INTERVIEW_SWEEP_EVERY = dt.timedelta(days=1)
# The drop waits this long for the transactions in flight (inserts queue behind it meanwhile),
# then lets them pass and tries again after a pause, this many times in a pass.
DROP_LOCK_TIMEOUT = "50ms"
DROP_ATTEMPTS = 60
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
    """What retention removes is before this: partitions whose upper bound is at most this,
    interview rows older than it."""
    return now - dt.timedelta(days=days) - GRACE


# -- what was removed ---------------------------------------------------------------------------


class Removed(NamedTuple):
    """`retention_state`: everything before these instants was removed (None: nothing yet)."""

    proctoring: dt.datetime | None = None
    interview: dt.datetime | None = None


async def read_removed(conn: asyncpg.Connection) -> Removed:
    row = await conn.fetchrow(
        "SELECT expired_before, interview_expired_before FROM retention_state"
    )
    return Removed() if row is None else Removed(*row)


async def read_expired_before(conn: asyncpg.Connection) -> dt.datetime | None:
    return (await read_removed(conn)).proctoring


def _record_removed(column: str) -> str:
    """Raise one column of `retention_state` to $1 (it never moves back)."""
    return f"""
INSERT INTO retention_state ({column}) VALUES ($1)
ON CONFLICT (singleton) DO UPDATE
SET {column} = GREATEST(retention_state.{column}, EXCLUDED.{column}), updated_at = now()
"""


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
class InterviewPlan:
    days: int | None
    bound: dt.datetime | None  # rows whose age is before it are deleted
    expired_before: dt.datetime | None  # stored now
    rows: dict[str, int] = field(default_factory=dict)  # counted by `plan`, deleted by `apply`


@dataclass
class Plan:
    now: dt.datetime
    days: int | None
    bound: dt.datetime | None  # partitions wholly before it are dropped
    expired_before: dt.datetime | None  # stored now
    tables: list[TablePlan]
    interview: InterviewPlan
    sessions: int = 0  # counted by `plan`, deleted by `apply`

    @property
    def new_expired_before(self) -> dt.datetime | None:
        highs = [p.hi for t in self.tables for p in t.drop if p.hi is not None]
        candidates = [*highs, *([self.expired_before] if self.expired_before else [])]
        return max(candidates) if candidates else None

    @property
    def empty(self) -> bool:
        partitions = any(t.ahead or t.back or t.drop for t in self.tables)
        return not partitions and not any(self.interview.rows.values())


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


async def plan(
    conn: asyncpg.Connection,
    days: int | None,
    now: dt.datetime | None = None,
    interview_days: int | None = None,
    count: bool = True,
) -> Plan:
    """What `apply` would do now; with `count`, how many sessions and interview rows it would
    delete."""
    now = now or dt.datetime.now(UTC)
    bound = drop_bound(days, now) if days is not None else None
    tables = [
        _table_plan(table, column, await partitions(conn, table), now, bound)
        for table, column in TABLES
    ]
    removed = await read_removed(conn)
    interview = InterviewPlan(
        interview_days,
        drop_bound(interview_days, now) if interview_days is not None else None,
        removed.interview,
    )
    result = Plan(now, days, bound, removed.proctoring, tables, interview)
    if not count:
        return result
    new = result.new_expired_before
    if new is not None and any(t.drop for t in tables):
        result.sessions = await conn.fetchval(
            "SELECT count(*) FROM proctoring_sessions WHERE last_event_at < $1", new
        )
    if interview.bound is not None:
        for table in AGED_TABLES:
            interview.rows[table.name] = await conn.fetchval(
                f"SELECT count(*) FROM {table.name} AS t WHERE {_AGE_OLDER}", interview.bound
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


@contextlib.asynccontextmanager
async def _step(conn: asyncpg.Connection, lock_timeout: str | None = None) -> AsyncIterator[None]:
    """One short transaction of a pass, which gives up rather than queue behind a long one.
    READ COMMITTED whatever the database's default: a sweep that waited for a batch re-checks
    the row the batch changed (and keeps it if it is current now) instead of failing."""
    async with conn.transaction(isolation="read_committed"):
        await conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout or LOCK_TIMEOUT}'")
        yield


def _count(status: str) -> int:
    """The row count of a command status such as `DELETE 12`."""
    return int(status.rsplit(" ", 1)[-1])


# What makes a row older than the bound ($1 here, `bound` in a sweep): a session by its last
# event; an interview row by its age, or, without one (written before sql/009 or by an earlier
# release), by when the worker last wrote it. `t` is the row.
_SESSION_OLDER = "t.last_event_at < {bound}"
_AGE_OLDER = "COALESCE(t.last_event_at, t.updated_at) < {bound}"


def _sweep_sql(table: str, keys: tuple[str, ...], older: str) -> str:
    """A chunk of `table`'s primary key `keys` after ($1, ...): its rows `older` than the
    bound deleted, and how many were looked at and where the next chunk starts. Every id is
    non-empty (docs/contract.md §3), so a key of empty strings precedes them all."""
    n = len(keys)
    cols = ", ".join(keys)
    backwards = ", ".join(f"{k} DESC" for k in keys)
    after = ", ".join(f"${i}::text" for i in range(1, n + 1))
    same = " AND ".join(f"t.{k} = c.{k}" for k in keys)
    return f"""
WITH chunk AS MATERIALIZED (
    SELECT {cols} FROM {table} WHERE ({cols}) > ({after}) ORDER BY {cols} LIMIT ${n + 1}
), gone AS (
    DELETE FROM {table} AS t USING chunk AS c
    WHERE {same} AND {older.format(bound=f"${n + 2}")}
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM chunk) AS scanned, last.*
FROM (SELECT 1) AS one
LEFT JOIN (SELECT {cols} FROM chunk ORDER BY {backwards} LIMIT 1) AS last ON true
"""


async def _sweep(
    conn: asyncpg.Connection, table: str, keys: tuple[str, ...], older: str, bound: dt.datetime
) -> int:
    """Delete the rows of `table` `older` than `bound`, walking its primary key `SWEEP_ROWS`
    entries a transaction (no index on what ages them: module docstring); how many."""
    sql, after, deleted = _sweep_sql(table, keys, older), ("",) * len(keys), 0
    while True:
        async with _step(conn):
            row = await conn.fetchrow(sql, *after, SWEEP_ROWS, bound)
        deleted += row["deleted"]
        if row["scanned"] < SWEEP_ROWS:
            return deleted
        after = tuple(row[k] for k in keys)


async def _drop(conn: asyncpg.Connection, drops: list[Partition]) -> None:
    """Drop the partitions one range at a time, oldest first: the range's partitions of both
    tables and the record of what is now dropped in one short transaction each."""
    ranges: dict[dt.datetime, list[Partition]] = {}
    for p in drops:
        assert p.hi is not None  # only partitions wholly before the bound are dropped
        ranges.setdefault(p.hi, []).append(p)
    for hi in sorted(ranges):
        await _drop_range(conn, ranges[hi], hi)


async def _drop_range(conn: asyncpg.Connection, drops: list[Partition], hi: dt.datetime) -> None:
    """Drop one range's partitions and record everything before `hi` dropped, in one short
    transaction. While the DROP waits for the transactions in flight on its tables, every
    insert queues behind it: it waits `DROP_LOCK_TIMEOUT` at most, lets them pass, and tries
    again, up to `DROP_ATTEMPTS` times."""
    for attempt in range(1, DROP_ATTEMPTS + 1):
        try:
            async with _step(conn, DROP_LOCK_TIMEOUT):
                await conn.execute("DROP TABLE " + ", ".join(f'"{p.name}"' for p in drops))
                await conn.execute(_record_removed("expired_before"), hi)
            return
        except asyncpg.LockNotAvailableError:
            if attempt == DROP_ATTEMPTS:
                raise
            await asyncio.sleep(random.uniform(0.05, 0.25))


async def _age_interviews(conn: asyncpg.Connection, bound: dt.datetime) -> dict[str, int]:
    """Delete the rows of the aged tables older than `bound`; the rows deleted per table."""
    return {t.name: await _sweep(conn, t.name, (t.key,), _AGE_OLDER, bound) for t in AGED_TABLES}


async def apply(
    conn: asyncpg.Connection,
    days: int | None,
    now: dt.datetime | None = None,
    interview_days: int | None = None,
    interview_every: dt.timedelta | None = None,
) -> Plan:
    """Create the partitions ahead, carve and drop what is past the horizon, delete the
    sessions and interview rows that go with it (the latter only if the last sweep of them
    is `interview_every` old; None: now). The caller holds `LOCK_ID`. Each step is its own
    transaction; a step that fails leaves the earlier ones done (module docstring)."""
    result = await plan(conn, days, now, interview_days, count=False)
    for t in result.tables:
        for kind, new_months in ((FAR_FUTURE, t.ahead), (FAR_PAST, t.back)):
            if new_months:
                async with _step(conn):
                    await _carve(conn, t.table, kind, new_months)
    drops = [p for t in result.tables for p in t.drop]
    new = result.new_expired_before
    if drops and new is not None:
        keys = ("exam_id", "candidate_id")
        result.sessions = await _sweep(conn, "proctoring_sessions", keys, _SESSION_OLDER, new)
        await _drop(conn, drops)
        log.info(
            "partitions dropped",
            partitions=[p.name for p in drops],
            expired_before=new.isoformat(),
            sessions=result.sessions,
        )
    bound, swept = result.interview.bound, result.interview.expired_before
    if bound is not None and (
        swept is None or interview_every is None or bound >= swept + interview_every
    ):
        result.interview.rows = await _age_interviews(conn, bound)
        await conn.execute(_record_removed("interview_expired_before"), bound)
        if any(result.interview.rows.values()):
            log.info("interview rows deleted", before=bound.isoformat(), **result.interview.rows)
    return result


async def apply_locked(
    conn: asyncpg.Connection,
    days: int | None,
    wait: bool,
    now: dt.datetime | None = None,
    interview_days: int | None = None,
    interview_every: dt.timedelta | None = None,
) -> Plan | None:
    """`apply` under `LOCK_ID`; None if another replica holds it and not `wait`."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_ID):
        return None
    try:
        return await apply(conn, days, now, interview_days, interview_every)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)


# -- inside `worker run` ------------------------------------------------------------------------


class Maintenance:
    """Runs `apply` every `INTERVAL_S` (one replica at a time) and keeps `horizon` current."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        days: int | None,
        interview_days: int | None = None,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.horizon = Horizon(Span(days), Span(interview_days))
        self._pool = pool
        self._interval_s = interval_s

    async def load(self) -> None:
        """Read what was removed before: called before the first batch."""
        async with self._pool.acquire() as conn:
            self._learn(await read_removed(conn))

    def _learn(self, removed: Removed) -> None:
        self.horizon.proctoring.expired_before = removed.proctoring
        self.horizon.interview.expired_before = removed.interview

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
        h = self.horizon
        async with self._pool.acquire() as conn:
            done = await apply_locked(
                conn,
                h.proctoring.days,
                wait=False,
                interview_days=h.interview.days,
                interview_every=INTERVIEW_SWEEP_EVERY,
            )
            self._learn(await read_removed(conn))
        return done


def describe_months(items: Iterable[dt.datetime]) -> str:
    return ", ".join(m.strftime("%Y-%m") for m in items)
