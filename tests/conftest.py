"""Shared fixtures. The logic lives in tests/support/infra.py; this file only declares fixtures.

`from support import infra` works because pytest puts this directory (no __init__.py) on sys.path.

Servers start lazily: a test that requests none of the Kafka or PostgreSQL fixtures
starts nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from support import infra


@pytest.fixture(scope="session")
def kafka_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.KafkaStack]:
    stack = infra.start_kafka_stack(tmp_path_factory.mktemp("kafka"))
    yield stack
    stack.close()


@pytest.fixture(scope="session")
def pg_stack() -> Iterator[infra.PgStack]:
    # Not under pytest's temp root: every pytest start resets that root to mode 0700, and
    # an embedded PostgreSQL running as another user (when we are root) would lose its data
    # directory to a second pytest run on the same machine.
    work = Path(tempfile.mkdtemp(prefix="event-worker-pg-"))
    stack = infra.start_pg_stack(work)
    yield stack
    stack.close()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_stack: infra.KafkaStack) -> str:
    return kafka_stack.bootstrap_servers


@pytest.fixture(scope="session")
def pg_admin_url(pg_stack: infra.PgStack) -> str:
    return pg_stack.admin_url


@pytest.fixture
async def database_url(pg_stack: infra.PgStack) -> AsyncIterator[str]:
    pg_stack.ensure_running()
    url = await infra.create_database(pg_stack.admin_url)
    yield url
    pg_stack.ensure_running()
    await infra.drop_database(pg_stack.admin_url, url)


@pytest.fixture
async def topic_factory(kafka_stack: infra.KafkaStack) -> AsyncIterator[infra.TopicFactory]:
    kafka_stack.ensure_running()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_stack.bootstrap_servers)
    await admin.start()

    async def factory(partitions: int = 1) -> str:
        return await infra.create_topic(admin, partitions)

    yield factory
    await admin.close()


@pytest.fixture
async def topics(topic_factory: infra.TopicFactory) -> infra.Topics:
    return await infra.make_topics(topic_factory)
