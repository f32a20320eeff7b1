"""Migrations (`worker migrate`): applied once, safe under concurrency, edits refused."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from support.storage import CONTENT_TABLES

from worker.migrate import (
    MIGRATION_LOCK_ID,
    Migration,
    MigrationError,
    load_migrations,
    migrate,
    migrate_url,
)

REPO = Path(__file__).resolve().parent.parent
ALL_TABLES = (*CONTENT_TABLES, "consumer_offsets", "schema_migrations")
MIGRATE_SNIPPET = (
    "import asyncio, sys; from worker.migrate import migrate_url; "
    "print(asyncio.run(migrate_url(sys.argv[1])))"
)


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def assert_schema_once(conn: asyncpg.Connection) -> None:
    """Every table exists exactly once and every shipped migration is recorded exactly once."""
    counts = dict(
        await conn.fetch(
            """
            SELECT table_name, count(*) FROM information_schema.tables
            WHERE table_schema = 'public' AND table_name = ANY($1::text[])
            GROUP BY table_name
            """,
            list(ALL_TABLES),
        )
    )
    assert counts == dict.fromkeys(ALL_TABLES, 1)
    shipped = load_migrations()
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
    assert [tuple(r) for r in rows] == [(m.version, m.name, m.checksum) for m in shipped]


async def advisory_locks_held(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory'
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """
    )


def test_shipped_migrations_are_numbered_from_one() -> None:
    migrations = load_migrations()
    assert migrations, "sql/ ships no migration"
    versions = [m.version for m in migrations]
    assert versions == list(range(1, versions[-1] + 1))
    assert migrations[0].name == "initial_schema"


async def test_migrate_twice_leaves_one_schema(database_url: str, conn: asyncpg.Connection) -> None:
    shipped = [m.version for m in load_migrations()]
    assert await migrate_url(database_url) == shipped
    assert await migrate_url(database_url) == []
    assert await migrate(conn) == []
    await assert_schema_once(conn)
    assert await advisory_locks_held(conn) == 0


async def test_two_processes_at_once(database_url: str, conn: asyncpg.Connection) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE_SNIPPET,
            database_url,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    outputs = []
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")
        outputs.append(out.decode().strip().splitlines()[-1])
    # Exactly one process applied the migrations; the other found them done.
    shipped = str([m.version for m in load_migrations()])
    assert sorted(outputs) == sorted([shipped, "[]"])
    await assert_schema_once(conn)


async def test_three_concurrent_migrations_in_one_event_loop(
    database_url: str, conn: asyncpg.Connection
) -> None:
    results = await asyncio.gather(
        migrate_url(database_url), migrate_url(database_url), migrate_url(database_url)
    )
    shipped = [m.version for m in load_migrations()]
    assert sorted(results) == [[], [], shipped]
    await assert_schema_once(conn)
    assert await advisory_locks_held(conn) == 0


async def test_migrate_waits_for_the_advisory_lock(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    task = asyncio.create_task(migrate_url(database_url))
    try:
        await asyncio.sleep(0.5)
        assert not task.done(), "migrate did not wait for the migration lock"
        assert await conn.fetchval("SELECT to_regclass('public.schema_migrations')") is None
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    assert await asyncio.wait_for(task, 60) == [m.version for m in load_migrations()]
    await assert_schema_once(conn)


async def test_edited_applied_migration_is_refused(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    before = await conn.fetch("SELECT * FROM schema_migrations")
    with pytest.raises(MigrationError, match="initial_schema"):
        await migrate(conn, [Migration(1, "initial_schema", "changed sql")])
    assert await conn.fetch("SELECT * FROM schema_migrations") == before
    # The lock is released on the error path, so the next run is not blocked.
    assert await advisory_locks_held(conn) == 0
    assert await asyncio.wait_for(migrate(conn), 30) == []
    await assert_schema_once(conn)


async def test_failing_migration_leaves_the_last_complete_version(
    conn: asyncpg.Connection,
) -> None:
    shipped = load_migrations()
    last = shipped[-1].version
    await migrate(conn)
    broken = Migration(
        last + 1,
        "broken",
        "CREATE TABLE half_done (x integer); SELECT 1 / 0;",
    )
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(conn, [*shipped, broken])
    assert await conn.fetchval("SELECT to_regclass('public.half_done')") is None
    assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == last
    assert await advisory_locks_held(conn) == 0

    fixed = Migration(last + 1, "fixed", "CREATE TABLE half_done (x integer);")
    assert await migrate(conn, [*shipped, fixed]) == [fixed.version]
    assert await conn.fetchval("SELECT to_regclass('public.half_done')::text") == "half_done"
    assert await migrate(conn, [*shipped, fixed]) == []


async def run_worker_migrate(database_url: str, *command: str) -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": database_url, "WORKER_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        *command,
        "migrate",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


WORKER_SCRIPT = Path(sys.executable).parent / "worker"


async def test_worker_migrate_command_twice(database_url: str, conn: asyncpg.Connection) -> None:
    assert WORKER_SCRIPT.exists(), "the `worker` console script is not installed in the venv"
    for _ in range(2):
        code, output = await run_worker_migrate(database_url, str(WORKER_SCRIPT))
        assert code == 0, output
        password = urlsplit(database_url).password
        if password:
            assert password not in output, "worker migrate logged the database password"
    await assert_schema_once(conn)


async def test_worker_migrate_commands_at_once(database_url: str, conn: asyncpg.Connection) -> None:
    results = await asyncio.gather(
        run_worker_migrate(database_url, str(WORKER_SCRIPT)),
        run_worker_migrate(database_url, sys.executable, "-m", "worker"),
    )
    for code, output in results:
        assert code == 0, output
    await assert_schema_once(conn)
