"""Tracing (docs/contract.md §8, worker/tracing.py) with the SDK's in-memory exporter.

Through a real worker, broker and PostgreSQL: one CONSUMER span per committed batch and topic,
named and attributed per the messaging conventions, linked to the `traceparent` of each
record it stored (at most MAX_LINKS, the rest counted), with the transaction as its CLIENT
child. Without a provider (the API's no-op) a batch's records are never looked at.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import infra
from support.e2e import running_worker, settings_for, wait_for
from support.event_builders import encode, proctoring

from worker import tracing
from worker.tracing import MAX_LINKS, BatchTracer, record_links


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


def _provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _traceparent() -> tuple[str, int]:
    trace_id = int.from_bytes(os.urandom(16), "big") or 1
    span_id = int.from_bytes(os.urandom(8), "big") or 1
    return f"00-{trace_id:032x}-{span_id:016x}-01", trace_id


class _Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes | None], ...]


# -- pure parts ---------------------------------------------------------------------------


def test_links_are_capped_and_the_rest_counted() -> None:
    records = []
    expected = []
    for offset in range(MAX_LINKS + 40):
        value, trace_id = _traceparent()
        records.append(_Record("t", 3, offset, (("other", b"x"), ("traceparent", value.encode()))))
        expected.append(trace_id)
    records.insert(5, _Record("t", 3, 999, ()))  # no header: neither linked nor dropped
    records.insert(7, _Record("t", 3, 998, (("traceparent", b"garbage"),)))  # unparseable
    records.insert(9, _Record("t", 3, 997, (("traceparent", b"\xff\xfe"),)))  # not ASCII
    links, dropped = record_links(records)
    assert len(links) == MAX_LINKS
    assert [link.context.trace_id for link in links] == expected[:MAX_LINKS]
    assert dropped == 40
    assert links[0].attributes == {
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 0,
    }


class _Untouchable:
    """A record whose headers must not be read."""

    topic, partition, offset = "t", 0, 0

    @property
    def headers(self) -> Any:
        raise AssertionError("a record was read with tracing off")


def test_without_a_provider_no_record_is_looked_at() -> None:
    # The API's default provider (nothing configured in this process): no-op spans.
    BatchTracer("g", "postgresql://h/db").committed(
        [("t", 0, [_Untouchable()] * 1000)], 1, (2, 3), 4
    )


def test_a_non_recording_span_reads_no_record(exporter: InMemorySpanExporter) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    BatchTracer("g", "postgresql://h/db", provider).committed(
        [("t", 0, [_Untouchable()])], 1, (2, 3), 4
    )
    assert exporter.get_finished_spans() == ()


def test_configure_from_env_installs_nothing_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert tracing.configure_from_env() is tracing._nothing
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.configure_from_env() is tracing._nothing
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_the_exporters_named_by_the_environment_are_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:1/v1/traces")
    assert isinstance(tracing._exporter("otlp"), OTLPSpanExporter)
    assert isinstance(tracing._exporter("console"), ConsoleSpanExporter)
    assert tracing._exporter("nonesuch") is None


# -- through the worker -------------------------------------------------------------------


def _by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


@pytest.mark.integration
async def test_spans_links_and_the_database_child_through_the_worker(
    kafka_bootstrap: str,
    database_url: str,
    topics: infra.Topics,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    produced: dict[int, int] = {}  # trace id -> offset order on partition 0
    records: list[infra.Record] = []
    count = 3 * MAX_LINKS  # produced before the worker starts: the first batch holds > MAX
    for n in range(count):
        value, trace_id = _traceparent()
        produced[trace_id] = n
        event = encode(proctoring(examId=f"exam-{n % 5}", description=f"n{n}"))
        records.append((b"k", event, [("traceparent", value.encode())]))
    plain = [(b"k", encode(proctoring(examId="exam-plain"))) for _ in range(4)]
    await infra.produce(kafka_bootstrap, topics.proctoring, [*records, *plain])
    await infra.produce(
        kafka_bootstrap, topics.interview, [(b"k", encode({"event": "nope", "data": {}}))]
    )

    provider = _provider(exporter)
    monkeypatch.setattr(
        "worker.consumer.BatchTracer", functools.partial(BatchTracer, provider=provider)
    )
    settings = settings_for(kafka_bootstrap, database_url, topics, max_batch_records=10_000)
    async with running_worker(settings) as worker:

        async def consumed() -> bool:
            return worker.stats["consumed"] >= count + len(plain) + 1

        await wait_for(consumed, 60, "every record")
    spans = exporter.get_finished_spans()
    consumer_spans = _by_kind(spans, SpanKind.CONSUMER)
    assert consumer_spans, spans
    by_topic: dict[str, list[ReadableSpan]] = {}
    for span in consumer_spans:
        attrs = dict(span.attributes or {})
        topic = attrs["messaging.destination.name"]
        by_topic.setdefault(topic, []).append(span)
        assert span.name == f"process {topic}"
        assert attrs["messaging.system"] == "kafka"
        assert attrs["messaging.operation.type"] == "process"
        assert attrs["messaging.operation.name"] == "process"
        assert attrs["messaging.consumer.group.name"] == topics.group_id
        assert attrs["messaging.batch.message_count"] >= 1
        assert span.parent is None  # a batch is a root; its records' producers are links
    # Both topics' records were committed, each in spans of its own topic.
    assert set(by_topic) == {topics.proctoring, topics.interview}
    assert (
        sum(s.attributes["messaging.batch.message_count"] for s in by_topic[topics.interview]) == 1
    )
    proctoring_spans = by_topic[topics.proctoring]
    assert sum(
        s.attributes["messaging.batch.message_count"] for s in proctoring_spans
    ) == count + len(plain)

    # Every traceparent is linked or counted as dropped, once; links follow offset order.
    linked = [link.context.trace_id for s in proctoring_spans for link in s.links]
    dropped = sum(s.attributes["worker.links.dropped"] for s in proctoring_spans)
    assert len(set(linked)) == len(linked) and set(linked) <= set(produced)
    assert len(linked) + dropped == count
    big = [s for s in proctoring_spans if s.attributes["messaging.batch.message_count"] > MAX_LINKS]
    assert big, "no batch had more records than the link cap"
    for span in big:
        n = span.attributes["messaging.batch.message_count"]
        assert len(span.links) == MAX_LINKS
        # Every record has a traceparent but the `plain` ones, produced last.
        assert n - len(plain) - MAX_LINKS <= span.attributes["worker.links.dropped"]
        assert span.attributes["worker.links.dropped"] <= n - MAX_LINKS
    for span in proctoring_spans:
        order = [produced[link.context.trace_id] for link in span.links]
        assert order == sorted(order)
        single = {link.attributes["messaging.destination.partition.id"] for link in span.links}
        if "messaging.destination.partition.id" in span.attributes:
            assert single <= {span.attributes["messaging.destination.partition.id"]}

    # The transaction: a CLIENT child of the batch's (first topic's) span, inside it.
    database = database_url.rsplit("/", 1)[1]
    clients = _by_kind(spans, SpanKind.CLIENT)
    assert clients
    parents = {s.context.span_id: s for s in consumer_spans}
    for db in clients:
        assert db.name == f"BATCH {database}"
        assert db.attributes["db.system.name"] == "postgresql"
        assert db.attributes["db.namespace"] == database
        parent = parents[db.parent.span_id]
        assert db.context.trace_id == parent.context.trace_id
        assert parent.start_time <= db.start_time <= db.end_time <= parent.end_time
    # One transaction per committed batch: one per span of a batch's first topic.
    assert len(clients) == len({(s.start_time, s.end_time) for s in consumer_spans})
