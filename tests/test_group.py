"""Two workers in one consumer group share the partitions and store exactly what one worker
alone stores (acceptance 4).

The reference worker (another group, a second database) runs at the same time as the pair, so
the test pays for the group joins once. The stream is produced in two waves: the second only
once both members of the group own partitions, so that both of them do real work.
"""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import pytest
from aiokafka import TopicPartition
from support import infra
from support.e2e import (
    expected_offsets,
    running_worker,
    settings_for,
    snapshot_diff,
    table_snapshot,
    wait_for,
    wait_for_offsets,
    wait_for_stats,
)

from schemas.proctoring import EVENT_TYPES
from worker.consumer import Worker

pytestmark = pytest.mark.integration

Record = tuple[bytes, bytes]


def _proctoring(rng: random.Random, sessions: range) -> list[Record]:
    records: list[Record] = []
    for s in sessions:
        exam, candidate = f"exam-{s % 5}", f"cand-{s}"
        for n in range(10):
            kind = rng.choice(EVENT_TYPES)
            body: dict[str, Any] = {
                "examId": exam,
                "candidateId": candidate,
                "type": kind,
                "createdAt": f"2025-09-21T10:{n:02d}:{s % 60:02d}Z",
                "description": f"{kind} {n}",
            }
            if kind in ("FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED", "PERIODIC_SNAPSHOT"):
                body["mediaUrl"] = f"https://media.example.com/{exam}/{candidate}/{n}"
            if kind == "SYSTEM_CHECK_COMPLETED":
                body["systemCheck"] = {
                    "success": n % 2 == 0,
                    "timestamp": f"2025-09-21T09:59:{n:02d}Z",
                    "data": [{"name": "webcam", "status": "success", "finished": True}],
                }
            records.append((f"{exam}:{candidate}".encode(), json.dumps(body).encode()))
    return records


def _interview(candidates: range) -> list[Record]:
    """Each candidate's whole lifecycle, keyed by candidate (one partition per candidate).
    Jobs are shared between candidates of different partitions, always with the same name, so
    the order between partitions cannot matter."""
    records: list[Record] = []
    for c in candidates:
        cid = f"cand-{c:03d}"
        job = f"job-{c % 3}"
        name, email = f"Candidate {c}", f"c{c}@example.com"
        report = f"report-{c:03d}"
        interview = f"interview-{c:03d}"
        events: list[dict[str, Any]] = [
            {
                "event": "applicant.created",
                "data": {
                    "micro1_job_application_id": f"app-{c:03d}",
                    "candidate_id": cid,
                    "micro1_job_id": job,
                    "job_name": f"Job {c % 3}",
                    "candidate_name": name,
                    "email_id": email,
                    "resume_score": f"{50 + c}.25",
                    "date_modified": "2024-01-01 09:00:00",
                },
            },
            {
                "event": "interview.started",
                "data": {
                    "interview_id": interview,
                    "candidate_id": cid,
                    "candidate_name": name,
                    "candidate_email_id": email,
                    "job_id": job,
                    "job_name": f"Job {c % 3}",
                    "interview_name": f"Interview {c}",
                    "date_started": "2024-01-02 10:00:00",
                },
            },
            {
                "event": "proctoring_score.completed",
                "data": {"report_id": report, "candidate_id": cid, "proctoring_score": c % 100},
            },
            {
                "event": "interview_report.created",
                "data": {
                    "report_id": report,
                    "interview_id": interview,
                    "candidate_id": cid,
                    "candidate_name": name,
                    "ai_match_score": 60,
                    "proctoring_violations": [{"type": "tab_switch", "value": c % 4}],
                    "interview_transcript": [{"timestamp": 1, "role": "candidate"}],
                    "status": "active",
                    "date_modified": "2024-01-02 11:00:00",
                },
            },
            {
                "event": "interview_recording.completed",
                "data": {
                    "report_id": report,
                    "candidate_id": cid,
                    "interview_recording_url": f"https://rec.example.com/{report}.m3u8",
                },
            },
            {
                "event": "applicant.completed",
                "data": {
                    "micro1_job_application_id": f"app-{c:03d}",
                    "candidate_id": cid,
                    "micro1_job_id": job,
                    "resume_score": 99,
                    "date_modified": "2024-01-03 09:00:00",
                },
            },
        ]
        records += [(cid.encode(), json.dumps(e).encode()) for e in events]
    return records


async def test_two_workers_share_partitions_and_match_a_single_worker(
    kafka_bootstrap: str,
    database_url: str,
    pg_admin_url: str,
    topic_factory: infra.TopicFactory,
) -> None:
    topics = await infra.make_topics(topic_factory)  # proctoring (4), interview (4), dlq
    reference_group = infra.unique_name("g_ref_")
    rng = random.Random(4)
    wave1 = (_proctoring(rng, range(0, 20)), _interview(range(0, 12)))
    wave2 = (_proctoring(rng, range(20, 40)), _interview(range(12, 24)))
    # A few redeliveries of the first wave, which the second wave's owners may see.
    replays = (rng.sample(wave1[0], 20), rng.sample(wave1[1], 10))

    reference_url = await infra.create_database(pg_admin_url)
    try:
        metadata = [
            *await infra.produce(kafka_bootstrap, topics.proctoring, wave1[0]),
            *await infra.produce(kafka_bootstrap, topics.interview, wave1[1]),
        ]
        settings = settings_for(kafka_bootstrap, database_url, topics)
        reference = settings_for(kafka_bootstrap, reference_url, topics, group_id=reference_group)
        owned: list[set[TopicPartition]] = [set(), set()]

        async with contextlib.AsyncExitStack() as stack:
            workers: list[Worker] = [
                await stack.enter_async_context(running_worker(settings)),
                await stack.enter_async_context(running_worker(settings)),
            ]
            single = await stack.enter_async_context(running_worker(reference))

            async def both_own_partitions() -> bool:
                current = [set(w.owned()) for w in workers]
                for seen, now in zip(owned, current, strict=True):
                    seen |= now
                return all(current) and not (current[0] & current[1])

            await wait_for(both_own_partitions, 90, "both group members to own partitions")

            metadata += [
                *await infra.produce(kafka_bootstrap, topics.proctoring, wave2[0] + replays[0]),
                *await infra.produce(kafka_bootstrap, topics.interview, wave2[1] + replays[1]),
            ]
            expected = expected_offsets(metadata)
            await wait_for_offsets(database_url, topics.group_id, expected, timeout=120)
            await wait_for_offsets(reference_url, reference_group, expected, timeout=120)

            produced = len(metadata)
            # Each record's effect was committed by exactly one member of the group.
            await wait_for_stats(workers, consumed=produced)
            assert all(w.stats["consumed"] > 0 for w in workers), [w.stats for w in workers]
            await wait_for_stats(single, consumed=produced)

        assert all(owned), owned
        everything = {
            TopicPartition(t, p) for t in (topics.proctoring, topics.interview) for p in range(4)
        }
        assert owned[0] | owned[1] == everything

        pair = await table_snapshot(database_url)
        alone = await table_snapshot(reference_url)
        assert pair == alone, snapshot_diff(pair, alone)
        assert len(pair["proctoring_events"]) > 0
        assert len(pair["interview_reports"]) == 24
        assert len(pair["applicants"]) == 24
    finally:
        await infra.drop_database(pg_admin_url, reference_url)
