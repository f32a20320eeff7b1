"""`applicant.created|invited|updated|completed`: the application, its candidate and its job.

Each applicant event carries the applicant's whole state, so the newest event replaces the row
and an older one changes nothing. "Newest" is `date_modified` (absent counts as oldest); on
equal timestamps the later lifecycle status wins (created < invited < updated < completed), and
only a full tie falls back to stream order. That makes the final row independent of the order
in which different events for one application arrive.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg

from schemas.interview import ApplicantEvent
from worker.handlers.base import BatchHandler, Item, columns, newest
from worker.handlers.people import upsert_candidates, upsert_jobs

STATUS_RANK = {"created": 1, "invited": 2, "updated": 3, "completed": 4}
_OLDEST = dt.datetime.min.replace(tzinfo=dt.UTC)

_UPSERT_APPLICANTS = """
INSERT INTO applicants AS a (
    job_application_id, candidate_id, job_id, ats_job_application_id, ats_job_id, email,
    candidate_name, job_name, stage, resume_score, resume_url, status, date_created,
    date_modified)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::numeric[], $11::text[], $12::text[], $13::timestamptz[],
    $14::timestamptz[])
ON CONFLICT (job_application_id) DO UPDATE SET
    candidate_id = EXCLUDED.candidate_id,
    job_id = EXCLUDED.job_id,
    ats_job_application_id = EXCLUDED.ats_job_application_id,
    ats_job_id = EXCLUDED.ats_job_id,
    email = EXCLUDED.email,
    candidate_name = EXCLUDED.candidate_name,
    job_name = EXCLUDED.job_name,
    stage = EXCLUDED.stage,
    resume_score = EXCLUDED.resume_score,
    resume_url = EXCLUDED.resume_url,
    status = EXCLUDED.status,
    date_created = EXCLUDED.date_created,
    date_modified = EXCLUDED.date_modified,
    updated_at = now()
WHERE (COALESCE(EXCLUDED.date_modified, '-infinity'),
       array_position(ARRAY['created', 'invited', 'updated', 'completed'], EXCLUDED.status))
   >= (COALESCE(a.date_modified, '-infinity'),
       array_position(ARRAY['created', 'invited', 'updated', 'completed'], a.status))
"""


def _rank(event: ApplicantEvent) -> tuple[dt.datetime, int]:
    return (event.data.date_modified or _OLDEST, STATUS_RANK[event.status])


class ApplicantHandler(BatchHandler):
    """One instance serves the four applicant events: they write the same row."""

    name = "applicant"

    async def write(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        events: list[ApplicantEvent] = [item.event for item in items]
        await upsert_candidates(
            conn, ((e.data.candidate_id, e.data.candidate_name, e.data.email_id) for e in events)
        )
        await upsert_jobs(
            conn, ((e.data.micro1_job_id, e.data.job_name, e.data.ats_job_id) for e in events)
        )
        chosen = newest(((e.data.micro1_job_application_id, e) for e in events), _rank)
        rows = [
            (
                d.micro1_job_application_id,
                d.candidate_id,
                d.micro1_job_id,
                d.ats_job_application_id,
                d.ats_job_id,
                d.email_id,
                d.candidate_name,
                d.job_name,
                d.stage,
                d.resume_score,
                d.resume_url,
                e.status,
                d.date_created,
                d.date_modified,
            )
            for e in chosen
            for d in (e.data,)
        ]
        await conn.execute(_UPSERT_APPLICANTS, *columns(rows, 14))
