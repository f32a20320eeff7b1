"""The worker's three clients, built in one place from the settings.

`Worker` receives a `Clients` and never constructs a client itself, so a test can hand it a
scripted consumer and producer (tests/support/scripted_kafka.py) beside a real PostgreSQL pool and
replay an exact interleaving of fetches, seeks, rebalances and commits.
"""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker import broker, kafka_records
from worker.config import Settings


class Clients(Protocol):
    async def database(self) -> asyncpg.Pool:
        """A connected pool (may raise a transient error; the worker retries)."""
        ...

    def consumer(self) -> Any:
        """An unstarted AIOKafkaConsumer, or anything with its interface."""
        ...

    def producer(self) -> Any:
        """An unstarted AIOKafkaProducer for dead letters, or anything with its interface."""
        ...

    def reader(self) -> Any:
        """An unstarted group-less AIOKafkaConsumer for reading log bounds
        (worker/broker.py), or anything with its interface."""
        ...


class KafkaPostgresClients:
    """The real clients, configured from `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def database(self) -> asyncpg.Pool:
        s = self.settings
        pool: asyncpg.Pool = await asyncpg.create_pool(
            s.database_url,
            min_size=1,
            max_size=s.db_pool_size,
            command_timeout=s.db_command_timeout_s,
        )
        return pool

    def producer(self) -> AIOKafkaProducer:
        s = self.settings
        return AIOKafkaProducer(
            **s.kafka_options(),
            acks="all",
            enable_idempotence=False,  # idempotence needs InitProducerId, which some brokers lack
            linger_ms=5,
            max_batch_size=1 << 20,
            # A dead letter carries a record the consumer could fetch (up to
            # max_partition_fetch_bytes) plus headers; the broker's topic limit still
            # applies, and dlq.py truncates what it refuses.
            max_request_size=8 << 20,
            client_id=f"{s.group_id}-dlq",
        )

    def consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        # Its fetcher reads records without aiokafka's reference cycle (worker/kafka_records.py).
        kafka_records.install()
        return AIOKafkaConsumer(
            **s.kafka_options(),
            group_id=s.group_id,
            client_id=s.group_id,
            enable_auto_commit=False,
            # Only for a partition the worker has not positioned itself: it seeks every
            # partition to its stored offset, or to the log start when there is none.
            auto_offset_reset="earliest",
            **fetch_sizes(s),
            isolation_level="read_committed",
            # How long the broker holds a fetch open waiting for data; also bounds how long
            # a record can sit on the broker before this worker sees it.
            fetch_max_wait_ms=s.fetch_wait_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
        )

    def reader(self, purpose: str = "log-ends", timeout_s: float | None = None) -> AIOKafkaConsumer:
        s = self.settings
        timeouts = {} if timeout_s is None else {"request_timeout_ms": int(timeout_s * 1000)}
        return broker.reader(
            s,
            f"{s.group_id}-{purpose}",
            # The end a worker reads to: the last stable offset.
            isolation_level="read_committed",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=64 << 10,
            **timeouts,
        )


def fetch_sizes(s: Settings) -> dict[str, int]:
    """What the fetcher buffers ahead of the batch counts towards memory too: no more than one
    batch's worth of bytes."""
    return {
        "max_partition_fetch_bytes": min(4 << 20, s.max_batch_bytes),
        "fetch_max_bytes": min(32 << 20, s.max_batch_bytes),
    }
