"""Freshness gauges (docs/contract.md §8, worker/freshness.py): per owned partition, the Kafka
timestamp and the event instant of the last record a committed batch stored, in seconds since
the epoch.

The pure part (which instant each event type carries, the look-back over items without one)
is checked without a broker; the gauges themselves through a real worker, real broker and
real PostgreSQL, with records whose Kafka timestamps the test sets."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from support import infra
from support.e2e import http_get, running_worker, settings_for, wait_for
from support.event_builders import encode, proctoring, sample

from schemas.interview import INTERVIEW_STRUCTS, InterviewUnion
from schemas.proctoring import ProctoringUnion
from worker.dev.seeds import interview_samples
from worker.dev.stack import free_port
from worker.freshness import LOOKBACK, event_instant, last_event_time, record_time
from worker.handlers.base import Item

RECORD = "worker_last_stored_record_timestamp_seconds"
EVENT = "worker_last_stored_event_timestamp_seconds"


def _utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _interview(body: bytes) -> Item:
    return Item(msgspec.json.decode(body, type=InterviewUnion), "t", 0, 0)


def test_every_interview_type_is_declared_and_instants_come_from_the_data() -> None:
    by_tag = {}
    for body in interview_samples():
        item = _interview(body)
        by_tag[type(item.event)] = event_instant(item.event)
    assert set(by_tag) == set(INTERVIEW_STRUCTS)
    # date_modified wins over date_created where both exist.
    modified = sample(
        interview_samples()[-1],
        date_created="2025-01-01T00:00:00Z",
        date_modified="2025-02-01T00:00:00Z",
    )
    assert last_event_time([_interview(modified)]) == _utc("2025-02-01T00:00:00+00:00")


def test_the_last_item_with_an_instant_is_taken_within_the_lookback() -> None:
    def event(at: str) -> Item:
        body = encode(proctoring(createdAt=at))
        return Item(msgspec.json.decode(body, type=ProctoringUnion), "t", 0, 0)

    recording = next(
        _interview(b)
        for b in interview_samples()
        if event_instant(_interview(b).event) is None  # a type without an instant
    )
    early, late = event("2025-01-01T00:00:00Z"), event("2024-01-01T00:00:00Z")
    # The last one with an instant, not the largest.
    assert last_event_time([early, late]) == _utc("2024-01-01T00:00:00+00:00")
    assert last_event_time([early, *[recording] * (LOOKBACK - 1)]) == _utc(
        "2025-01-01T00:00:00+00:00"
    )
    assert last_event_time([early, *[recording] * LOOKBACK]) is None
    assert last_event_time([]) is None


def test_record_time_is_seconds_and_none_without_a_timestamp() -> None:
    class R:
        def __init__(self, ts: int | None) -> None:
            self.timestamp = ts

    assert record_time(R(1_700_000_000_123)) == 1_700_000_000.123
    assert record_time(R(-1)) is None
    assert record_time(R(None)) is None


def _gauges(body: bytes, name: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == name:
                out[(s.labels["topic"], s.labels["partition"])] = s.value
    return out


@pytest.mark.integration
async def test_gauges_follow_the_last_stored_record_of_each_partition(
    kafka_bootstrap: str, database_url: str, topics: infra.Topics
) -> None:
    settings = settings_for(
        kafka_bootstrap, database_url, topics, metrics_port=free_port(), metrics_host="127.0.0.1"
    )
    kafka_ms = [1_700_000_000_000, 1_700_000_100_000, 1_700_000_050_000]
    created = ["2025-09-21T12:00:00Z", "2025-09-21T12:05:00Z", "2025-09-21T11:00:00Z"]
    async with running_worker(settings) as worker:
        port = settings.metrics_port
        assert _gauges((await http_get(port, "/metrics"))[1], RECORD) == {}
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False
        )
        await producer.start()
        try:
            for ms, at in zip(kafka_ms, created, strict=True):
                value = encode(proctoring(createdAt=at, examId=f"exam-{ms}"))
                await producer.send_and_wait(
                    topics.proctoring, value, key=b"k", partition=0, timestamp_ms=ms
                )
            # A bad record last: its offset commits, so its Kafka timestamp is the record
            # gauge's; it has no event, so the event gauge keeps the last stored one's.
            await producer.send_and_wait(
                topics.proctoring, b"not json", partition=0, timestamp_ms=1_700_000_200_000
            )
        finally:
            await producer.stop()

        async def consumed() -> bool:
            return worker.stats["consumed"] >= 4

        await wait_for(consumed, 60, "the four records")
        body = (await http_get(port, "/metrics"))[1]
        key = (topics.proctoring, "0")
        assert _gauges(body, RECORD)[key] == 1_700_000_200.0
        assert _gauges(body, EVENT)[key] == _utc("2025-09-21T11:00:00+00:00")
        # Only partitions with a stored record have the gauges; the interview topic has none.
        assert set(_gauges(body, RECORD)) == {key}
