"""A PostgreSQL outage is waited out, never dead-lettered (acceptance 5).

The embedded PostgreSQL is stopped while the worker has records to store; the worker must keep
retrying (with backoff capped at 1 s here), keep its task alive, and once the server is back
store everything with the right counters and nothing in the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from support.e2e import (
    count_rows,
    expected_offsets,
    fetch,
    running_worker,
    settings_for,
    task_of,
    wait_for,
    wait_for_offsets,
    wait_for_stats,
)
from support.infra import PgStack, Topics, consume_all, produce

from schemas.proctoring import FLAG_TYPES

pytestmark = pytest.mark.integration

TYPES = ("STARTED", "TAB_NOT_FOCUS", "EXIT_FULLSCREEN", "TAB_FOCUS_CHANGE", "FULLSCREEN_CHANGE")
Event = tuple[str, str, str, bytes]  # exam, candidate, type, value


def _wave(first_minute: int, sessions: int = 10, per_session: int = 20) -> list[Event]:
    events: list[Event] = []
    for s in range(sessions):
        exam, candidate = "exam-outage", f"cand-{s}"
        for n in range(per_session):
            kind = TYPES[(n + s) % len(TYPES)]
            value = json.dumps(
                {
                    "examId": exam,
                    "candidateId": candidate,
                    "type": kind,
                    "createdAt": f"2025-09-21T{first_minute // 60:02d}:{first_minute % 60:02d}:"
                    f"{n:02d}Z",
                }
            ).encode()
            events.append((exam, candidate, kind, value))
    return events


def _records(events: list[Event]) -> list[tuple[bytes, bytes]]:
    return [(f"{e[0]}:{e[1]}".encode(), e[3]) for e in events]


async def test_worker_waits_out_a_database_outage(
    kafka_bootstrap: str, database_url: str, topics: Topics, pg_stack: PgStack
) -> None:
    server = pg_stack.server
    if server is None:
        pytest.skip(
            f"PostgreSQL comes from {pg_stack.source}, not the embedded server: "
            "the test cannot stop and start it"
        )
    first = _wave(10 * 60)
    second = _wave(11 * 60)
    redelivered = first[:15]  # already stored before the outage: must change nothing

    settings = settings_for(kafka_bootstrap, database_url, topics, retry_max_s=1.0)
    async with running_worker(settings) as worker:
        metadata = await produce(kafka_bootstrap, topics.proctoring, _records(first))
        await wait_for_offsets(database_url, topics.group_id, expected_offsets(metadata))
        assert await count_rows(database_url, "proctoring_events") == len(first)

        try:
            # pg_ctl blocks: run it off the loop, which the worker shares with this test.
            await asyncio.to_thread(server.stop)
            assert not server.running
            metadata += await produce(
                kafka_bootstrap, topics.proctoring, _records(second + redelivered)
            )

            async def retrying() -> bool:
                return worker.retrying

            # The worker has fetched the second wave and failed to store it.
            await wait_for(retrying, 60, "the worker to retry the second wave")
            # Let several backoff rounds pass (capped at 1 s) during the outage.
            await asyncio.sleep(3)
            assert server.running is False
            assert not task_of(worker).done()
            assert worker.stats["dead_lettered"] == 0
        finally:
            await asyncio.to_thread(server.start)

        await wait_for_offsets(database_url, topics.group_id, expected_offsets(metadata))
        assert not task_of(worker).done()
        assert worker.stats["dead_lettered"] == 0
        await wait_for_stats(worker, consumed=len(metadata), dead_lettered=0)

    stored = await count_rows(database_url, "proctoring_events")
    assert stored == len(first) + len(second)
    flags: Counter[tuple[str, str]] = Counter()
    totals: Counter[tuple[str, str]] = Counter()
    for exam, candidate, kind, _ in first + second:
        totals[(exam, candidate)] += 1
        flags[(exam, candidate)] += kind in FLAG_TYPES
    sessions = {
        (r["exam_id"], r["candidate_id"]): (r["flag_count"], r["event_count"])
        for r in await fetch(
            database_url,
            "SELECT exam_id, candidate_id, flag_count, event_count FROM proctoring_sessions",
        )
    }
    assert sessions == {k: (flags[k], totals[k]) for k in totals}
    offsets = await fetch(
        database_url,
        "SELECT sum(next_offset) AS n FROM consumer_offsets WHERE group_id = $1",
        topics.group_id,
    )
    assert offsets[0]["n"] == len(metadata)
    # A transient failure is never dead-lettered.
    assert await consume_all(kafka_bootstrap, topics.dlq, 1, timeout=3) == []
