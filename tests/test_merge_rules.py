"""The merge rules of README "What each table promises" (docs/contract.md §5), one case each,
against a real PostgreSQL: each test is a stream the pre-§5 handlers stored wrongly.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from support.storage import (
    apply,
    db,  # noqa: F401  (fixture)
    interview_item,
)

from worker.handlers.applicants import APPLICANTS
from worker.handlers.base import Item
from worker.handlers.registers import CANDIDATES, INTERVIEWS, JOBS
from worker.handlers.reports import REPORTS


def event(name: str, **data: Any) -> bytes:
    return json.dumps({"event": name, "data": data}).encode()


def items(*values: bytes) -> list[Item]:
    return [interview_item(v, offset=i) for i, v in enumerate(values)]


def applicant(name: str = "applicant.updated", **data: Any) -> bytes:
    base = {"micro1_job_application_id": "app-1", "candidate_id": "cand-1"}
    return event(name, **{**base, **data})


def report(**data: Any) -> bytes:
    base = {"report_id": "rep-1", "interview_id": "int-1", "candidate_id": "cand-1"}
    return event("interview_report.created", **{**base, **data})


async def row(db: asyncpg.Connection, sql: str) -> dict[str, Any]:  # noqa: F811
    found = await db.fetchrow(sql)
    assert found is not None, sql
    return dict(found)


async def test_a_stale_applicant_event_changes_no_table(db: asyncpg.Connection) -> None:  # noqa: F811
    newer = applicant(
        date_modified="2024-02-01T00:00:00Z",
        candidate_name="New Name",
        email_id="new@example.com",
        micro1_job_id="job-1",
        job_name="New Job",
    )
    older = applicant(
        date_modified="2024-01-01T00:00:00Z",
        candidate_name="Old Name",
        email_id="old@example.com",
        micro1_job_id="job-1",
        job_name="Old Job",
        stage="Old stage",
    )
    await apply(db, items(newer))
    await apply(db, items(older))
    assert await row(db, "SELECT name, email FROM candidates") == {
        "name": "New Name",
        "email": "new@example.com",
    }
    assert await row(db, "SELECT name FROM jobs") == {"name": "New Job"}
    assert (await row(db, "SELECT stage FROM applicants"))["stage"] is None


async def test_a_newer_applicant_event_without_a_field_keeps_it(db: asyncpg.Connection) -> None:  # noqa: F811
    await apply(
        db,
        items(
            applicant(date_modified="2024-01-01T00:00:00Z", resume_url="https://cv/1.pdf"),
            applicant(date_modified="2024-02-01T00:00:00Z", resume_url=None, stage="Offer"),
        ),
    )
    stored = await row(db, "SELECT resume_url, stage FROM applicants")
    assert stored == {"resume_url": "https://cv/1.pdf", "stage": "Offer"}


FULL_REPORT = {
    "date_modified": "2024-01-01T10:00:00Z",
    "session_id": "sess-1",
    "report_date": "2024-01-01",
    "ai_match_score": 72.30,
    "status": "draft",
    "report_url": "https://r/1",
    "interview_transcript": [{"q": "a"}],
    "technical_skills_evaluation": [{"skill": "python"}],
    "coding_skills_evaluation": {"score": 3},
    "proctoring_violations": [{"type": "tab", "value": "3"}],
}


async def test_a_regenerated_report_with_fewer_fields_erases_nothing(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    await apply(db, items(report(**FULL_REPORT)))
    # Newer, carrying only status and report_url; the other fields absent or null.
    await apply(
        db,
        items(
            report(
                date_modified="2024-01-02T10:00:00Z",
                status="final",
                report_url="https://r/2",
                session_id=None,
                interview_transcript=None,
            )
        ),
    )
    stored = await row(
        db,
        """SELECT session_id, report_date::text, ai_match_score::text, status, report_url,
                  interview_transcript::text, technical_skills_evaluation::text,
                  coding_skills_evaluation::text, date_modified::text
           FROM interview_reports""",
    )
    assert stored == {
        "session_id": "sess-1",
        "report_date": "2024-01-01",
        "ai_match_score": "72.3",
        "status": "final",
        "report_url": "https://r/2",
        "interview_transcript": '[{"q": "a"}]',
        "technical_skills_evaluation": '[{"skill": "python"}]',
        "coding_skills_evaluation": '{"score": 3}',
        "date_modified": "2024-01-02 10:00:00+00",
    }
    violations = await db.fetch("SELECT type, value FROM proctoring_violations")
    assert [tuple(v) for v in violations] == [("tab", "3")]


async def test_a_newer_report_with_an_empty_violation_list_empties_the_set(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    await apply(db, items(report(**FULL_REPORT)))
    await apply(db, items(report(date_modified="2024-01-02T10:00:00Z", proctoring_violations=[])))
    assert await db.fetchval("SELECT count(*) FROM proctoring_violations") == 0
    # An older one changes neither the report nor the set.
    await apply(
        db,
        items(
            report(
                date_modified="2023-12-01T10:00:00Z",
                status="ancient",
                proctoring_violations=[{"type": "old"}],
            )
        ),
    )
    assert await db.fetchval("SELECT count(*) FROM proctoring_violations") == 0
    assert (await row(db, "SELECT status FROM interview_reports"))["status"] == "draft"


def started(interview: str, at: str, name: str, job_name: str) -> bytes:
    return event(
        "interview.started",
        interview_id=interview,
        candidate_id="cand-1",
        candidate_name=name,
        job_id="job-1",
        job_name=job_name,
        date_started=at,
    )


async def test_names_come_from_the_newest_event_whatever_the_batching(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    """Within one batch the handlers run one after another, not in stream order; a
    candidate's and job's names must not depend on where the batch boundaries fall."""
    stream = items(
        started("int-2", "2024-03-01T00:00:00Z", "Newest Name", "Newest Job"),
        applicant(
            "applicant.created",
            date_modified="2024-01-01T00:00:00Z",
            candidate_name="Older Name",
            micro1_job_id="job-1",
            job_name="Older Job",
        ),
        started("int-1", "2024-02-01T00:00:00Z", "Middle Name", "Middle Job"),
    )
    results = []
    for split in ([stream], [stream[:1], stream[1:]], [[i] for i in stream]):
        await db.execute("TRUNCATE candidates, jobs, applicants, interviews")
        for batch in split:
            await apply(db, batch)
        results.append(
            (
                await row(db, "SELECT name FROM candidates"),
                await row(db, "SELECT name FROM jobs"),
            )
        )
    assert results == [({"name": "Newest Name"}, {"name": "Newest Job"})] * 3


async def test_ties_on_time_go_to_the_greater_value(db: asyncpg.Connection) -> None:  # noqa: F811
    at = "2024-03-01T00:00:00Z"
    for order in (("Ann", "Bob"), ("Bob", "Ann")):
        await db.execute("TRUNCATE candidates, jobs, interviews")
        for i, name in enumerate(order):
            await apply(db, items(started(f"int-{i}", at, name, name)))
        assert await row(db, "SELECT name FROM candidates") == {"name": "Bob"}


async def test_every_declared_column_exists_in_the_migrated_schema(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    """The declarations in worker/handlers generate the SQL; the migrations must have made
    every column they name, version columns included."""
    tables: list[Any] = [CANDIDATES, JOBS, INTERVIEWS, APPLICANTS, REPORTS]
    for table in tables:
        names = {table.key.name}
        for c in table.columns:
            names |= {c.name, c.version} if c.versioned else {c.name}
        found = {
            r[0]
            for r in await db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                table.name,
            )
        }
        assert names <= found, f"{table.name} lacks {sorted(names - found)}"
