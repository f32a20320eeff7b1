"""The commit path against a real broker and PostgreSQL: the topics checked at start, dead
letters published before the transaction opens, a batch too large for the database split.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from support import infra
from support.e2e import (
    count_rows,
    expected_offsets,
    running_worker,
    settings_for,
    wait_for,
    wait_for_offsets,
    worker_process,
)
from support.kafka_proxy import KafkaProxy

from worker.dev.stack import EmbeddedBroker, free_port
from worker.migrate import migrate_url

pytestmark = pytest.mark.integration


def flag(i: int, exam: str = "exam") -> tuple[bytes, bytes]:
    value = {
        "examId": exam,
        "candidateId": "cand",
        "type": "TAB_NOT_FOCUS",
        "createdAt": f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "description": f"flag {i}",
    }
    return (f"{exam}:cand".encode(), json.dumps(value).encode())


# -- topics checked at start ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("WORKER_DLQ_TOPIC", "dlq_topic"),
        ("WORKER_PROCTORING_TOPIC", "proctoring_topic"),
        ("WORKER_INTERVIEW_TOPIC", "interview_topic"),
    ],
)
async def test_a_missing_topic_stops_the_worker_at_start_with_exit_2(
    kafka_bootstrap: str,
    database_url: str,
    topics: infra.Topics,
    variable: str,
    field: str,
) -> None:
    missing = infra.unique_name("missing_")
    settings = settings_for(kafka_bootstrap, database_url, topics, **{field: missing})
    proc = worker_process(settings)
    try:
        code = await asyncio.to_thread(proc.wait, 90)
    finally:
        if proc.poll() is None:
            proc.kill_and_wait()
    log = proc.log_path.read_text()
    assert code == 2, log
    errors = [line for line in log.splitlines() if "configuration error" in line]
    assert errors == [
        f"worker: configuration error: {variable}: topic {missing!r} does not exist on the broker"
    ], log
    # Checking must not have created it (metadata for all topics, never by name).
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert missing not in await admin.list_topics()
    finally:
        await admin.close()


# -- dead letters before the transaction ------------------------------------------------------


@pytest.fixture
async def proxied_broker() -> AsyncIterator[KafkaProxy]:
    """A broker of its own whose every client goes through a KafkaProxy."""
    proxy_port = free_port()
    broker = EmbeddedBroker(
        advertised_port=proxy_port, log_path=Path(tempfile.mkdtemp()) / "tansu.log"
    )
    await asyncio.to_thread(broker.start)
    proxy = KafkaProxy(upstream_port=broker.port, port=proxy_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
        await asyncio.to_thread(broker.stop)


async def open_transactions(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Other sessions of this database inside a transaction but not running a statement:
    a transaction held open while its owner waits on something else."""
    return await conn.fetch(
        """SELECT pid, state, xact_start, left(query, 80) AS query FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid()
             AND state LIKE 'idle in transaction%'"""
    )


async def test_a_broker_refusing_dead_letters_holds_no_transaction_open(
    proxied_broker: KafkaProxy, database_url: str
) -> None:
    proxy = proxied_broker
    bootstrap = proxy.bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = infra.Topics(
            proctoring=await infra.create_topic(admin, 1),
            interview=await infra.create_topic(admin, 1),
            dlq=await infra.create_topic(admin, 1),
            group_id=infra.unique_name("g_"),
        )
    finally:
        await admin.close()
    settings = settings_for(bootstrap, database_url, topics, retry_max_s=0.5)
    probe = await asyncpg.connect(database_url)
    try:
        async with running_worker(settings):
            first = await infra.produce(bootstrap, topics.proctoring, [flag(0)])
            await wait_for_offsets(database_url, topics.group_id, expected_offsets(first), 90)

            proxy.hold_produce(f"{topics.group_id}-dlq")
            bad = (b"bad-key", b"{not json", [("h", b"\xff\x00"), ("n", None)])
            more = await infra.produce(bootstrap, topics.proctoring, [bad, flag(1), flag(2)])
            await wait_for(lambda: asyncio.sleep(0, proxy.held_requests), 60, "a held dead letter")
            # Held for a while: every look finds no transaction waiting on the broker, and
            # nothing past the dead letter committed.
            for _ in range(30):
                assert await open_transactions(probe) == []
                await asyncio.sleep(0.1)
            assert await count_rows(database_url, "proctoring_events") == 1

            proxy.release()
            await wait_for_offsets(database_url, topics.group_id, expected_offsets(more), 90)
            assert await count_rows(database_url, "proctoring_events") == 3
            letters = await infra.consume_all(bootstrap, topics.dlq, 1)
            assert [(r.key, r.value) for r in letters] == [(b"bad-key", b"{not json")]
    finally:
        await probe.close()


# -- a batch over the database's limits ---------------------------------------------------------

# A statement inserting more than LIMIT rows runs past statement_timeout, as a batch too large
# for the database would; the sequence counts the attempts (nextval survives the rollback).
LIMIT = 50
OVERSIZED = f"""
CREATE SEQUENCE oversized_statements;
CREATE FUNCTION slow_when_oversized() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM added) > {LIMIT} THEN
        PERFORM nextval('oversized_statements');
        PERFORM pg_sleep(30);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER slow_when_oversized AFTER INSERT ON proctoring_events
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION slow_when_oversized();
"""


async def test_a_batch_over_the_database_limits_is_split_and_stored(
    kafka_bootstrap: str, database_url: str, topics: infra.Topics
) -> None:
    await migrate_url(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(OVERSIZED)
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{database}\" SET statement_timeout = '500ms'")
        # Everything on the broker before the worker starts: its first batch takes it all.
        produced = await infra.produce(
            kafka_bootstrap, topics.proctoring, [flag(i) for i in range(400)]
        )
        settings = settings_for(kafka_bootstrap, database_url, topics, retry_max_s=0.5)
        async with running_worker(settings):
            await wait_for_offsets(database_url, topics.group_id, expected_offsets(produced), 120)
        assert await count_rows(database_url, "proctoring_events") == 400
        sessions = await conn.fetch("SELECT flag_count FROM proctoring_sessions")
        assert [r["flag_count"] for r in sessions] == [400]
        assert await conn.fetchval("SELECT last_value FROM oversized_statements") >= 1, (
            "no batch was ever over the limit: the test did not test the split"
        )
    finally:
        await conn.close()
