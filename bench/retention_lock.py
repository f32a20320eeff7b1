"""How long a retention pass blocks ingest, with millions of sessions: this tree's `apply`
against a754101's statement sequence, on copies of one filled database, alternated.

    .venv/bin/python -m bench.retention_lock                  # 4 000 000 sessions, embedded PG
    .venv/bin/python -m bench.retention_lock --sessions 400000 --rounds 1 --database-url ...

A database is filled once: month partitions from 420 days back (a first pass with a 420-day
horizon), `--sessions` sessions whose last events spread evenly over 400 days, and `--events`
proctoring events over the same 400 days; then each round copies it (`CREATE DATABASE ...
TEMPLATE`) for each variant and runs a 90-day pass on the copy while `--writers` writers
insert continuously. A writer's transaction is a batch as the worker commits one: `--batch`
events of the current month (50 by default) and the upsert of their sessions. Printed per
run: the longest time a writer waited for a lock while the pass ran (pg_locks, sampled every
millisecond or so: what retention blocked), the longest writer transaction then and before
the pass (on a shared machine the wall time has the other work's noise in it), the pass's
duration, and what it removed.

The variants: `a754101` is that commit's drop step (worker/retention.py `apply`): one
transaction that drops the partitions, records `expired_before` and deletes the sessions below
it with one `DELETE` (a scan of every session), all under the partitions' ACCESS EXCLUSIVE
lock. `this tree` is `worker.retention.apply_locked` as `worker run` calls it. The partitions
the two drop are the same (no month needs carving: the copies start with months only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from bench.migration_lock import database
from worker import retention
from worker.migrate import migrate

DAYS = 90
SPREAD_DAYS = 400

_FILL_SESSIONS = """
INSERT INTO proctoring_sessions
    (exam_id, candidate_id, started_at, ended_at, last_event_at, flag_count, event_count)
SELECT 'exam-' || (g % 40000), 'cand-' || g, at - interval '1 hour', at, at, g % 7, 20
FROM (SELECT g, now() - (g % $2) * interval '1 day' - (g % 86400) * interval '1 second' AS at
      FROM generate_series(1, $1) AS g) AS s
"""
_FILL_EVENTS = """
INSERT INTO proctoring_events
    (exam_id, candidate_id, type, created_at, description, kafka_topic, kafka_partition,
     kafka_offset)
SELECT 'exam-' || (g % 40000), 'cand-' || (g * 7 % $3), 'TAB_NOT_FOCUS',
       now() - (g % $2) * interval '1 day' - (g % 86400) * interval '1 second',
       'Candidate switched tab', 'proctoring.events', g % 12, g
FROM generate_series(1, $1) AS g
"""
# A writer's transaction: $3 events of now and their sessions, as a worker batch writes them.
_WRITE_EVENTS = """
INSERT INTO proctoring_events
    (exam_id, candidate_id, type, created_at, description, kafka_topic, kafka_partition,
     kafka_offset)
SELECT 'live-' || $1::int, 'cand-' || g, 'TAB_NOT_FOCUS', clock_timestamp(), '', 'bench',
       $1::int, $2::bigint + g
FROM generate_series(1, $3) AS g
"""
_WRITE_SESSIONS = """
INSERT INTO proctoring_sessions AS s
    (exam_id, candidate_id, started_at, last_event_at, flag_count, event_count)
SELECT 'live-' || $1::int, 'cand-' || g, now(), now(), 1, 1 FROM generate_series(1, $2) AS g
ON CONFLICT (exam_id, candidate_id) DO UPDATE SET
    last_event_at = EXCLUDED.last_event_at, flag_count = s.flag_count + 1,
    event_count = s.event_count + 1, updated_at = now()
"""

# a754101's worker/retention.py `apply`, its drop step, statement for statement.
_A754101_RECORD = """
INSERT INTO retention_state (expired_before) VALUES ($1)
ON CONFLICT (singleton) DO UPDATE
SET expired_before = GREATEST(
        retention_state.expired_before, EXCLUDED.expired_before),
    updated_at = now()
"""


async def a754101_apply(conn: asyncpg.Connection, days: int) -> str:
    plan = await retention.plan(conn, days, count=False)
    drops = [p for t in plan.tables for p in t.drop]
    assert drops and not any(t.back for t in plan.tables), "the copy needs no carving"
    new = plan.new_expired_before
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{retention.LOCK_TIMEOUT}'")
        await conn.execute("DROP TABLE " + ", ".join(f'"{p.name}"' for p in drops))
        await conn.execute(_A754101_RECORD, new)
        deleted = await conn.execute(
            "DELETE FROM proctoring_sessions WHERE last_event_at < $1", new
        )
    return f"{len(drops)} partitions, {deleted.split()[-1]} sessions"


async def this_tree_apply(conn: asyncpg.Connection, days: int) -> str:
    done = await retention.apply_locked(conn, days, wait=True)
    assert done is not None
    return f"{sum(len(t.drop) for t in done.tables)} partitions, {done.sessions} sessions"


VARIANTS: dict[str, Callable[[asyncpg.Connection, int], Awaitable[str]]] = {
    "a754101": a754101_apply,
    "this tree": this_tree_apply,
}


@dataclass
class Writer:
    """One writer: (start, seconds) of each of its transactions."""

    number: int
    batch: int
    spans: list[tuple[float, float]] = field(default_factory=list)
    pid: asyncio.Future[int] = field(default_factory=asyncio.Future)

    async def run(self, url: str, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(url)
        self.pid.set_result(conn.get_server_pid())
        try:
            n = 0
            while not stop.is_set():
                began = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(_WRITE_EVENTS, self.number, n, self.batch)
                    await conn.execute(_WRITE_SESSIONS, self.number, self.batch)
                self.spans.append((began, time.perf_counter() - began))
                n += self.batch
        finally:
            await conn.close()


async def lock_waits(url: str, pids: list[int], stop: asyncio.Event) -> list[tuple[float, float]]:
    """(start, seconds) of each wait of `pids` for a lock, sampled every millisecond or so."""
    conn = await asyncpg.connect(url)
    waits: list[tuple[float, float]] = []
    since: dict[int, float] = {}
    try:
        while not stop.is_set():
            waiting = {
                r[0]
                for r in await conn.fetch(
                    "SELECT pid FROM pg_locks WHERE NOT granted AND pid = ANY($1)", pids
                )
            }
            now = time.perf_counter()
            for pid in waiting - since.keys():
                since[pid] = now
            for pid in since.keys() - waiting:
                waits.append((since[pid], now - since.pop(pid)))
            await asyncio.sleep(0.001)
    finally:
        await conn.close()
    return waits


@dataclass
class Run:
    variant: str
    removed: str
    pass_s: float
    longest_s: float  # longest writer transaction that overlapped the pass
    waited_s: float  # longest wait of a writer for a lock during the pass
    idle_s: float  # longest before the pass
    idle_p50_s: float
    transactions: int


async def one_run(url: str, variant: str, writers: int, batch: int) -> Run:
    stop = asyncio.Event()
    team = [Writer(n, batch) for n in range(writers)]
    tasks = [asyncio.create_task(w.run(url, stop)) for w in team]
    pids = [await w.pid for w in team]
    watch = asyncio.create_task(lock_waits(url, pids, stop))
    conn = await asyncpg.connect(url, command_timeout=3600)
    try:
        await asyncio.sleep(3.0)  # the writers' own pace first
        began = time.perf_counter()
        removed = await VARIANTS[variant](conn, DAYS)
        ended = time.perf_counter()
        await asyncio.sleep(1.0)
        left = await conn.fetchval(
            "SELECT count(*) FROM proctoring_sessions WHERE last_event_at < "
            "(SELECT expired_before FROM retention_state)"
        )
        assert left == 0, f"{variant}: {left} sessions below expired_before remain"
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        waits = await watch
        await conn.close()
    waited = [d for start, d in waits if start < ended and start + d > began]
    spans = [s for w in team for s in w.spans]
    during = [d for start, d in spans if start < ended and start + d > began]
    before = [d for start, d in spans if start + d <= began]
    return Run(
        variant,
        removed,
        ended - began,
        max(during),
        max(waited, default=0.0),
        max(before),
        statistics.median(before),
        len(during),
    )


async def fill(url: str, sessions: int, events: int) -> None:
    conn = await asyncpg.connect(url, command_timeout=7200)
    try:
        await migrate(conn)
        # Months down to 420 days back: the copies then need no carving.
        await retention.apply_locked(conn, SPREAD_DAYS + 20, wait=True)
        started = time.perf_counter()
        await conn.execute(_FILL_SESSIONS, sessions, SPREAD_DAYS)
        await conn.execute(_FILL_EVENTS, events, SPREAD_DAYS, sessions)
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        size = await conn.fetchval(
            "SELECT pg_size_pretty(pg_total_relation_size('proctoring_sessions'))"
        )
        print(
            f"filled {sessions:,} sessions ({size}) and {events:,} events over "
            f"{SPREAD_DAYS} days in {time.perf_counter() - started:.0f} s"
        )
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def copy_of(url: str, name: str) -> AsyncIterator[str]:
    """A copy of the database at `url` (no one may be connected to it), dropped afterwards."""
    base, seed = url.rsplit("/", 1)
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{seed}"')
        try:
            yield f"{base}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def measure(
    url: str, sessions: int, events: int, rounds: int, writers: int, batch: int
) -> None:
    await fill(url, sessions, events)
    conn = await asyncpg.connect(url)
    version = await conn.fetchval("SHOW server_version")
    await conn.close()
    runs: list[Run] = []
    for r in range(rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            async with copy_of(url, f"copy_{r}_{variant.replace(' ', '_')}") as copy:
                run = await one_run(copy, variant, writers, batch)
            runs.append(run)
            print(
                f"round {r + 1} {run.variant:>9}: during the pass, longest lock wait "
                f"{run.waited_s * 1000:7.1f} ms, longest insert {run.longest_s * 1000:7.1f} ms "
                f"({run.transactions} transactions); before it, longest insert "
                f"{run.idle_s * 1000:5.1f} ms (median {run.idle_p50_s * 1000:.1f}); pass "
                f"{run.pass_s:5.2f} s; removed {run.removed}"
            )
    print(
        f"\n{sessions:,} sessions, {events:,} events, {writers} writer(s) of {batch}-event "
        f"transactions, PostgreSQL {version}, a {DAYS}-day pass:"
    )
    for variant in VARIANTS:
        mine = [r for r in runs if r.variant == variant]
        waited = max(r.waited_s for r in mine) * 1000
        worst = max(r.longest_s for r in mine) * 1000
        idle = max(r.idle_s for r in mine) * 1000
        passes = ", ".join(f"{r.pass_s:.1f}" for r in mine)
        print(
            f"  {variant:>9}: an insert waited for a lock {waited:.0f} ms at most; longest "
            f"insert {worst:.0f} ms (before the passes: {idle:.0f} ms); pass {passes} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=4_000_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=2, help="each variant once per round")
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=50, help="events per writer transaction")
    parser.add_argument("--database-url", default=None, help="a server to use (embedded if unset)")
    args = parser.parse_args()

    async def run() -> None:
        async with database(args.database_url) as url:
            await measure(url, args.sessions, args.events, args.rounds, args.writers, args.batch)

    asyncio.run(run())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
