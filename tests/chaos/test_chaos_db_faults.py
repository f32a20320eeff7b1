"""Campaign 3, database faults while events flow: PostgreSQL restarted twice, the worker's
connections terminated, a statement_timeout of 1 ms, and an ACCESS EXCLUSIVE lock on a table
the worker writes, held longer than WORKER_DB_COMMAND_TIMEOUT_S.

Every fault is transient: the worker retries with backoff, stays up, and never dead-letters a
valid record; at the end the tables equal the reference and the dead letters are exactly the
malformed records.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from support import infra
from support.chaos import (
    SCALE,
    SEED,
    SIZES,
    Clock,
    Publisher,
    World,
    build_reference,
    check_dlq,
    check_offsets,
    compare_with_reference,
    generate_stream,
    items_of,
    make_topics,
    offsets_total,
    paced_publish,
    read_dlq,
    report,
    topic_map,
    wait_until,
)
from support.e2e import running_worker, settings_for, task_of

from worker.consumer import Worker
from worker.router import apply_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SIZES.test_timeout_s)]

COMMAND_TIMEOUT_S = 1.0
LOCK_HOLD_S = 4 * COMMAND_TIMEOUT_S
STATEMENT_TIMEOUT_HOLD_S = 3.0
BATCH = 50
TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
TERMINATE_IN = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = $1 AND pid <> pg_backend_pid()"
)


def retries(worker: Worker, dependency: str = "database") -> int:
    value = worker.metrics.registry.get_sample_value(
        "worker_retries_total", {"dependency": dependency}
    )
    return int(value or 0)


async def test_database_faults_are_waited_out_without_loss(
    kafka_bootstrap: str,
    database_url: str,
    pg_stack: infra.PgStack,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    server = pg_stack.server
    if server is None:
        pytest.skip(f"PostgreSQL comes from {pg_stack.source}: the test cannot restart it")
    clock = Clock()
    stream = generate_stream(SEED + 3, SIZES.db_events, malformed_share=0.01, tag="d")
    topics = await make_topics(topic_factory, 4)
    settings = settings_for(
        kafka_bootstrap,
        database_url,
        topics,
        max_batch_records=500,
        retry_max_s=1.0,
        db_command_timeout_s=COMMAND_TIMEOUT_S,
    )
    db_name = database_url.rsplit("/", 1)[1]
    faults: dict[str, Any] = {}

    async def admin(sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(pg_stack.admin_url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
        producing = asyncio.create_task(paced_publish(publisher, stream.records, 30.0))
        try:
            async with running_worker(settings) as worker:

                async def commits(what: str) -> float:
                    """Seconds until the worker commits again (or has everything)."""
                    started = time.monotonic()
                    before = await offsets_total(database_url, topics.group_id)

                    async def moved() -> bool:
                        assert not task_of(worker).done(), "worker task ended"
                        total = await offsets_total(database_url, topics.group_id)
                        everything = producing.done() and total >= publisher.produced
                        return total > before or everything

                    await wait_until(moved, 90, f"a commit after {what}", interval=0.05)
                    return round(time.monotonic() - started, 2)

                faults["first_commit_s"] = await commits("start")

                # 1. PostgreSQL restarted (pg_ctl blocks: off the loop the worker shares).
                await asyncio.to_thread(server.restart)
                faults["restart1_recovery_s"] = await commits("restart 1")

                # 2. The worker's connections terminated, three times.
                terminated = 0
                for _ in range(3):
                    conn = await asyncpg.connect(database_url)
                    try:
                        terminated += await conn.fetchval(TERMINATE)
                    finally:
                        await conn.close()
                    await asyncio.sleep(0.5)
                faults["backends_terminated"] = terminated
                faults["terminate_recovery_s"] = await commits("pg_terminate_backend")

                # 3. Every statement of the database times out for a while. Existing sessions
                # keep their setting: terminate them so the pool reconnects under it.
                before = retries(worker)
                await admin(f"ALTER DATABASE \"{db_name}\" SET statement_timeout = '1ms'")
                await admin(TERMINATE_IN, db_name)
                await asyncio.sleep(STATEMENT_TIMEOUT_HOLD_S)
                await admin(f'ALTER DATABASE "{db_name}" RESET statement_timeout')
                await admin(TERMINATE_IN, db_name)
                faults["statement_timeout_retries"] = retries(worker) - before
                faults["statement_timeout_recovery_s"] = await commits("statement_timeout")

                # 4. A lock on a table every proctoring batch writes, held past the command
                # timeout.
                before = retries(worker)
                holder = await asyncpg.connect(database_url)
                try:
                    async with holder.transaction():
                        await holder.execute(
                            "LOCK TABLE proctoring_sessions IN ACCESS EXCLUSIVE MODE"
                        )
                        await asyncio.sleep(LOCK_HOLD_S)
                finally:
                    await holder.close()
                faults["lock_retries"] = retries(worker) - before
                faults["lock_recovery_s"] = await commits("the lock")

                # 5. Restarted again.
                await asyncio.to_thread(server.restart)
                faults["restart2_recovery_s"] = await commits("restart 2")

                await producing
                drain_started = clock()

                async def drained() -> bool:
                    assert not task_of(worker).done(), "worker task ended"
                    return await offsets_total(database_url, topics.group_id) >= publisher.produced

                await wait_until(drained, 120, "the worker to drain")
                faults["drain_s"] = round(clock() - drain_started, 1)
                stats = dict(worker.stats)
                # One worker alone: every fence is its own commit, stored, whose reply was lost.
                faults["fenced"] = int(worker.metrics.fenced._value.get())  # type: ignore[attr-defined]
                all_retries = {d: retries(worker, d) for d in ("database", "kafka")}
        finally:
            if not producing.done():
                producing.cancel()
            pg_stack.ensure_running()

    # Judged by the dead-letter topic below (check_dlq: every malformed record there, once at
    # least, and nothing else), never by the worker's counters: a COMMIT whose reply a restart
    # cut off is stored, its dead letters were acknowledged before it, but the worker saw an
    # error, was fenced by its own commit on the retry and never counted that batch.
    assert stats["dead_lettered"] <= stream.malformed, stats
    committed = await check_offsets(database_url, topics.group_id, publisher)
    reference_url = await fresh_database()
    assert await build_reference(reference_url, items_of(stream.events)) == []
    tables = await compare_with_reference(database_url, reference_url)
    malformed = publisher.malformed()
    dlq = check_dlq(await read_dlq(kafka_bootstrap, topics.dlq, set(malformed)), malformed)
    assert faults["statement_timeout_retries"] > 0 or faults["lock_retries"] > 0, faults
    report(
        "3 database faults",
        scale=SCALE,
        produced=publisher.produced,
        distinct_valid=len(stream.events),
        malformed=stream.malformed,
        **faults,
        retries=all_retries,
        worker_stats=stats,
        committed_offsets_sum=committed,
        **tables,
        **dlq,
        total_s=clock(),
    )


async def test_postgres_restarts_mid_batch_are_retried_not_fatal(
    kafka_bootstrap: str,
    database_url: str,
    pg_stack: infra.PgStack,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """Regression: PostgreSQL restarted (fast shutdown) while the worker writes batches.
    Whatever state the server's disconnect leaves a connection in, the failure is transient:
    the worker must retry, not die."""
    server = pg_stack.server
    if server is None:
        pytest.skip(f"PostgreSQL comes from {pg_stack.source}: the test cannot restart it")
    restarts = 5 if SCALE == "ci" else 15
    stream = generate_stream(SEED + 7, 600 * restarts, malformed_share=0.0, tag="r")
    topics = await make_topics(topic_factory, 4)
    settings = settings_for(
        kafka_bootstrap, database_url, topics, max_batch_records=200, retry_max_s=0.5
    )
    done = 0
    async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
        producing = asyncio.create_task(
            paced_publish(publisher, stream.records, 3.0 * restarts, chunk=50)
        )
        try:
            async with running_worker(settings) as worker:

                def alive() -> None:
                    task = task_of(worker)
                    if task.done() and task.exception() is not None:
                        exc = task.exception()
                        trace = "".join(traceback.format_exception(exc))
                        raise AssertionError(f"worker died after {done} restarts:\n{trace}")

                for _ in range(restarts):
                    before = await offsets_total(database_url, topics.group_id)

                    async def committing(before: int = before) -> bool:
                        alive()
                        return await offsets_total(database_url, topics.group_id) > before

                    await wait_until(committing, 90, "a commit", interval=0.02)
                    await asyncio.to_thread(server.restart)
                    done += 1
                await producing

                async def drained() -> bool:
                    alive()
                    total = await offsets_total(database_url, topics.group_id)
                    return total >= publisher.produced

                await wait_until(drained, 90, "the worker to drain")
        finally:
            if not producing.done():
                producing.cancel()
            pg_stack.ensure_running()
    await check_offsets(database_url, topics.group_id, publisher)
    reference_url = await fresh_database()
    assert await build_reference(reference_url, items_of(stream.events)) == []
    tables = await compare_with_reference(database_url, reference_url)
    report("3c postgres restarts mid-batch", restarts=done, **tables)


async def test_batch_fenced_out_while_retrying_does_not_stall_the_worker(
    kafka_bootstrap: str,
    database_url: str,
    pg_stack: infra.PgStack,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """Regression: a batch that fails transiently pauses the partitions; if its retry then
    finds every partition of the batch fenced (its commit did land before the connection
    broke, an "unknown outcome" commit; or another owner committed it), the worker must resume
    consuming. Here the lost acknowledgement is simulated exactly: while the worker retries
    wave 2 (every statement times out), wave 2's effects and offsets are committed for it."""
    waves = [
        generate_stream(
            SEED + 8 + n,
            100,
            duplicate_share=0.0,
            malformed_share=0.0,
            proctoring_share=1.0,
            tag=f"f{n}",
        )
        for n in range(3)
    ]
    topics = await make_topics(topic_factory, 1)
    settings = settings_for(
        kafka_bootstrap, database_url, topics, retry_max_s=0.5, db_command_timeout_s=2.0
    )
    db_name = database_url.rsplit("/", 1)[1]

    async def admin(sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(pg_stack.admin_url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async with (
        Publisher(kafka_bootstrap, topic_map(topics)) as publisher,
        running_worker(settings) as worker,
    ):

        def stored(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                assert not task_of(worker).done(), "worker task ended"
                return await offsets_total(database_url, topics.group_id) >= n

            return check

        await publisher.publish(waves[0].records)
        await wait_until(stored(100), 90, "wave 1 stored")

        before = retries(worker)
        await admin(f"ALTER DATABASE \"{db_name}\" SET statement_timeout = '1ms'")
        try:
            await admin(TERMINATE_IN, db_name)
            coords = await publisher.publish(waves[1].records)

            async def retrying() -> bool:
                return retries(worker) > before

            await wait_until(retrying, 30, "the worker to retry wave 2")
            # The commit the worker will never hear about: wave 2 and its offset.
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("SET statement_timeout = 0")
                async with conn.transaction():
                    await apply_batch(conn, items_of(waves[1].records))
                    moved = await conn.execute(
                        "UPDATE consumer_offsets SET next_offset = $4 "
                        "WHERE group_id = $1 AND topic = $2 AND partition = $3",
                        topics.group_id,
                        coords[-1][0],
                        coords[-1][1],
                        coords[-1][2] + 1,
                    )
                    assert moved == "UPDATE 1", moved
            finally:
                await conn.close()
        finally:
            await admin(f'ALTER DATABASE "{db_name}" RESET statement_timeout')
            await admin(TERMINATE_IN, db_name)

        await publisher.publish(waves[2].records)
        try:
            await wait_until(stored(300), 20, "wave 3 stored after the fenced retry")
        finally:
            report(
                "3d fenced while retrying",
                stored_offsets=await offsets_total(database_url, topics.group_id),
                expected=300,
                worker_stats=dict(worker.stats),
            )
    await check_offsets(database_url, topics.group_id, publisher)
    reference_url = await fresh_database()
    events = [e for w in waves for e in w.events]
    assert await build_reference(reference_url, items_of(events)) == []
    await compare_with_reference(database_url, reference_url)


async def test_batch_abandoned_at_shutdown_is_not_skipped_by_the_next_one(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    """Regression (found by the rebalance storm): batches are fetched and decoded while the
    previous one commits. A batch retrying a transient failure when the worker is told to
    stop is abandoned uncommitted; the batch behind it, for the same partition, must then
    not be committed (its compare-and-set still expects the offset before the abandoned
    batch, so it would succeed and move the partition past records never stored)."""
    rng = random.Random(SEED + 9)
    world = World(rng, 200, tag="a")
    warmup = [world._part().planned for _ in range(10)]
    blocked = [world._applicant().planned for _ in range(BATCH)]  # waits on the lock
    behind = [world._part().planned for _ in range(BATCH)]  # would commit without it
    topics = await make_topics(topic_factory, 1)
    settings = settings_for(
        kafka_bootstrap,
        database_url,
        topics,
        max_batch_records=BATCH,
        retry_max_s=0.5,
        db_command_timeout_s=COMMAND_TIMEOUT_S,
    )
    async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
        async with running_worker(settings) as worker:

            async def stored(n: int) -> bool:
                assert not task_of(worker).done(), "worker task ended"
                return await offsets_total(database_url, topics.group_id) >= n

            await publisher.publish(warmup)
            await wait_until(lambda: stored(len(warmup)), 90, "the warm-up stored")
            holder = await asyncpg.connect(database_url)
            try:
                async with holder.transaction():
                    await holder.execute("LOCK TABLE applicants IN ACCESS EXCLUSIVE MODE")
                    before = retries(worker)
                    await publisher.publish(blocked)
                    await publisher.publish(behind)

                    async def retrying() -> bool:
                        return retries(worker) > before

                    await wait_until(retrying, 30, "the blocked batch to retry")
                    await asyncio.sleep(1.0)  # the batch behind it is fetched meanwhile
                    worker.stop()  # leaving running_worker waits for the worker to end
                    await asyncio.wait({task_of(worker)}, timeout=60)
            finally:
                await holder.close()
        after_stop = await offsets_total(database_url, topics.group_id)
        # A new worker picks up from whatever was committed.
        async with running_worker(settings) as worker:
            await wait_until(lambda: stored(publisher.produced), 90, "the restarted worker")
    report(
        "3e abandoned batch at shutdown",
        committed_at_stop=after_stop,
        warmup=len(warmup),
        blocked=len(blocked),
        behind=len(behind),
    )
    await check_offsets(database_url, topics.group_id, publisher)
    reference_url = await fresh_database()
    assert await build_reference(reference_url, items_of(warmup + blocked + behind)) == []
    await compare_with_reference(database_url, reference_url)
