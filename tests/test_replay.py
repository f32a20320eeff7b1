"""Replay (docs/contract.md §5, "Exactly-once effect"): a partition without a `consumer_offsets`
row is read from the start of its log, never from Kafka's committed offset, and reading it again
changes no table.

The worker commits its offsets to Kafka too (for lag tools), so after a first run Kafka's
committed offsets sit at the log end: a worker that fell back on them would replay nothing.
Three ways to ask for a replay are checked, each against a table snapshot taken after the first
pass: rows deleted while no worker runs, rows deleted while one runs, and `worker offsets reset
--to-earliest --execute` while one runs.

A running worker notices a moved (or deleted) row when a commit's compare-and-set fails, that
is at a partition's next batch; an idle partition has no batch. So after changing the rows
under a running worker, these tests produce one record into every partition: a record that is
not JSON, which goes to the dead-letter topic and leaves every table as it is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from support.e2e import (
    expected_offsets,
    fetch,
    running_worker,
    settings_for,
    snapshot_diff,
    table_snapshot,
    wait_for_offsets,
    wait_for_stats,
)
from support.infra import Topics, produce
from support.offsets import execute, produce_to, run_offsets_cli

from schemas.proctoring import FLAG_TYPES
from worker.config import Settings
from worker.consumer import Worker
from worker.dev.seeds import interview_samples, proctoring_samples
from worker.metrics import Metrics
from worker.migrate import migrate_url
from worker.ownership import Ownership

pytestmark = pytest.mark.integration

SESSIONS = 8
FLAGS_PER_SESSION = 12
DUPLICATES_EVERY = 4  # every 4th generated flag is sent twice: counters count distinct events
PARTITIONS = 4  # per consumed topic (infra.make_topics)
MEDIA_TYPES = {"FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED", "PERIODIC_SNAPSHOT"}
NOT_JSON = b"\xffnot json"

Record = tuple[bytes | None, bytes | None]


def _proctoring_stream() -> list[Record]:
    """The 13 sample events of each session, then generated flags (some twice)."""
    base = dt.datetime(2025, 9, 21, 13, tzinfo=dt.UTC)
    records: list[Record] = []
    for s in range(SESSIONS):
        exam, candidate = f"exam-{s % 3}", f"cand-{s}"
        key = f"{exam}:{candidate}".encode()
        records.extend((key, value) for value in proctoring_samples(exam, candidate))
        for n in range(FLAGS_PER_SESSION):
            kind = sorted(FLAG_TYPES)[n % len(FLAG_TYPES)]
            body: dict[str, Any] = {
                "examId": exam,
                "candidateId": candidate,
                "type": kind,
                "createdAt": (base + dt.timedelta(seconds=n * 5 + s)).isoformat(),
                "description": f"flag {n}",
            }
            if kind in MEDIA_TYPES:
                body["mediaUrl"] = f"https://media.example.com/{exam}/{candidate}/{n}.jpg"
            value = json.dumps(body).encode()
            records.append((key, value))
            if n % DUPLICATES_EVERY == 0:
                records.append((key, value))
    return records


def _interview_stream() -> list[Record]:
    return [
        (json.loads(value)["data"]["candidate_id"].encode(), value) for value in interview_samples()
    ]


async def _produce_stream(kafka_bootstrap: str, topics: Topics) -> dict[tuple[str, int], int]:
    """Both streams; returns the log end of every partition they reached."""
    metadata = await produce(kafka_bootstrap, topics.proctoring, _proctoring_stream())
    metadata += await produce(kafka_bootstrap, topics.interview, _interview_stream())
    ends = expected_offsets(metadata)
    spread = Counter(topic for topic, _ in ends)
    # A replay over a single partition per topic would prove little about "every partition".
    assert spread[topics.proctoring] >= 2 and spread[topics.interview] >= 2, ends
    return ends


def _stream_size() -> int:
    return len(_proctoring_stream()) + len(_interview_stream())


async def _nudge_every_partition(kafka_bootstrap: str, topics: Topics) -> None:
    """One dead letter into each partition, so that each has a batch to commit (and be fenced
    on)."""
    for topic in (topics.proctoring, topics.interview):
        await produce_to(
            kafka_bootstrap, topic, {p: [(None, NOT_JSON, None)] for p in range(PARTITIONS)}
        )


def _plus_one(ends: dict[tuple[str, int], int], topics: Topics) -> dict[tuple[str, int], int]:
    every = {(t, p): 0 for t in (topics.proctoring, topics.interview) for p in range(PARTITIONS)}
    return {key: n + 1 for key, n in {**every, **ends}.items()}


async def _distinct_counts(database_url: str) -> dict[tuple[str, str], tuple[int, int]]:
    """What the session counters must say: distinct flag events and distinct events."""
    rows = await fetch(
        database_url,
        "SELECT exam_id, candidate_id, type FROM proctoring_events",
    )
    flags: Counter[tuple[str, str]] = Counter()
    events: Counter[tuple[str, str]] = Counter()
    for r in rows:
        key = (r["exam_id"], r["candidate_id"])
        events[key] += 1
        flags[key] += r["type"] in FLAG_TYPES
    return {key: (flags[key], events[key]) for key in events}


async def _counters(database_url: str) -> dict[tuple[str, str], tuple[int, int]]:
    rows = await fetch(
        database_url,
        "SELECT exam_id, candidate_id, flag_count, event_count FROM proctoring_sessions",
    )
    return {(r["exam_id"], r["candidate_id"]): (r["flag_count"], r["event_count"]) for r in rows}


async def _first_pass(
    kafka_bootstrap: str, database_url: str, topics: Topics, worker: Worker
) -> tuple[dict[tuple[str, int], int], Any]:
    ends = await _produce_stream(kafka_bootstrap, topics)
    await wait_for_offsets(database_url, topics.group_id, ends)
    await wait_for_stats(worker, consumed=_stream_size())
    snapshot = await table_snapshot(database_url, offsets=False)
    counters = await _counters(database_url)
    assert counters == await _distinct_counts(database_url)
    assert sum(flags for flags, _ in counters.values()) == SESSIONS * (FLAGS_PER_SESSION + 5)
    return ends, snapshot


def _settings(kafka_bootstrap: str, database_url: str, topics: Topics) -> Settings:
    # Small batches: the stream takes several, and "within one batch" means something.
    return settings_for(kafka_bootstrap, database_url, topics, max_batch_records=20)


async def _kafka_committed(settings: Settings, ends: dict[tuple[str, int], int]) -> Any:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        return {key: await consumer.committed(TopicPartition(*key)) for key in ends}
    finally:
        await consumer.stop()


async def test_deleted_rows_replay_from_the_log_start_and_change_nothing(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    settings = _settings(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        ends, before = await _first_pass(kafka_bootstrap, database_url, topics, worker)
    offsets_before = await table_snapshot(database_url)
    # The trap: Kafka's committed offsets are at the log end.
    assert await _kafka_committed(settings, ends) == ends

    await execute(database_url, "DELETE FROM consumer_offsets")
    async with running_worker(settings) as worker:
        await wait_for_offsets(database_url, topics.group_id, ends, timeout=45)
        # Every record read again, from offset 0 of every partition.
        await wait_for_stats(worker, consumed=_stream_size())
    after = await table_snapshot(database_url)
    assert after == offsets_before, snapshot_diff(offsets_before, after)
    assert {t: rows for t, rows in after.items() if t != "consumer_offsets"} == before
    assert await _counters(database_url) == await _distinct_counts(database_url)


async def test_rows_deleted_under_a_running_worker_replay_from_the_log_start(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    settings = _settings(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        ends, before = await _first_pass(kafka_bootstrap, database_url, topics, worker)
        await execute(database_url, "DELETE FROM consumer_offsets")
        await _nudge_every_partition(kafka_bootstrap, topics)
        nudges = 2 * PARTITIONS
        await wait_for_offsets(database_url, topics.group_id, _plus_one(ends, topics), timeout=45)
        # The first pass, then everything again plus the nudges (their first delivery was
        # fenced, so it is not counted).
        await wait_for_stats(worker, consumed=2 * _stream_size() + nudges, dead_lettered=nudges)
    after = await table_snapshot(database_url, offsets=False)
    assert after == before, snapshot_diff(before, after)
    assert await _counters(database_url) == await _distinct_counts(database_url)


async def test_reset_to_earliest_under_a_running_worker_replays_within_one_batch(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    settings = _settings(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        ends, before = await _first_pass(kafka_bootstrap, database_url, topics, worker)
        reset = await run_offsets_cli(settings, "reset", "--to-earliest", "--execute")
        assert reset.code == 0, reset
        stored = await fetch(database_url, "SELECT next_offset FROM consumer_offsets")
        assert [r["next_offset"] for r in stored] == [0] * (2 * PARTITIONS), reset
        await _nudge_every_partition(kafka_bootstrap, topics)
        nudges = 2 * PARTITIONS
        await wait_for_offsets(database_url, topics.group_id, _plus_one(ends, topics), timeout=45)
        await wait_for_stats(worker, consumed=2 * _stream_size() + nudges, dead_lettered=nudges)
        assert worker.metrics.fenced._value.get() >= 1  # type: ignore[attr-defined]
    after = await table_snapshot(database_url, offsets=False)
    assert after == before, snapshot_diff(before, after)
    assert await _counters(database_url) == await _distinct_counts(database_url)


# -- the log start is not always 0 -------------------------------------------------------------


class _Consumer:
    """What `Ownership.position_pending` and `.refence` use of AIOKafkaConsumer, with a log
    that starts at a chosen offset (retention has deleted the records before it): the
    embedded broker cannot delete records, so a stand-in plays the broker here."""

    def __init__(self, assigned: set[TopicPartition], starts: dict[TopicPartition, int]) -> None:
        self._assigned = assigned
        self._starts = starts
        self.seeks: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    def resume(self, *tps: TopicPartition) -> None:
        pass

    def pause(self, *tps: TopicPartition) -> None:
        pass

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._starts[tp] for tp in tps}


async def test_a_partition_without_a_row_starts_at_its_log_start_offset(
    database_url: str, topics: Topics
) -> None:
    await migrate_url(database_url)
    settings = dataclasses.replace(
        Settings(),
        database_url=database_url,
        group_id=topics.group_id,
        proctoring_topic=topics.proctoring,
        interview_topic=topics.interview,
    )
    kept, retained = TopicPartition(topics.proctoring, 0), TopicPartition(topics.proctoring, 1)
    consumer = _Consumer({kept, retained}, {kept: 30, retained: 40})
    await execute(
        database_url,
        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
        "VALUES ($1, $2, 0, 70)",
        topics.group_id,
        topics.proctoring,
    )

    async def once(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await fn()

    ownership = Ownership(settings, Metrics(), once)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        ownership.attach(pool, consumer)
        ownership.assigned({kept, retained})
        await ownership.position_pending()
        assert consumer.seeks == {kept: 70, retained: 40}
        # No row stays "no row": the first commit creates it (compare-and-set from None).
        assert ownership.stored_offsets() == {kept: 70, retained: None}

        # Fenced, and the row is gone (deleted by an operator): from the log start again.
        consumer.seeks.clear()
        await execute(database_url, "DELETE FROM consumer_offsets")
        await ownership.refence({kept})
        assert consumer.seeks == {kept: 30}
        assert ownership.stored_offsets()[kept] is None
    finally:
        await pool.close()


async def test_idle_partitions_follow_a_reset_without_new_records(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    """No record arrives after the reset, so no commit meets the compare-and-set: the worker
    must notice the moved rows by itself (it looks every few seconds) and replay."""
    settings = _settings(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        ends, before = await _first_pass(kafka_bootstrap, database_url, topics, worker)
        reset = await run_offsets_cli(settings, "reset", "--to-earliest", "--execute")
        assert reset.code == 0, reset
        await wait_for_stats(worker, consumed=2 * _stream_size())
        await wait_for_offsets(database_url, topics.group_id, ends, timeout=45)
    after = await table_snapshot(database_url, offsets=False)
    assert after == before, snapshot_diff(before, after)
    assert await _counters(database_url) == await _distinct_counts(database_url)
