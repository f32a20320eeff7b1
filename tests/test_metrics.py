"""/metrics counters move by exactly what was stored and dead-lettered; /readyz follows the
database; /healthz answers. Real broker, real PostgreSQL, the worker in-process."""

from __future__ import annotations

import json

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import infra
from support.e2e import http_get, running_worker, settings_for, wait_for

from worker.dev.seeds import interview_samples, proctoring_samples
from worker.dev.stack import free_port


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_metrics_count_exactly_what_was_stored_and_dead_lettered(
    kafka_bootstrap: str, database_url: str, topics: infra.Topics
) -> None:
    settings = settings_for(
        kafka_bootstrap, database_url, topics, metrics_port=free_port(), metrics_host="127.0.0.1"
    )
    async with running_worker(settings) as worker:
        port = settings.metrics_port
        status, _ = await http_get(port, "/healthz")
        assert status == 200
        before = _samples((await http_get(port, "/metrics"))[1])
        assert _total(before, "worker_records_stored_total") == 0

        await infra.produce(
            kafka_bootstrap, topics.interview, [(b"c", v) for v in interview_samples()]
        )
        proctoring = proctoring_samples()
        bad = [b"not json", b"", b'{"type": "NOPE", "examId": "e", "candidateId": "c"}']
        await infra.produce(
            kafka_bootstrap, topics.proctoring, [(b"e:c", v) for v in [*proctoring, *bad]]
        )
        produced = len(interview_samples()) + len(proctoring) + len(bad)

        async def consumed_all() -> bool:
            return worker.stats["consumed"] >= produced

        await wait_for(consumed_all, 90, "the worker to consume every record")
        after = _samples((await http_get(port, "/metrics"))[1])

        stored = _total(after, "worker_records_stored_total")
        assert stored == len(interview_samples()) + len(proctoring)
        assert _total(after, "worker_dead_letters_total") == len(bad)
        assert _total(after, "worker_records_consumed_total") == produced
        reasons = {
            dict(labels)["reason"]: v
            for (name, labels), v in after.items()
            if name == "worker_dead_letters_total"
        }
        # Every reason has a sample from the start (0 until it happens).
        assert reasons == {
            "invalid_json": 1,
            "empty_payload": 1,
            "unknown_event_type": 1,
            "schema_violation": 0,
            "rejected_by_database": 0,
        }
        by_type = {
            dict(labels)["event_type"]: v
            for (name, labels), v in after.items()
            if name == "worker_records_stored_total"
        }
        assert by_type["interview_report.created"] == 1
        assert by_type["TAB_NOT_FOCUS"] == 1
        assert _total(after, "worker_batch_duration_seconds_count") >= 1

        # The counters agree with the tables.
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetchval("SELECT count(*) FROM proctoring_events")
            offsets = await conn.fetchval("SELECT sum(next_offset) FROM consumer_offsets")
        finally:
            await conn.close()
        assert rows == len(proctoring)
        assert offsets == produced


async def test_readyz_follows_the_database(
    kafka_bootstrap: str, database_url: str, topics: infra.Topics, pg_stack: infra.PgStack
) -> None:
    if pg_stack.server is None:
        pytest.skip("PostgreSQL is external here; this test must stop and start it")
    settings = settings_for(
        kafka_bootstrap, database_url, topics, metrics_port=free_port(), metrics_host="127.0.0.1"
    )
    async with running_worker(settings):
        port = settings.metrics_port

        async def ready() -> bool:
            return (await http_get(port, "/readyz"))[0] == 200

        async def unready() -> bool:
            return (await http_get(port, "/readyz"))[0] == 503

        await wait_for(ready, 60, "/readyz to report ready")
        pg_stack.server.stop()
        try:
            await wait_for(unready, 30, "/readyz to report unready while PostgreSQL is down")
            _, body = await http_get(port, "/readyz")
            assert json.loads(body)["database"] is False
            assert (await http_get(port, "/healthz"))[0] == 200
        finally:
            pg_stack.server.start()
        await wait_for(ready, 60, "/readyz to report ready again")
