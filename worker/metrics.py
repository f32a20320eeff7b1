"""Prometheus metrics and the `/healthz`, `/readyz`, `/metrics` endpoints.

Each worker owns its registry (several workers can live in one process, as in the tests). The
HTTP server is a few lines of asyncio instead of prometheus_client's thread, so that `/readyz`
can ask the worker's own event loop whether the database answers right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger("worker.metrics")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumed = Counter(
            "worker_records_consumed", "Records consumed, by topic", ["topic"], registry=r
        )
        self.stored = Counter(
            "worker_records_stored",
            "Records stored in PostgreSQL, by topic and event type",
            ["topic", "event_type"],
            registry=r,
        )
        self.dead_letters = Counter(
            "worker_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.batch_duration = Histogram(
            "worker_batch_duration_seconds",
            "From fetch to committed transaction, per batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_records = Histogram(
            "worker_batch_records",
            "Records per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=r,
        )
        self.retries = Counter(
            "worker_retries",
            "Transient failures retried, by dependency",
            ["dependency"],
            registry=r,
        )
        self.fenced = Counter(
            "worker_offsets_fenced",
            "Batches rolled back because another worker owns the offsets",
            registry=r,
        )
        self.rereads = Counter(
            "worker_rereads",
            "Partitions read again from where their last batch ended because records the "
            "consumer returned were not taken into a batch (an error later in the same fetch, "
            "a poll while backing off), by topic",
            ["topic"],
            registry=r,
        )
        self.last_offset = Gauge(
            "worker_last_stored_offset",
            "Last offset committed to PostgreSQL, by partition",
            ["topic", "partition"],
            registry=r,
        )
        self.partition_stuck = Gauge(
            "worker_partition_stuck",
            "1 while a partition is paused on a record batch the consumer cannot decode",
            ["topic", "partition"],
            registry=r,
        )
        self.unreadable_batches = Counter(
            "worker_unreadable_batches",
            "Failed reads of record batches the consumer could not decode (corrupt, unknown "
            "codec), by partition; a stuck partition's retries count again",
            ["topic", "partition"],
            registry=r,
        )
        # Retention's and erasure's discards (docs/contract.md §7), by topic.
        self.expired = Counter(
            "worker_records_expired",
            "Records older than their topic's retention horizon: not stored, not "
            "dead-lettered, their offsets committed",
            ["topic"],
            registry=r,
        )
        self.erased = Counter(
            "worker_records_erased",
            "Records not stored because they name an erased candidate and were in the log when "
            "the erasure was made (worker forget)",
            ["topic"],
            registry=r,
        )
        # Freshness (worker/freshness.py): per partition, the Kafka timestamp and the event
        # instant of the last stored record, set per committed batch, exposed for owned
        # partitions only (FreshnessCollector) so a revoked partition's age does not grow here.
        self.freshness: dict[tuple[str, int], list[float | None]] = {}

    def zero(self, topics: Iterable[str], reasons: Iterable[str]) -> None:
        """Give the labelled counters whose labels are known in advance a 0 sample, so that
        dashboards and alert expressions have data (a rate of 0) before the first event, and
        a first burst shows as an increase from 0 rather than as a series born at its peak."""
        for reason in reasons:
            self.dead_letters.labels(reason)
        for topic in topics:
            self.consumed.labels(topic)
            self.expired.labels(topic)
            self.erased.labels(topic)
            self.rereads.labels(topic)
        for dependency in ("database", "kafka"):
            self.retries.labels(dependency)


class FreshnessCollector(Collector):
    """The freshness gauges of the owned partitions, read at scrape time."""

    def __init__(
        self,
        freshness: dict[tuple[str, int], list[float | None]],
        owned: Callable[[], Iterable[tuple[str, int]]],
    ) -> None:
        self._freshness = freshness
        self._owned = owned

    def collect(self) -> Iterator[GaugeMetricFamily]:
        record = GaugeMetricFamily(
            "worker_last_stored_record_timestamp_seconds",
            "Kafka timestamp of the last record committed, by owned partition",
            labels=["topic", "partition"],
        )
        event = GaugeMetricFamily(
            "worker_last_stored_event_timestamp_seconds",
            "Event instant (createdAt, date_modified, ...) of the last record stored that "
            "carries one, by owned partition",
            labels=["topic", "partition"],
        )
        for key in sorted(self._owned()):
            times = self._freshness.get(key)
            if times is None:
                continue
            labels = [key[0], str(key[1])]
            for family, value in zip((record, event), times, strict=True):
                if value is not None:
                    family.add_metric(labels, value)
        yield record
        yield event


class PausedCollector(Collector):
    """`worker_partition_paused`: 1 for an owned partition an operator paused (`worker
    pause`), 0 for the other owned ones; read at scrape time."""

    def __init__(self, paused: Callable[[], dict[tuple[str, int], bool]]) -> None:
        self._paused = paused

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "worker_partition_paused",
            "1 while an operator holds the partition paused (worker pause), by owned partition",
            labels=["topic", "partition"],
        )
        for (topic, partition), paused in sorted(self._paused().items()):
            family.add_metric([topic, str(partition)], 1 if paused else 0)
        yield family


class LagCollector(Collector):
    """Consumer lag per owned partition, computed at scrape time from the fetcher's
    high-water marks and the worker's committed positions."""

    def __init__(self, lag: Callable[[], dict[tuple[str, int], int]]) -> None:
        self._lag = lag

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "worker_consumer_lag",
            "High-water mark minus the next offset to commit, by owned partition",
            labels=["topic", "partition"],
        )
        for (topic, partition), lag in sorted(self._lag().items()):
            family.add_metric([topic, str(partition)], lag)
        yield family


class HealthServer:
    """`GET /healthz` (alive), `/readyz` (able to make progress), `/metrics`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
        host: str,
        port: int,
    ) -> None:
        self._registry = registry
        self._readiness = readiness
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("health and metrics endpoint listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (line := await asyncio.wait_for(reader.readline(), 5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                del line  # headers are not needed
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, ctype, body = await self._route(parts[0] if parts else "", path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4", generate_latest(self._registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            ready, detail = await self._readiness()
            body = (json.dumps({"ready": ready, **detail}) + "\n").encode()
            return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body
        return "404 Not Found", "text/plain", b"not found\n"
