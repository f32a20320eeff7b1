"""Tracing with OpenTelemetry (docs/contract.md §8): one span per committed batch and topic,
linked to the records it stored.

The worker depends on the API only (`opentelemetry-api`); the SDK and the OTLP exporter are the
optional extra `event-worker[otel]`. Tracing is on when an SDK TracerProvider is the global one:

- `configure_from_env()` (called by `worker run`) installs one when `OTEL_TRACES_EXPORTER`
  names an exporter (`otlp`, `console`; `none` or unset: off), configured as the SDK reads the
  standard variables: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` for the resource,
  `OTEL_TRACES_SAMPLER(_ARG)` for sampling, `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT/HEADERS/
  PROTOCOL` for the exporter, `OTEL_BSP_*` for the batch processor, `OTEL_SPAN_LINK_COUNT_LIMIT`
  for the links a span keeps;
- a provider already installed (by `opentelemetry-instrument`, or by an embedding program) is
  left as it is.

Without one, the API's no-op provider answers: each batch starts one non-recording span per
topic, sees `is_recording()` false and returns. Nothing here runs per record unless a span
records, so tracing that is not configured costs a few calls per batch (bench: `tracing-off`).

What a committed batch gives, per topic (messaging semantic conventions, v1.26 and later):

- a CONSUMER span `process <topic>` from the batch's first fetch to its Kafka commit, with
  `messaging.system=kafka`, `messaging.operation.type=process`, `messaging.operation.name=
  process`, `messaging.destination.name`, `messaging.consumer.group.name`,
  `messaging.batch.message_count`, and `messaging.destination.partition.id` when the batch
  holds one partition of the topic;
- a link to the context of each record's W3C `traceparent` header (records without one, or
  with one that does not parse, are not linked), at most MAX_LINKS: `worker.links.dropped`
  counts the others, so a trace of a large batch says how many producers it does not show;
- the database transaction that stored the batch as a CLIENT child span
  (`db.system.name=postgresql`), under the span of the batch's first topic: a lane commits
  both topics of its batch in one transaction.

Spans are built once the batch has committed, from the instants recorded on the way
(`time.time_ns()`, three calls per batch), so the commit path carries no tracing state and a
batch rolled back, fenced or abandoned leaves no span: a span means stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = structlog.get_logger("worker.tracing")

# Links per span. The SDK's own default limit (OTEL_SPAN_LINK_COUNT_LIMIT) is also 128; ours
# bounds the header parsing too, and lets the span say how many it left out.
MAX_LINKS = 128
TRACEPARENT = "traceparent"
TRACER_NAME = "event-worker"

_propagator = TraceContextTextMapPropagator()


class BatchTracer:
    """Builds the spans of committed batches for one worker."""

    def __init__(
        self,
        group_id: str,
        database_url: str,
        provider: trace.TracerProvider | None = None,
    ) -> None:
        self._group_id = group_id
        self._database = urlsplit(database_url).path.lstrip("/") or "postgres"
        # None: the global provider, looked up per batch (installed after this object, by
        # configure_from_env or opentelemetry-instrument, it is still found).
        self._provider = provider

    def committed(
        self,
        parts: Sequence[tuple[str, int, Sequence[Any]]],
        started_ns: int,
        transaction_ns: tuple[int, int] | None,
        ended_ns: int,
    ) -> None:
        """Spans for a batch that committed: `parts` as (topic, partition, records)."""
        tracer = trace.get_tracer(TRACER_NAME, tracer_provider=self._provider)
        by_topic: dict[str, list[tuple[int, Sequence[Any]]]] = {}
        for topic, partition, records in parts:
            by_topic.setdefault(topic, []).append((partition, records))
        first = True
        for topic in sorted(by_topic):
            span = tracer.start_span(
                f"process {topic}",
                kind=SpanKind.CONSUMER,
                start_time=started_ns,
                # A batch is its own root: the records' producers are linked, not parents.
                context=otel_context.Context(),
            )
            if not span.is_recording():
                # The no-op provider, or the sampler said no: nothing per record.
                span.end(end_time=ended_ns)
                continue
            partitions = by_topic[topic]
            records = [r for _, rs in partitions for r in rs]
            span.set_attributes(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": topic,
                    "messaging.consumer.group.name": self._group_id,
                    "messaging.batch.message_count": len(records),
                }
            )
            if len(partitions) == 1:
                span.set_attribute("messaging.destination.partition.id", str(partitions[0][0]))
            links, dropped = record_links(records)
            for link in links:
                span.add_link(link.context, link.attributes)
            span.set_attribute("worker.links.dropped", dropped)
            if first and transaction_ns is not None:
                self._transaction(tracer, span, transaction_ns)
            first = False
            span.end(end_time=ended_ns)

    def _transaction(self, tracer: trace.Tracer, parent: trace.Span, at: tuple[int, int]) -> None:
        db = tracer.start_span(
            f"BATCH {self._database}",
            kind=SpanKind.CLIENT,
            start_time=at[0],
            context=trace.set_span_in_context(parent),
        )
        db.set_attributes(
            {
                "db.system.name": "postgresql",
                "db.namespace": self._database,
                "db.operation.name": "BATCH",
            }
        )
        db.end(end_time=at[1])


def record_links(records: Iterable[Any]) -> tuple[list[Link], int]:
    """Links to the `traceparent` contexts of `records` (at most MAX_LINKS, in offset order)
    and how many more there were."""
    links: list[Link] = []
    dropped = 0
    for record in records:
        value = _traceparent(record.headers)
        if value is None:
            continue
        if len(links) >= MAX_LINKS:
            dropped += 1
            continue
        ctx = trace.get_current_span(_propagator.extract({TRACEPARENT: value})).get_span_context()
        if ctx.is_valid:
            attributes = {
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
            }
            links.append(Link(ctx, attributes))
    return links, dropped


def _traceparent(headers: Sequence[tuple[str, bytes | None]] | None) -> str | None:
    for key, value in headers or ():
        if key == TRACEPARENT and value:
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


# -- configuration ----------------------------------------------------------------------------


def configure_from_env() -> Callable[[], None]:
    """Install an SDK TracerProvider as the OTEL_* variables ask, if they ask for one and none
    is installed; return what flushes it at exit (a no-op when nothing was installed)."""
    names = [
        n.strip().lower()
        for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if n.strip() and n.strip().lower() != "none"
    ]
    if not names or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return _nothing
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_TRACES_EXPORTER is set but the OpenTelemetry SDK is not installed; "
            "tracing stays off (install event-worker[otel])",
            exporters=names,
        )
        return _nothing
    provider = TracerProvider(resource=Resource.create())
    for name in names:
        exporter = _exporter(name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on", exporters=names)
    return provider.shutdown


def _exporter(name: str) -> Any:
    """The exporter OTEL_TRACES_EXPORTER names, found as the SDK finds them (entry points)."""
    if name == "otlp":
        protocol = os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        )
        name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    if not found:
        log.warning("no such trace exporter installed; skipped", exporter=name)
        return None
    return found[0].load()()


def _nothing() -> None:
    return None
