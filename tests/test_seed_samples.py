"""Acceptance: the nine sample bodies of seed 003, as written, decode and land in PostgreSQL.

The bodies are read from the seed file itself (worker.dev.seeds.interview_samples), so a producer
that copies the vendor's documentation is exactly what is tested here.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from support.storage import (
    apply,
    apply_each,
    db,  # noqa: F401  (fixture)
    interview_item,
    snapshot,
    utc,
)

from schemas import interview as iv
from worker.decode import interview_decoder
from worker.dev.seeds import INTERVIEW_SEED, PROCTORING_SEED, interview_samples

SHARED_SEEDS = Path("/work/shared/seeds")
REPO_SEEDS = Path(__file__).resolve().parent.parent / "schemas" / "seeds"

SAMPLES = interview_samples()
STARTED, REPORT, RECORDING, WEBCAM, SCORE = SAMPLES[:5]
APPLICANT_SAMPLES = dict(
    zip(("created", "invited", "updated", "completed"), SAMPLES[5:], strict=True)
)

EXPECTED_CLASSES: list[type[msgspec.Struct]] = [
    iv.InterviewStarted,
    iv.InterviewReportCreated,
    iv.InterviewRecordingCompleted,
    iv.InterviewWebcamRecordingCompleted,
    iv.ProctoringScoreCompleted,
    iv.ApplicantCreated,
    iv.ApplicantInvited,
    iv.ApplicantUpdated,
    iv.ApplicantCompleted,
]

CANDIDATE_123E = "123e4567-e89b-12d3-a456-426614174000"


def sample_json(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


async def one_row(conn: asyncpg.Connection, sql: str, *args: object) -> asyncpg.Record:
    rows = await conn.fetch(sql, *args)
    assert len(rows) == 1, f"expected exactly one row from {sql!r}, got {rows}"
    return rows[0]


def test_there_are_nine_samples_one_per_event() -> None:
    assert len(SAMPLES) == 9
    events = [sample_json(s)["event"] for s in SAMPLES]
    assert events == list(iv.EVENT_NAMES)


@pytest.mark.parametrize(
    ("index", "cls"), list(enumerate(EXPECTED_CLASSES)), ids=[c.__name__ for c in EXPECTED_CLASSES]
)
def test_sample_decodes_to_its_struct(index: int, cls: type[msgspec.Struct]) -> None:
    event = interview_decoder.decode(SAMPLES[index])
    assert type(event) is cls, event


async def test_interview_started_sample(db: asyncpg.Connection) -> None:  # noqa: F811
    await apply(db, [interview_item(STARTED)])

    interview = await one_row(db, "SELECT * FROM interviews")
    assert interview["interview_id"] == "123c4567-e89b-12d3-a456-426614174000"
    assert interview["interview_name"] == "Backend Developer Interview"
    assert interview["candidate_id"] == "123a4567-e89b-12d3-a456-426614174000"
    assert interview["job_id"] == "123b4567-e89b-12d3-a456-426614174000"
    assert interview["ats_job_id"] == "JOB123TEST"
    assert interview["ats_job_application_id"] is None
    assert interview["date_started"] == utc(2024, 1, 1, 10)
    assert interview["date_started"].utcoffset() == dt.timedelta(0)

    candidate = await one_row(db, "SELECT candidate_id, name, email FROM candidates")
    assert tuple(candidate) == (
        "123a4567-e89b-12d3-a456-426614174000",
        "John Doe",
        "john.doe@micro1.ai",
    )
    job = await one_row(db, "SELECT job_id, name, ats_job_id FROM jobs")
    assert tuple(job) == ("123b4567-e89b-12d3-a456-426614174000", "Backend Developer", "JOB123TEST")


async def test_interview_report_created_sample(db: asyncpg.Connection) -> None:  # noqa: F811
    await apply(db, [interview_item(REPORT)])

    report = await one_row(db, "SELECT * FROM interview_reports")
    assert report["report_id"] == "h0gqkAcaDJ"
    assert report["interview_id"] == "123e4567-e89b-12d3-a456-426614174000"
    assert report["session_id"] == "123e4567-e89b-12d3-a456-426614174000"
    assert report["candidate_id"] == CANDIDATE_123E
    assert report["job_applicant_id"] == "123e4567-e89b-12d3-a456-426614174000"
    assert report["report_date"] == dt.date(2024, 1, 1)
    assert report["report_url"] == "https://micro1.ai/report/h0gqkAcaDJ.pdf"
    assert report["interview_recording_url"] == "https://micro1.ai/interview/h0gqkAcaDJ.m3u8"
    assert report["proctoring_score"] == Decimal(85)
    assert report["ai_match_score"] == Decimal(85)
    assert report["status"] == "active"
    assert report["date_created"] == utc(2021, 1, 1)
    assert report["date_modified"] == utc(2021, 1, 1)
    # Columns the recording events own are untouched by the report event.
    assert report["interview_recording_player_url"] is None
    assert report["interview_webcam_recording_url"] is None
    assert report["interview_webcam_recording_player_url"] is None

    violation = await one_row(
        db, "SELECT report_id, type, value, description FROM proctoring_violations"
    )
    assert tuple(violation) == (
        "h0gqkAcaDJ",
        "tab_switch",
        "3",
        "3 tab switches detected, indicating multitasking or external searches.",
    )

    candidate = await one_row(db, "SELECT candidate_id, name, email FROM candidates")
    assert tuple(candidate) == (CANDIDATE_123E, "John Doe", "john.doe@micro1.ai")

    # The report names its interview; with no interview.started yet, it fills the row.
    interview = await one_row(db, "SELECT * FROM interviews")
    assert interview["interview_id"] == "123e4567-e89b-12d3-a456-426614174000"
    assert interview["interview_name"] == "Full Stack Engineer Interview"
    assert interview["candidate_id"] == CANDIDATE_123E
    assert interview["ats_job_id"] == "ABCD1234"
    assert interview["ats_job_application_id"] == "ABCD1234"


JSONB_BLOCKS = (
    "interview_transcript",
    "technical_skills_evaluation",
    "soft_skills_evaluation",
    "coding_skills_evaluation",
    "custom_exercise_evaluation",
    "custom_question_evaluation",
)


async def test_interview_report_jsonb_blocks_equal_the_sample(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    await apply(db, [interview_item(REPORT)])
    data = sample_json(REPORT)["data"]
    row = await one_row(
        db,
        f"SELECT {', '.join(JSONB_BLOCKS)} FROM interview_reports WHERE report_id = $1",
        "h0gqkAcaDJ",
    )
    for block in JSONB_BLOCKS:
        assert row[block] is not None, block
        assert json.loads(row[block]) == data[block], block
    types = await one_row(
        db,
        "SELECT jsonb_typeof(interview_transcript) AS t,"
        " jsonb_typeof(coding_skills_evaluation) AS c FROM interview_reports",
    )
    assert (types["t"], types["c"]) == ("array", "object")


async def test_interview_recording_completed_sample(db: asyncpg.Connection) -> None:  # noqa: F811
    await apply(db, [interview_item(RECORDING)])
    row = await one_row(db, "SELECT * FROM interview_reports")
    assert row["report_id"] == "ABCD1234"
    assert row["candidate_id"] == CANDIDATE_123E
    assert row["interview_recording_url"] == "https://url_to_interview_recording.m3u8"
    assert (
        row["interview_recording_player_url"]
        == "https://zara.micro1.ai/ai-interview-videos/ABCDXYZ"
    )
    assert row["interview_webcam_recording_url"] is None
    assert row["proctoring_score"] is None


async def test_interview_webcam_recording_completed_sample(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    await apply(db, [interview_item(WEBCAM)])
    row = await one_row(db, "SELECT * FROM interview_reports")
    assert row["report_id"] == "ABCD1234"
    assert row["candidate_id"] == CANDIDATE_123E
    assert row["interview_webcam_recording_url"] == "https://url_to_interview_webcam_recording.m3u8"
    assert (
        row["interview_webcam_recording_player_url"]
        == "https://zara.micro1.ai/ai-interview-videos/ABCDXYZ"
    )
    assert row["interview_recording_url"] is None
    assert row["proctoring_score"] is None


async def test_proctoring_score_completed_sample(db: asyncpg.Connection) -> None:  # noqa: F811
    await apply(db, [interview_item(SCORE)])
    row = await one_row(db, "SELECT * FROM interview_reports")
    assert row["report_id"] == "ABCD1234"
    assert row["candidate_id"] == CANDIDATE_123E
    assert row["proctoring_score"] == Decimal(85)
    assert row["interview_recording_url"] is None


@pytest.mark.parametrize("split", [False, True], ids=["one_batch", "three_batches"])
async def test_recordings_and_score_merge_into_one_report_row(
    db: asyncpg.Connection,  # noqa: F811
    split: bool,
) -> None:
    items = [interview_item(body, offset=i) for i, body in enumerate((RECORDING, WEBCAM, SCORE))]
    if split:
        await apply_each(db, items)
    else:
        await apply(db, items)

    assert await db.fetchval("SELECT count(*) FROM interview_reports") == 1
    row = await one_row(
        db,
        """
        SELECT interview_recording_url, interview_recording_player_url,
               interview_webcam_recording_url, interview_webcam_recording_player_url,
               proctoring_score
        FROM interview_reports WHERE report_id = 'ABCD1234'
        """,
    )
    assert tuple(row) == (
        "https://url_to_interview_recording.m3u8",
        "https://zara.micro1.ai/ai-interview-videos/ABCDXYZ",
        "https://url_to_interview_webcam_recording.m3u8",
        "https://zara.micro1.ai/ai-interview-videos/ABCDXYZ",
        Decimal(85),
    )


@pytest.mark.parametrize("status", list(APPLICANT_SAMPLES))
async def test_applicant_sample(db: asyncpg.Connection, status: str) -> None:  # noqa: F811
    body = APPLICANT_SAMPLES[status]
    event = interview_decoder.decode(body)
    assert isinstance(event, iv.ApplicantEvent)
    assert event.data.resume_score == Decimal("99.99")
    await apply(db, [interview_item(body)])

    row = await one_row(db, "SELECT * FROM applicants")
    assert row["job_application_id"] == "123b4567-e89b-12d3-a456-426614174000"
    assert row["candidate_id"] == "123c4567-e89b-12d3-a456-426614174000"
    assert row["job_id"] == "123a4567-e89b-12d3-a456-426614174000"
    assert row["ats_job_application_id"] == "TEST123"
    assert row["ats_job_id"] == "TESTJOBID456"
    assert row["email"] == "john.doe@test.com"
    assert row["candidate_name"] == "John Doe"
    assert row["job_name"] == "Test Engineer"
    assert row["stage"] == "Test Stage"
    assert row["resume_score"] == Decimal("99.99")
    assert str(row["resume_score"]) == "99.99"
    assert row["resume_url"] == "https://example.com/john-doe-resume.pdf"
    assert row["status"] == status
    assert row["date_created"] == utc(2099, 12, 31, 23, 55)
    assert row["date_modified"] == utc(2100, 1, 1)

    candidate = await one_row(db, "SELECT candidate_id, name, email FROM candidates")
    assert tuple(candidate) == (
        "123c4567-e89b-12d3-a456-426614174000",
        "John Doe",
        "john.doe@test.com",
    )
    job = await one_row(db, "SELECT job_id, name, ats_job_id FROM jobs")
    assert tuple(job) == ("123a4567-e89b-12d3-a456-426614174000", "Test Engineer", "TESTJOBID456")


async def test_applicant_samples_in_any_order_end_completed(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    """The four samples share date_modified; the lifecycle rank decides, whatever the order."""
    items = [interview_item(b, offset=i) for i, b in enumerate(APPLICANT_SAMPLES.values())]
    await apply_each(db, reversed(items))
    assert await db.fetchval("SELECT status FROM applicants") == "completed"
    await apply_each(db, items)
    await apply(db, items[:2])
    assert await db.fetchval("SELECT status FROM applicants") == "completed"
    assert await db.fetchval("SELECT count(*) FROM applicants") == 1


async def test_replaying_all_samples_changes_nothing(db: asyncpg.Connection) -> None:  # noqa: F811
    items = [interview_item(body, offset=i) for i, body in enumerate(SAMPLES)]
    await apply(db, items)
    first = await snapshot(db)
    await apply_each(db, items)
    await apply(db, items)
    assert await snapshot(db) == first
    assert {t: len(rows) for t, rows in first.items()} == {
        "proctoring_events": 0,
        "proctoring_sessions": 0,
        "system_checks": 0,
        "candidates": 3,  # 123a (started), 123e (report), 123c (applicant)
        "jobs": 2,
        "applicants": 1,
        "interviews": 2,
        "interview_reports": 2,
        "proctoring_violations": 1,
    }


def _with_scores(body: bytes, **scores: float) -> bytes:
    value = sample_json(body)
    value["data"].update(scores)
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("body", "column", "score"),
    [
        (REPORT, "proctoring_score", "72.3"),
        (REPORT, "ai_match_score", "85.3"),
        (SCORE, "proctoring_score", "0.1"),
    ],
    ids=["report_proctoring_score", "report_ai_match_score", "score_event"],
)
async def test_fractional_scores_are_stored_as_sent(
    db: asyncpg.Connection,  # noqa: F811
    body: bytes,
    column: str,
    score: str,
) -> None:
    """A score the producer sends as 72.3 is stored as 72.3, not as the binary float's
    expansion 72.2999999999999971578290569595992565155029296875."""
    sent = _with_scores(body, **{column: float(score)})
    assert f'"{column}": {score}'.encode() in sent
    await apply(db, [interview_item(sent)])
    stored = await db.fetchval(f"SELECT {column} FROM interview_reports")
    assert stored == Decimal(score), f"{column}: sent {score}, stored {stored}"


def test_seed_copies_are_byte_identical_to_shared_seeds() -> None:
    if not SHARED_SEEDS.is_dir():
        pytest.skip(f"{SHARED_SEEDS} does not exist on this machine")
    for name in (PROCTORING_SEED, INTERVIEW_SEED):
        shared = (SHARED_SEEDS / name).read_bytes()
        assert (REPO_SEEDS / name).read_bytes() == shared, name
