"""The test infrastructure itself works against real servers."""

from __future__ import annotations

import time

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from support.infra import PgStack, TopicFactory, Topics, consume_all, produce

pytestmark = pytest.mark.integration


async def test_produce_and_consume_all_with_headers(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory(4)
    sent = [
        (f"key-{i}".encode(), f"value-{i}".encode(), [("event-type", b"t%d" % i), ("n", b"%d" % i)])
        for i in range(10)
    ]

    metadata = await produce(kafka_bootstrap, topic, sent)
    records = await consume_all(kafka_bootstrap, topic, expected=10)

    assert len(metadata) == 10
    assert {m.topic for m in metadata} == {topic}
    assert len(records) == 10
    got = sorted((r.key, r.value, list(r.headers)) for r in records)
    assert got == sorted((k, v, h) for k, v, h in sent)
    # The key decides the partition, and the metadata says where each record went; the keys
    # are fixed, so the spread over partitions is too.
    assert len({m.partition for m in metadata}) > 1
    where = {(m.partition, m.offset) for m in metadata}
    assert {(r.partition, r.offset) for r in records} == where


# Databases handed out so far by `database_url`, in test order.
_seen_databases: list[str] = []


async def test_database_urls_are_isolated_a(database_url: str, pg_admin_url: str) -> None:
    await _assert_fresh_and_isolated(database_url, pg_admin_url)


async def test_database_urls_are_isolated_b(database_url: str, pg_admin_url: str) -> None:
    await _assert_fresh_and_isolated(database_url, pg_admin_url)


async def _assert_fresh_and_isolated(database_url: str, pg_admin_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    assert database_url != pg_admin_url
    assert name not in _seen_databases
    admin = await asyncpg.connect(pg_admin_url)
    try:
        # The previous test's database was dropped when that test ended.
        existing = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
    finally:
        await admin.close()
    assert name in existing
    assert existing.isdisjoint(_seen_databases)
    _seen_databases.append(name)

    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT current_database()") == name
        # Both tests create the same table: the second would fail if it saw the first's.
        assert await conn.fetchval("SELECT to_regclass('public.marker')") is None
        await conn.execute("CREATE TABLE marker (id int)")
    finally:
        await conn.close()


async def test_embedded_postgres_restart_keeps_url_and_data(
    pg_stack: PgStack, database_url: str
) -> None:
    if pg_stack.server is None:
        pytest.skip(f"PostgreSQL comes from {pg_stack.source}; the test cannot restart it")
    server = pg_stack.server
    url_before = server.url()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE survivor (id int); INSERT INTO survivor VALUES (7)")
    finally:
        await conn.close()

    server.stop()
    assert not server.running
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(database_url, timeout=5)
    server.start()

    assert server.running
    assert server.url() == url_before
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT id FROM survivor") == 7
    finally:
        await conn.close()


async def test_embedded_postgres_kill_keeps_committed_data(
    pg_stack: PgStack, database_url: str
) -> None:
    if pg_stack.server is None:
        pytest.skip(f"PostgreSQL comes from {pg_stack.source}; the test cannot kill it")
    server = pg_stack.server
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE survivor (id int); INSERT INTO survivor VALUES (8)")
        server.kill()
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close(timeout=1)

    assert not server.running
    server.start()  # crash recovery replays the WAL
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT id FROM survivor") == 8
    finally:
        await conn.close()


async def test_consumer_group_gets_all_partitions(kafka_bootstrap: str, topics: Topics) -> None:
    assert len({topics.proctoring, topics.interview, topics.dlq, topics.group_id}) == 4
    consumer = AIOKafkaConsumer(
        topics.proctoring,
        bootstrap_servers=kafka_bootstrap,
        group_id=topics.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while len(consumer.assignment()) < 4 and time.monotonic() < deadline:
            # getmany drives nothing itself, but yields to the group coordinator task.
            await consumer.getmany(timeout_ms=200)
        assert consumer.assignment() == {TopicPartition(topics.proctoring, p) for p in range(4)}
    finally:
        await consumer.stop()
