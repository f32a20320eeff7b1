"""consumer_offsets compare-and-set: a worker that lost its partition cannot move the offset
backwards or apply a batch the new owner already applied. Real PostgreSQL (and a real broker
for the fencing test)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time

import asyncpg
from aiokafka import TopicPartition
from support import infra

from worker import offsets
from worker.config import Settings
from worker.consumer import Worker
from worker.migrate import migrate

TP = TopicPartition("proctoring.events", 3)


async def test_compare_and_set(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        # No row yet: "expected None" creates it.
        assert await offsets.advance(conn, "g", {TP: (None, 10)}) == {TP}
        # A second creator (another worker that also saw no row) is fenced.
        assert await offsets.advance(conn, "g", {TP: (None, 7)}) == set()
        # Moving on from the stored value works; from a stale one it does not.
        assert await offsets.advance(conn, "g", {TP: (10, 25)}) == {TP}
        assert await offsets.advance(conn, "g", {TP: (10, 18)}) == set()
        assert await offsets.load(conn, "g", [TP]) == {TP: 25}
        # Groups are independent.
        assert await offsets.load(conn, "other", [TP]) == {}
    finally:
        await conn.close()


async def test_concurrent_owners_cannot_both_commit(database_url: str) -> None:
    """Two transactions racing from the same stored offset: exactly one wins."""
    setup = await asyncpg.connect(database_url)
    await migrate(setup)
    await offsets.advance(setup, "g", {TP: (None, 100)})
    a = await asyncpg.connect(database_url)
    b = await asyncpg.connect(database_url)
    try:
        ta = a.transaction()
        await ta.start()
        assert await offsets.advance(a, "g", {TP: (100, 150)}) == {TP}
        # b blocks on a's row lock until a commits, then sees the row moved on.
        b_task = asyncio.create_task(offsets.advance(b, "g", {TP: (100, 140)}))
        await asyncio.sleep(0.3)
        assert not b_task.done()
        await ta.commit()
        assert await asyncio.wait_for(b_task, 10) == set()
        assert await offsets.load(setup, "g", [TP]) == {TP: 150}
    finally:
        for c in (a, b, setup):
            await c.close()


async def test_a_reset_waiting_for_a_batch_overwrites_it_under_repeatable_read(
    database_url: str,
) -> None:
    """`worker offsets reset` while a batch holds the row, on a database whose default
    isolation is REPEATABLE READ: the reset waits, then writes its target over what the
    batch committed (as at READ COMMITTED), instead of failing on a serialization error."""
    setup = await asyncpg.connect(database_url)
    await migrate(setup)
    name = await setup.fetchval("SELECT current_database()")
    await setup.execute(
        f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
    )
    await offsets.advance(setup, "g", {TP: (None, 100)})
    batch = await asyncpg.connect(database_url)
    tool = await asyncpg.connect(database_url)
    try:
        tx = batch.transaction()
        await tx.start()
        assert await offsets.advance(batch, "g", {TP: (100, 150)}) == {TP}
        resetting = asyncio.create_task(offsets.reset(tool, "g", {TP: 0}))
        await asyncio.sleep(0.3)
        assert not resetting.done()
        await tx.commit()
        assert await asyncio.wait_for(resetting, 10) == {TP: (150, 0)}
        assert await offsets.load(setup, "g", [TP]) == {TP: 0}
    finally:
        for c in (batch, tool, setup):
            await c.close()


async def test_worker_fenced_by_a_new_owner_skips_what_the_owner_applied(
    kafka_bootstrap: str, database_url: str, topic_factory: infra.TopicFactory
) -> None:
    """Simulate a new owner that has applied offsets up to N: the worker's next commit is
    fenced, it rolls back, continues from N, and never applies records below N itself."""
    proctoring = await topic_factory(1)
    interview = await topic_factory(1)
    dlq = await topic_factory(1)
    group = infra.unique_name("g_")
    settings = dataclasses.replace(
        Settings(),
        bootstrap_servers=kafka_bootstrap,
        database_url=database_url,
        group_id=group,
        proctoring_topic=proctoring,
        interview_topic=interview,
        dlq_topic=dlq,
        fetch_wait_ms=50,
    )

    def event(i: int) -> tuple[bytes, bytes]:
        value = {
            "examId": "exam",
            "candidateId": "cand",
            "type": "TAB_NOT_FOCUS",
            "createdAt": f"2025-01-01T00:00:{i:02d}Z",
        }
        return (b"exam:cand", json.dumps(value).encode())

    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    conn = await asyncpg.connect(database_url)
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        await infra.produce(kafka_bootstrap, proctoring, [event(i) for i in range(5)])
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM proctoring_events") < 5:
            assert time.monotonic() < deadline, "first wave not stored"
            await asyncio.sleep(0.1)
        # The "new owner" has applied offsets 5..9 (we pretend) and stored next_offset 10.
        await conn.execute(
            "UPDATE consumer_offsets SET next_offset = 10 WHERE group_id = $1", group
        )
        await infra.produce(kafka_bootstrap, proctoring, [event(i) for i in range(5, 15)])
        while (
            await conn.fetchval(
                "SELECT next_offset FROM consumer_offsets WHERE group_id = $1", group
            )
            < 15
        ):
            assert time.monotonic() < deadline + 30, "worker did not continue after fencing"
            await asyncio.sleep(0.1)
        stored = await conn.fetch(
            "SELECT kafka_offset FROM proctoring_events ORDER BY kafka_offset"
        )
        # 0..4 by the worker, 10..14 by the worker after fencing; 5..9 belong to the owner.
        assert [r["kafka_offset"] for r in stored] == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
        session = await conn.fetchrow("SELECT flag_count FROM proctoring_sessions")
        assert session["flag_count"] == 10
        assert worker.metrics.fenced._value.get() >= 1  # type: ignore[attr-defined]
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        await conn.close()
