"""What the commit path does with records and the retention horizon (docs/contract.md §7),
played on the real Worker with a scripted Kafka (tests/support/scripted_kafka.py: records with
the Kafka timestamps the test chooses) and a real PostgreSQL.

- A current system-check event whose browser clock says 1970 is stored; only its
  `system_checks` row, whose instant retention has dropped, is not (defect 8 of issue 25).
- A record whose own time runs more than an hour ahead of its Kafka timestamp is aged by the
  timestamp (a replayed old record dated 2099 is expired, a current one is kept), in both
  topics; an interview record without a time is aged by its timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition
from support import infra
from support.e2e import settings_for
from support.scripted_kafka import RunningWorker, ScriptedClients, start_worker

from worker import retention
from worker.config import Settings
from worker.horizon import age_of
from worker.migrate import migrate_url

pytestmark = pytest.mark.integration

UTC = dt.UTC
PROCTORING = "retained.proctoring"
INTERVIEW = "retained.interview"
P0 = TopicPartition(PROCTORING, 0)
I0 = TopicPartition(INTERVIEW, 0)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def settings(database_url: str, **overrides: Any) -> Settings:
    topics = infra.Topics(
        proctoring=PROCTORING,
        interview=INTERVIEW,
        dlq="retained.dlq",
        group_id=infra.unique_name("g_"),
    )
    tuned: dict[str, Any] = {"fetch_wait_ms": 20, "db_lanes": 1, "shutdown_timeout_s": 10.0}
    return settings_for("scripted:9092", database_url, topics, **{**tuned, **overrides})


def millis(instant: dt.datetime) -> int:
    return int(instant.timestamp() * 1000)


def system_check(created: dt.datetime, checked: dt.datetime, exam: str = "exam") -> bytes:
    return json.dumps(
        {
            "examId": exam,
            "candidateId": "cand",
            "type": "SYSTEM_CHECK_COMPLETED",
            "createdAt": created.isoformat(),
            "systemCheck": {"success": True, "timestamp": checked.isoformat(), "data": []},
        }
    ).encode()


@contextlib.asynccontextmanager
async def scripted(
    database_url: str, **overrides: Any
) -> AsyncIterator[tuple[RunningWorker, asyncpg.Connection, Settings]]:
    """A migrated database whose retention has dropped everything before the horizon, and a
    worker with that horizon on it, owning both topics' partition 0."""
    await migrate_url(database_url)
    s = settings(database_url, **overrides)
    conn = await asyncpg.connect(database_url)
    try:
        await retention.apply_locked(
            conn, s.proctoring_retention_days, wait=True, interview_days=s.interview_retention_days
        )
        clients = ScriptedClients(s, partitions=1)
        async with start_worker(s, clients) as run:
            await clients.scripted_consumer.assign({P0, I0})
            yield run, conn, s
    finally:
        await conn.close()


async def wait_offsets(
    conn: asyncpg.Connection, s: Settings, expected: dict[TopicPartition, int], run: RunningWorker
) -> None:
    deadline = time.monotonic() + 20
    while True:
        run.check_alive()
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            s.group_id,
        )
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        if all(stored.get(tp) == n for tp, n in expected.items()):
            return
        assert time.monotonic() < deadline, f"offsets {expected} not reached; stored: {stored}"
        await asyncio.sleep(0.02)


def expired(run: RunningWorker, topic: str) -> float:
    sample = run.worker.metrics.registry.get_sample_value(
        "worker_records_expired_total", {"topic": topic}
    )
    return sample or 0.0


async def test_a_current_system_check_with_a_1970_clock_stores_its_event_not_its_check_row(
    database_url: str,
) -> None:
    """Defect 8 of issue 25: the event happened now (createdAt, and the Kafka timestamp, are
    current); the browser's clock said 1970 for the check. The event, its session and its
    place in the stream are kept; the `system_checks` row lies where retention has dropped
    everything (before `expired_before`), so it alone is not stored. Not expired, not
    dead-lettered, offset committed."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    async with scripted(database_url, proctoring_retention_days=90) as (run, conn, s):
        assert await retention.read_expired_before(conn) is not None
        run.clients.broker.append(P0, system_check(now, EPOCH), timestamp=millis(now))
        await wait_offsets(conn, s, {P0: 1}, run)
        problems = []
        events = await conn.fetch("SELECT type, created_at FROM proctoring_events")
        if [tuple(r) for r in events] != [("SYSTEM_CHECK_COMPLETED", now)]:
            problems.append(f"the current event was not stored: proctoring_events {events}")
        sessions = await conn.fetch("SELECT exam_id, last_event_at FROM proctoring_sessions")
        if [tuple(r) for r in sessions] != [("exam", now)]:
            problems.append(f"its session was not: proctoring_sessions {sessions}")
        if checks := await conn.fetch("SELECT checked_at FROM system_checks"):
            problems.append(f"a check of a dropped instant was stored: {checks}")
        if expired(run, PROCTORING):
            problems.append(f"counted as expired: {expired(run, PROCTORING)}")
        if run.producer.acked:
            problems.append(f"dead-lettered: {run.producer.acked}")
        assert not problems, "\n".join(problems)


def flag(created: dt.datetime, exam: str) -> bytes:
    return json.dumps(
        {
            "examId": exam,
            "candidateId": "cand",
            "type": "TAB_NOT_FOCUS",
            "createdAt": created.isoformat(),
        }
    ).encode()


def applicant(application: str, modified: dt.datetime | None) -> bytes:
    data: dict[str, Any] = {"micro1_job_application_id": application, "candidate_id": "cand"}
    if modified is not None:
        data["date_modified"] = modified.isoformat()
    return json.dumps({"event": "applicant.created", "data": data}).encode()


async def test_records_are_aged_by_the_kafka_timestamp_where_their_own_clock_is_absurd(
    database_url: str,
) -> None:
    """A `createdAt` or `date_modified` in 2099 on a record the log dates 200 days ago (a
    replay of an old record from a clock far ahead) is past both 90-day horizons: expired,
    counted per topic, not dead-lettered, offset committed. The same in-the-future time on a
    current record is kept (its instant is the Kafka timestamp, now), as is an old own time
    only a few minutes ahead of its timestamp (believed, and within the horizon), and an
    applicant without a time whose record is current; one whose record is old is expired."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    ahead = dt.datetime(2099, 1, 1, tzinfo=UTC)
    old = now - dt.timedelta(days=200)
    recent = now - dt.timedelta(days=30)
    async with scripted(
        database_url, proctoring_retention_days=90, interview_retention_days=90
    ) as (run, conn, s):
        broker = run.clients.broker
        broker.append(P0, flag(ahead, "replayed"), timestamp=millis(old))
        broker.append(P0, flag(ahead, "current"), timestamp=millis(now))
        broker.append(
            P0, flag(recent + dt.timedelta(minutes=5), "skewed"), timestamp=millis(recent)
        )
        broker.append(I0, applicant("a-replayed", ahead), timestamp=millis(old))
        broker.append(I0, applicant("a-current", ahead), timestamp=millis(now))
        broker.append(I0, applicant("a-untimed", None), timestamp=millis(now))
        broker.append(I0, applicant("a-old-untimed", None), timestamp=millis(old))
        await wait_offsets(conn, s, {P0: 3, I0: 4}, run)
        exams = {r[0] for r in await conn.fetch("SELECT exam_id FROM proctoring_events")}
        assert exams == {"current", "skewed"}
        ages = {
            r[0]: r[1]
            for r in await conn.fetch("SELECT job_application_id, last_event_at FROM applicants")
        }
        assert ages == {"a-current": age_of(now), "a-untimed": age_of(now)}
        assert (expired(run, PROCTORING), expired(run, INTERVIEW)) == (1.0, 2.0)
        assert not run.producer.acked, "dead-lettered"
