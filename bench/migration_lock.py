"""How long sql/005 (time partitions) holds the proctoring tables' lock on a populated database.

    .venv/bin/python -m bench.migration_lock                # 1 000 000 events, embedded PostgreSQL
    .venv/bin/python -m bench.migration_lock --events 200000 --database-url postgresql://...

Migrations 001-004 are applied to a fresh database, which is filled with `--events` proctoring
events spread over two years (plus one system check per 20 events) and analysed; then 005 is
applied. The renames at its start take ACCESS EXCLUSIVE locks on both tables, held until it
commits, so a reader started just after it waits for all of it: the figure printed is that
reader's wait, next to the migration's own duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from worker.migrate import load_migrations, migrate

_FILL_EVENTS = """
INSERT INTO proctoring_events
    (exam_id, candidate_id, type, created_at, description, media_url, kafka_topic,
     kafka_partition, kafka_offset)
SELECT 'exam-' || (g % 5000), 'cand-' || (g % 20000), 'TAB_NOT_FOCUS',
       now() - (g % 730) * interval '1 day' - (g / 730) * interval '1 second',
       'Candidate switched tab', NULL, 'proctoring.events', g % 12, g
FROM generate_series(1, $1) AS g
"""
_FILL_CHECKS = """
INSERT INTO system_checks (exam_id, candidate_id, checked_at, success, results, created_at)
SELECT 'exam-' || (g % 5000), 'cand-' || (g % 20000),
       now() - (g % 730) * interval '1 day' - (g / 730) * interval '1 second', true,
       '[{"name": "webcam", "status": "success", "finished": true}]',
       now() - (g % 730) * interval '1 day'
FROM generate_series(1, $1 / 20) AS g
"""


@contextlib.asynccontextmanager
async def database(url: str | None) -> AsyncIterator[str]:
    """A fresh database on `url`'s server, or on an embedded PostgreSQL."""
    with contextlib.ExitStack() as stack:
        if url is None:
            from worker.dev.stack import EmbeddedPostgres

            server = EmbeddedPostgres(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            server.start()
            stack.callback(server.close)
            url = server.url()
        name = f"lock_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.close()


async def measure(url: str, events: int) -> None:
    conn = await asyncpg.connect(url, command_timeout=3600)
    reader = await asyncpg.connect(url, command_timeout=3600)
    try:
        shipped = load_migrations()
        await migrate(conn, [m for m in shipped if m.version < 5])
        started = time.perf_counter()
        await conn.execute(_FILL_EVENTS, events)
        await conn.execute(_FILL_CHECKS, events)
        await conn.execute("ANALYZE")
        print(f"filled {events:,} events in {time.perf_counter() - started:.1f} s")
        size = await conn.fetchval(
            "SELECT pg_size_pretty(pg_total_relation_size('proctoring_events'))"
        )

        migration = asyncio.create_task(migrate(conn, [m for m in shipped if m.version <= 5]))
        began = time.perf_counter()
        # Wait until 005 holds its lock, then read the table as any query would.
        while not await reader.fetchval(
            "SELECT count(*) FROM pg_locks WHERE relation = 'proctoring_events'::regclass "
            "AND mode = 'AccessExclusiveLock' AND granted"
        ):
            if migration.done():
                break
            await asyncio.sleep(0.005)
        blocked_from = time.perf_counter()
        await reader.fetchval("SELECT count(*) FROM (SELECT 1 FROM proctoring_events LIMIT 1) s")
        blocked = time.perf_counter() - blocked_from
        await migration
        took = time.perf_counter() - began
        rows = await reader.fetchval("SELECT count(*) FROM proctoring_events")
        partitions = await reader.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'proctoring_events'::regclass"
        )
        version = await reader.fetchval("SHOW server_version")
    finally:
        await reader.close()
        await conn.close()
    print(
        f"sql/005 on {events:,} events ({size}) and {events // 20:,} system checks, "
        f"PostgreSQL {version}: migration {took:.1f} s; a reader waited {blocked:.1f} s for "
        f"the lock; {rows:,} events in {partitions} partitions afterwards"
    )
    assert rows == events, f"{rows} rows after the migration, {events} before"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=None, help="a server to use (embedded if unset)")
    args = parser.parse_args()

    async def run() -> None:
        async with database(args.database_url) as url:
            await measure(url, args.events)

    asyncio.run(run())


if __name__ == "__main__":
    main()
