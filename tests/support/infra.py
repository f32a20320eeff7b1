"""Real Kafka and PostgreSQL endpoints for the tests, and small helpers to use them.

Endpoints are chosen in the order the project's guide asks for, separately for Kafka and
PostgreSQL:

1. the environment (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`), e.g. CI services;
2. testcontainers, when a Docker engine answers;
3. the embedded servers of `worker.dev.stack`, which need nothing but the `dev` extra.

Only the embedded servers can be stopped and killed by a test, so the stacks expose them
(`KafkaStack.broker`, `PgStack.server`) and leave them None otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata

from worker.dev.stack import EmbeddedBroker, EmbeddedPostgres

Headers = Sequence[tuple[str, bytes]]
Record = tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, Headers | None]
TopicFactory = Callable[..., Awaitable[str]]

KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DATABASE_ENV = "DATABASE_URL"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
POSTGRES_IMAGE = "postgres:17"


def unique_name(prefix: str = "t_") -> str:
    # Lower-case hex is valid unquoted in both a Kafka topic and a PostgreSQL identifier.
    return f"{prefix}{uuid.uuid4().hex}"


@functools.cache
def docker_available(timeout: float = 3.0) -> bool:
    """Whether a Docker engine answers; cached because every probe costs the timeout."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@dataclass
class KafkaStack:
    bootstrap_servers: str
    source: str  # "env", "testcontainers" or "embedded"
    broker: EmbeddedBroker | None = None
    container: Any = field(default=None, repr=False)

    def ensure_running(self) -> None:
        """Bring back an embedded broker that an earlier fault test left stopped."""
        if self.broker is not None and not self.broker.running:
            self.broker.start()

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        if self.container is not None:
            self.container.stop()


@dataclass
class PgStack:
    admin_url: str
    source: str  # "env", "testcontainers" or "embedded"
    server: EmbeddedPostgres | None = None
    container: Any = field(default=None, repr=False)

    def ensure_running(self) -> None:
        """Bring back an embedded server that an earlier fault test left stopped."""
        if self.server is not None and not self.server.running:
            self.server.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.container is not None:
            self.container.stop()


def start_kafka_stack(work_dir: Path) -> KafkaStack:
    bootstrap = os.environ.get(KAFKA_ENV, "").strip()
    if bootstrap:
        return KafkaStack(bootstrap_servers=bootstrap, source="env")
    if docker_available():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers before the community split
            from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(KAFKA_IMAGE).with_kraft()
        container.start()
        return KafkaStack(
            bootstrap_servers=container.get_bootstrap_server(),
            source="testcontainers",
            container=container,
        )
    broker = EmbeddedBroker(log_path=work_dir / "tansu.log")
    broker.start()
    return KafkaStack(bootstrap_servers=broker.bootstrap_servers, source="embedded", broker=broker)


def start_pg_stack(work_dir: Path) -> PgStack:
    url = os.environ.get(DATABASE_ENV, "").strip()
    if url:
        return PgStack(admin_url=url, source="env")
    if docker_available():
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers before the community split
            from testcontainers.postgres import PostgresContainer

        container = PostgresContainer(POSTGRES_IMAGE, driver=None)
        container.start()
        return PgStack(
            admin_url=container.get_connection_url(),
            source="testcontainers",
            container=container,
        )
    server = EmbeddedPostgres(work_dir / "data")
    server.start()
    return PgStack(admin_url=server.url(), source="embedded", server=server)


def database_url_for(admin_url: str, database: str) -> str:
    """The admin URL with its database replaced, keeping credentials, host and options."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def create_database(admin_url: str) -> str:
    """Create a fresh, uniquely named database and return its URL."""
    name = unique_name()
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url_for(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    conn = await asyncpg.connect(admin_url)
    try:
        # FORCE ends the connections a failed test may have leaked.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_topic(
    admin: AIOKafkaAdminClient,
    partitions: int = 1,
    timeout: float = 30.0,
) -> str:
    """Create a uniquely named topic and wait until its metadata shows every partition led."""
    name = unique_name()
    await admin.create_topics(
        [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
    )
    deadline = time.monotonic() + timeout
    while True:
        described = await admin.describe_topics([name])
        if described:
            topic = described[0]
            led = [p for p in topic["partitions"] if p["leader"] >= 0]
            if topic["error_code"] == 0 and len(led) == partitions:
                return name
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} not ready after {timeout}s: {described!r}")
        await asyncio.sleep(0.1)


def _split_record(record: Record) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    if len(record) == 2:
        key, value = record
        return key, value, []
    key, value, headers = record
    return key, value, list(headers or [])


async def produce(bootstrap: str, topic: str, records: Sequence[Record]) -> list[RecordMetadata]:
    """Produce `(key, value)` or `(key, value, headers)` records; returns their metadata.

    Sends are issued in order before any is awaited, so records for one partition keep
    their order while the batch still goes out in few requests.
    """
    # The embedded broker has no InitProducerId, so idempotence must stay off.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        futures = []
        for record in records:
            key, value, headers = _split_record(record)
            futures.append(await producer.send(topic, value=value, key=key, headers=headers))
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def consume_all(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float = 30,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `topic` from the beginning, without a consumer group, until `expected` records.

    Returns what it has when the timeout passes, so a test can assert on the shortfall.
    End offsets are never used to decide when to stop: the embedded broker under-reports
    them.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                return records
            await consumer.topics()  # refreshes the cluster metadata
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await asyncio.sleep(0.1)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        while len(records) < expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
            for tp_records in batch.values():
                records.extend(tp_records)
        return records
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Topics:
    """A fresh set of the topics the worker reads and writes, plus a fresh group id."""

    proctoring: str
    interview: str
    dlq: str
    group_id: str


async def make_topics(topic_factory: TopicFactory) -> Topics:
    proctoring, interview, dlq = await asyncio.gather(
        topic_factory(4), topic_factory(4), topic_factory(1)
    )
    return Topics(proctoring=proctoring, interview=interview, dlq=dlq, group_id=unique_name("g_"))
