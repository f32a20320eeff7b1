"""End to end, in-process (acceptance 2 and 6): seed samples in, rows out; every malformed record
in the dead-letter topic exactly once, byte for byte, with its context headers; a record the
database rejects isolated from its batch.

One worker run per test: a consumer-group join costs seconds on the embedded broker, so each
test produces everything first and then waits on the database, never on a fixed sleep.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from support.e2e import (
    RUN_DLQ_HEADERS,
    count_rows,
    expected_offsets,
    fetch,
    fetchval,
    running_worker,
    settings_for,
    wait_for,
    wait_for_offsets,
    wait_for_stats,
)
from support.infra import Topics, consume_all, produce

from worker import __version__
from worker.dev.seeds import interview_samples, proctoring_samples, system_check_example
from worker.dlq import MAX_ERROR_BYTES
from worker.migrate import migrate_url

pytestmark = pytest.mark.integration


EXAM, CAND = "exam-demo", "cand-demo"


@dataclass(frozen=True)
class Bad:
    """A record that can never be stored, and the dead-letter reason it must get."""

    name: str
    topic: str  # "proctoring" or "interview"
    value: bytes | None
    reason: str
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def key(self) -> bytes:
        return f"bad:{self.name}".encode()


def _proctoring(**fields: Any) -> bytes:
    event = {
        "examId": "exam-bad",
        "candidateId": "cand-bad",
        "type": "STARTED",
        "createdAt": "2025-09-21T12:00:10Z",
        "description": "Exam started",
    }
    event.update(fields)
    return json.dumps(event).encode()


def _malformed() -> list[Bad]:
    no_candidate = json.loads(_proctoring())
    del no_candidate["candidateId"]
    score = json.loads(interview_samples()[4])  # proctoring_score.completed
    assert score["event"] == "proctoring_score.completed"
    score["data"]["proctoring_score"] = "eighty"
    deep = b"[" * 100_000 + b"]" * 100_000
    trace = (("trace-id", b"abc"),)
    return [
        Bad("not-json", "proctoring", b'{"examId": exam-1, oops', "invalid_json", trace),
        Bad(
            "invalid-utf8",
            "proctoring",
            _proctoring(description="X").replace(b'"X"', b'"\xff\xfe\xc3("'),
            "invalid_json",
        ),
        Bad("json-array", "interview", b'[{"event": "interview.started"}]', "schema_violation"),
        Bad(
            "missing-candidate",
            "proctoring",
            json.dumps(no_candidate).encode(),
            "schema_violation",
            (("trace-id", b"def"), ("source", b"widget")),
        ),
        Bad("score-eighty", "interview", json.dumps(score).encode(), "schema_violation", trace),
        Bad(
            "created-yesterday",
            "proctoring",
            _proctoring(createdAt="yesterday"),
            "schema_violation",
        ),
        Bad("unknown-type", "proctoring", _proctoring(type="TELEPORTED"), "unknown_event_type"),
        Bad(
            "unknown-event",
            "interview",
            b'{"event": "interview.teleported", "data": {"candidate_id": "c"}}',
            "unknown_event_type",
            trace,
        ),
        Bad("empty", "proctoring", b"", "empty_payload"),
        Bad("tombstone", "interview", None, "empty_payload", (("trace-id", b"tomb"),)),
        Bad("nul", "proctoring", _proctoring(description="before\u0000after"), "schema_violation"),
        Bad(
            "deep-nesting",
            "proctoring",
            _proctoring().replace(b"{", b'{"extra": ' + deep + b", ", 1),
            "invalid_json",
        ),
    ]


def _interview_key(sample: bytes) -> bytes:
    return json.loads(sample)["data"]["candidate_id"].encode()


def _headers(record: ConsumerRecord[bytes, bytes]) -> list[tuple[str, bytes]]:
    return [(k, bytes(v)) for k, v in record.headers]


def _dlq_fields(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    found = [(k, v) for k, v in _headers(record) if k.startswith("dlq.")]
    keys = [k for k, _ in found]
    assert sorted(keys) == sorted(RUN_DLQ_HEADERS), f"dlq headers {keys}"
    return {k: v.decode("utf-8") for k, v in found}


async def test_seed_samples_stored_and_malformed_records_dead_lettered(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    interview = interview_samples()
    proctoring = proctoring_samples(EXAM, CAND)
    bad = _malformed()
    topic_of = {"proctoring": topics.proctoring, "interview": topics.interview}

    # Valid and malformed records interleaved per topic, so dead letters sit between stored
    # records of the same partitions and batches.
    p_records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    i_records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    p_bad = [b for b in bad if b.topic == "proctoring"]
    i_bad = [b for b in bad if b.topic == "interview"]
    for n, value in enumerate(proctoring):
        p_records.append((f"{EXAM}:{CAND}".encode(), value, []))
        if n < len(p_bad):
            p_records.append((p_bad[n].key, p_bad[n].value, list(p_bad[n].headers)))
    p_records += [(b.key, b.value, list(b.headers)) for b in p_bad[len(proctoring) :]]
    for n, value in enumerate(interview):
        i_records.append((_interview_key(value), value, []))
        if n < len(i_bad):
            i_records.append((i_bad[n].key, i_bad[n].value, list(i_bad[n].headers)))
    i_records += [(b.key, b.value, list(b.headers)) for b in i_bad[len(interview) :]]

    p_meta = await produce(kafka_bootstrap, topics.proctoring, p_records)
    i_meta = await produce(kafka_bootstrap, topics.interview, i_records)
    produced = len(p_records) + len(i_records)
    assert produced == len(interview) + len(proctoring) + len(bad)
    # Where each malformed record landed, to match its dead letter.
    sent = {
        (md.topic, md.partition, md.offset): (record, md)
        for records, metas in ((p_records, p_meta), (i_records, i_meta))
        for record, md in zip(records, metas, strict=True)
    }
    bad_by_key = {b.key: b for b in bad}
    assert len(bad_by_key) == len(bad)
    offsets = expected_offsets([*p_meta, *i_meta])
    # The broker numbers each partition's records 0..n-1, so the offsets account for each.
    assert sum(offsets.values()) == produced

    settings = settings_for(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        await wait_for_offsets(database_url, topics.group_id, offsets)

        # -- every record accounted for exactly once ---------------------------------------
        stored_offsets = {
            (r["topic"], r["partition"]): r["next_offset"]
            for r in await fetch(
                database_url,
                "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
                topics.group_id,
            )
        }
        assert stored_offsets == offsets
        assert sum(stored_offsets.values()) == produced
        await wait_for_stats(
            worker,
            consumed=produced,
            dead_lettered=len(bad),
            stored=len(interview) + len(proctoring),
        )

        # -- dead letters: each malformed record exactly once, byte for byte ----------------
        # Dead letters are acknowledged before the offsets pass them, so all are there now;
        # asking for one more than expected proves there is no extra copy.
        letters = await consume_all(kafka_bootstrap, topics.dlq, len(bad) + 1, timeout=4)
        assert len(letters) == len(bad), [(r.key, _dlq_fields(r)["dlq.reason"]) for r in letters]
        # The timestamp the broker stored (what a consumer sees), which can differ by a
        # millisecond from the producer's delivery report.
        stored_at = {
            (r.topic, r.partition, r.offset): r.timestamp
            for topic, count in ((topics.proctoring, len(p_meta)), (topics.interview, len(i_meta)))
            for r in await consume_all(kafka_bootstrap, topic, count)
        }
        seen: set[bytes] = set()
        for letter in letters:
            fields = _dlq_fields(letter)
            coords = (
                fields["dlq.original.topic"],
                int(fields["dlq.original.partition"]),
                int(fields["dlq.original.offset"]),
            )
            assert coords in sent, f"dead letter of a record never produced: {coords}"
            (key, value, headers), md = sent[coords]
            case = bad_by_key[key]
            assert letter.key == key
            assert letter.key not in seen, f"{case.name} dead-lettered twice"
            seen.add(letter.key)
            assert letter.value == value, f"{case.name}: value changed"
            assert topic_of[case.topic] == md.topic
            # Original headers kept, in order, before the added context.
            assert _headers(letter)[: len(headers)] == list(headers), case.name
            assert fields["dlq.original.topic"] == md.topic
            assert fields["dlq.original.partition"] == str(md.partition)
            assert fields["dlq.original.offset"] == str(md.offset)
            assert fields["dlq.original.timestamp"] == str(stored_at[coords])
            assert fields["dlq.reason"] == case.reason, f"{case.name}: {fields['dlq.error']}"
            assert fields["dlq.error"].strip(), case.name
            assert len(fields["dlq.error"].encode()) <= MAX_ERROR_BYTES, case.name
            failed_at = dt.datetime.fromisoformat(fields["dlq.failed_at"])
            assert failed_at.tzinfo is not None, fields["dlq.failed_at"]
            assert fields["dlq.consumer_group"] == topics.group_id
            assert fields["dlq.worker_version"] == __version__
        assert seen == set(bad_by_key)

        # -- stored rows of the valid events ------------------------------------------------
        assert await count_rows(database_url, "proctoring_events") == len(proctoring)
        events = await fetch(
            database_url,
            "SELECT type, created_at, description, media_url, details, kafka_topic "
            "FROM proctoring_events WHERE exam_id = $1 AND candidate_id = $2",
            EXAM,
            CAND,
        )
        by_type = {r["type"]: r for r in events}
        assert len(by_type) == 13
        assert {r["kafka_topic"] for r in events} == {topics.proctoring}
        face = by_type["FACE_ABSENCE"]
        assert face["created_at"] == dt.datetime(2025, 9, 21, 12, 11, 2, 250000, tzinfo=dt.UTC)
        assert face["media_url"] == f"https://media.example.com/{EXAM}/{CAND}/face-0001.jpg"
        assert face["description"] == "No face detected for 10 seconds"
        assert by_type["STARTED"]["media_url"] is None

        (session,) = await fetch(database_url, "SELECT * FROM proctoring_sessions")
        assert (session["exam_id"], session["candidate_id"]) == (EXAM, CAND)
        assert session["flag_count"] == 5
        assert session["event_count"] == 13
        assert session["started_at"] == dt.datetime(2025, 9, 21, 12, 0, 10, tzinfo=dt.UTC)
        assert session["ended_at"] == dt.datetime(2025, 9, 21, 12, 45, tzinfo=dt.UTC)
        assert session["last_event_at"] == session["ended_at"]

        check_example = json.loads(system_check_example())
        (check,) = await fetch(database_url, "SELECT * FROM system_checks")
        assert (check["exam_id"], check["candidate_id"]) == (EXAM, CAND)
        assert check["success"] is check_example["success"]
        assert json.loads(check["results"]) == check_example["data"]

        (report,) = await fetch(
            database_url, "SELECT * FROM interview_reports WHERE report_id = 'h0gqkAcaDJ'"
        )
        assert report["proctoring_score"] == Decimal(85)
        assert report["ai_match_score"] == Decimal(85)
        assert report["interview_recording_url"] == "https://micro1.ai/interview/h0gqkAcaDJ.m3u8"
        assert report["report_date"] == dt.date(2024, 1, 1)
        assert json.loads(report["interview_transcript"])[0]["role"] == "interviewer"
        assert json.loads(report["coding_skills_evaluation"])["rating"] == "Senior"
        violations = await fetch(
            database_url,
            "SELECT type, value, description FROM proctoring_violations "
            "WHERE report_id = 'h0gqkAcaDJ'",
        )
        assert [(v["type"], v["value"]) for v in violations] == [("tab_switch", "3")]

        (merged,) = await fetch(
            database_url, "SELECT * FROM interview_reports WHERE report_id = 'ABCD1234'"
        )
        assert merged["interview_recording_url"] == "https://url_to_interview_recording.m3u8"
        assert (
            merged["interview_recording_player_url"]
            == "https://zara.micro1.ai/ai-interview-videos/ABCDXYZ"
        )
        assert (
            merged["interview_webcam_recording_url"]
            == "https://url_to_interview_webcam_recording.m3u8"
        )
        assert merged["proctoring_score"] == Decimal(85)
        assert merged["candidate_id"] == "123e4567-e89b-12d3-a456-426614174000"
        assert await count_rows(database_url, "interview_reports") == 2

        (applicant,) = await fetch(database_url, "SELECT * FROM applicants")
        assert applicant["job_application_id"] == "123b4567-e89b-12d3-a456-426614174000"
        assert applicant["candidate_id"] == "123c4567-e89b-12d3-a456-426614174000"
        assert applicant["resume_score"] == Decimal("99.99")
        assert applicant["status"] == "completed"  # equal date_modified: the later status wins
        assert applicant["date_modified"] == dt.datetime(2100, 1, 1, tzinfo=dt.UTC)

        interviews = {
            r["interview_id"]: r for r in await fetch(database_url, "SELECT * FROM interviews")
        }
        started = interviews["123c4567-e89b-12d3-a456-426614174000"]
        assert started["interview_name"] == "Backend Developer Interview"
        assert started["date_started"] == dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)
        assert "123e4567-e89b-12d3-a456-426614174000" in interviews  # filled by the report
        assert await fetchval(
            database_url,
            "SELECT name FROM jobs WHERE job_id = '123b4567-e89b-12d3-a456-426614174000'",
        ) == ("Backend Developer")
        assert (
            await fetchval(
                database_url,
                "SELECT email FROM candidates "
                "WHERE candidate_id = '123c4567-e89b-12d3-a456-426614174000'",
            )
            == "john.doe@test.com"
        )

        # -- and the worker is still consuming ----------------------------------------------
        late = json.dumps(
            {
                "examId": "exam-late",
                "candidateId": "cand-late",
                "type": "TAB_NOT_FOCUS",
                "createdAt": "2025-09-22T08:00:00+02:00",
            }
        ).encode()
        late_meta = await produce(
            kafka_bootstrap, topics.proctoring, [(b"exam-late:cand-late", late)]
        )

        async def late_stored() -> Any:
            return await fetch(
                database_url,
                "SELECT s.flag_count, e.created_at, e.description FROM proctoring_sessions s "
                "JOIN proctoring_events e USING (exam_id, candidate_id) "
                "WHERE exam_id = 'exam-late'",
            )

        (row,) = await wait_for(late_stored, 60, "the late event's row")
        assert row["flag_count"] == 1
        assert row["created_at"] == dt.datetime(2025, 9, 22, 6, tzinfo=dt.UTC)
        assert row["description"] == ""  # absent means empty
        await wait_for_offsets(
            database_url, topics.group_id, expected_offsets([*p_meta, *i_meta, *late_meta])
        )
        await wait_for_stats(worker, consumed=produced + 1)


# -- records the database rejects -------------------------------------------------------------

# The schema accepts these, the database cannot store them:
# - jsonb numbers are PostgreSQL numerics, which end at about 1e131072: msgspec keeps the
#   transcript block raw (it never converts the number) and PostgreSQL answers 22003
#   "value overflows numeric format";
# - a proctoring event the database refuses through a CHECK constraint the test adds (an
#   operator's rule, say), which exercises the COPY path's isolation.
_NUMERIC_OVERFLOW = b'[{"timestamp": 1e999999, "role": "interviewer", "content": "hi"}]'
_REFUSED_EXAM = "exam-refused"


def _report(report_id: str, candidate: str, transcript: bytes = b"[]") -> bytes:
    data = {
        "report_id": report_id,
        "interview_id": f"interview-{report_id}",
        "candidate_id": candidate,
        "proctoring_score": 70,
        "status": "active",
        "date_modified": "2024-05-01 10:00:00",
    }
    body = json.dumps({"event": "interview_report.created", "data": data}).encode()
    return body.replace(b'"status"', b'"interview_transcript": ' + transcript + b', "status"', 1)


async def test_record_rejected_by_database_is_isolated_from_its_batch(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    candidate = "cand-rejected"
    exam = "exam-rejected"
    # One key per topic: each topic's records sit in one partition, in this order, and the
    # worker (started after producing) reads them in the same batch.
    reports = [_report(f"rep-{n}", candidate) for n in range(6)]
    bad_report = _report("rep-bad", candidate, _NUMERIC_OVERFLOW)
    i_values = [*reports[:3], bad_report, *reports[3:]]
    base = dt.datetime(2025, 10, 1, 9, tzinfo=dt.UTC)
    flags = ["TAB_NOT_FOCUS", "EXIT_FULLSCREEN", "TAB_FOCUS_CHANGE"]
    events = [
        json.dumps(
            {
                "examId": exam,
                "candidateId": candidate,
                "type": flags[n % 3],
                "createdAt": (base + dt.timedelta(seconds=n)).isoformat(),
            }
        ).encode()
        for n in range(9)
    ]
    bad_event = json.dumps(
        {
            "examId": _REFUSED_EXAM,
            "candidateId": candidate,
            "type": "TAB_NOT_FOCUS",
            "createdAt": base.isoformat(),
        }
    ).encode()
    await migrate_url(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "ALTER TABLE proctoring_events ADD CONSTRAINT refuse_exam "
            f"CHECK (exam_id <> '{_REFUSED_EXAM}')"
        )
    finally:
        await conn.close()
    p_values = [*events[:5], bad_event, *events[5:]]

    i_meta = await produce(
        kafka_bootstrap,
        topics.interview,
        [(candidate.encode(), v, [("trace-id", b"r")]) for v in i_values],
    )
    p_meta = await produce(
        kafka_bootstrap, topics.proctoring, [(f"{exam}:{candidate}".encode(), v) for v in p_values]
    )
    bad_coords = {
        (i_meta[3].topic, i_meta[3].partition, i_meta[3].offset): bad_report,
        (p_meta[5].topic, p_meta[5].partition, p_meta[5].offset): bad_event,
    }

    settings = settings_for(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        await wait_for_offsets(database_url, topics.group_id, expected_offsets([*i_meta, *p_meta]))
        await wait_for_stats(worker, dead_lettered=2, stored=len(reports) + len(events))
        letters = await consume_all(kafka_bootstrap, topics.dlq, 3, timeout=4)

    assert len(letters) == 2, [_dlq_fields(r) for r in letters]
    for letter in letters:
        fields = _dlq_fields(letter)
        coords = (
            fields["dlq.original.topic"],
            int(fields["dlq.original.partition"]),
            int(fields["dlq.original.offset"]),
        )
        assert coords in bad_coords, coords
        assert letter.value == bad_coords[coords]
        assert fields["dlq.reason"] == "rejected_by_database", fields["dlq.error"]
        assert fields["dlq.error"].strip()
        assert len(fields["dlq.error"].encode()) <= MAX_ERROR_BYTES
        assert fields["dlq.consumer_group"] == topics.group_id
        if coords[0] == topics.interview:
            assert letter.key == candidate.encode()
            assert _headers(letter)[0] == ("trace-id", b"r")

    # Every valid record of the batch is stored, the rejected ones left no trace.
    stored_reports = await fetch(
        database_url, "SELECT report_id, proctoring_score FROM interview_reports"
    )
    assert sorted(r["report_id"] for r in stored_reports) == [f"rep-{n}" for n in range(6)]
    assert {r["proctoring_score"] for r in stored_reports} == {Decimal(70)}
    assert await count_rows(database_url, "proctoring_events") == len(events)
    (session,) = await fetch(database_url, "SELECT * FROM proctoring_sessions")
    assert session["event_count"] == len(events)
    assert session["flag_count"] == sum(1 for n in range(9) if flags[n % 3] != "TAB_FOCUS_CHANGE")


async def test_nul_in_report_without_evaluation_blocks_is_dead_lettered(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    """A NUL anywhere in an interview_report.created record whose evaluation blocks are absent
    (they are optional) must be a schema_violation dead letter like any other NUL, and the
    partition must move on to the next record."""
    candidate = "cand-nul"
    nul_report = json.dumps(
        {
            "event": "interview_report.created",
            "data": {
                "report_id": "rep-nul",
                "interview_id": "interview-nul",
                "candidate_id": candidate,
                "candidate_name": "John\u0000Doe",
            },
        }
    ).encode()
    assert b"\\u0000" in nul_report
    after = _report("rep-after", candidate)
    meta = await produce(
        kafka_bootstrap,
        topics.interview,
        [(candidate.encode(), nul_report), (candidate.encode(), after)],
    )

    settings = settings_for(kafka_bootstrap, database_url, topics)
    async with running_worker(settings):
        await wait_for_offsets(database_url, topics.group_id, expected_offsets(meta), timeout=60)
        letters = await consume_all(kafka_bootstrap, topics.dlq, 2, timeout=5)

    assert [_dlq_fields(r)["dlq.reason"] for r in letters] == ["schema_violation"]
    assert letters[0].value == nul_report
    assert await fetchval(database_url, "SELECT count(*) FROM interview_reports") == 1
