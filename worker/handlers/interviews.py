"""`interview.started`: the interview, its candidate and its job."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from schemas.interview import InterviewStartedData
from worker.handlers.base import BatchHandler, Item, columns, last_non_null
from worker.handlers.people import upsert_candidates, upsert_jobs

# interview.started is the interview's own event: its non-null values win over what a report
# filled in earlier (see reports.py, which only fills gaps), so the order of the two is moot.
_UPSERT_INTERVIEWS = """
INSERT INTO interviews AS i (
    interview_id, interview_name, candidate_id, job_id, ats_job_id, ats_job_application_id,
    date_started)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
ON CONFLICT (interview_id) DO UPDATE SET
    interview_name = COALESCE(EXCLUDED.interview_name, i.interview_name),
    candidate_id = COALESCE(EXCLUDED.candidate_id, i.candidate_id),
    job_id = COALESCE(EXCLUDED.job_id, i.job_id),
    ats_job_id = COALESCE(EXCLUDED.ats_job_id, i.ats_job_id),
    ats_job_application_id = COALESCE(EXCLUDED.ats_job_application_id, i.ats_job_application_id),
    date_started = COALESCE(EXCLUDED.date_started, i.date_started),
    updated_at = now()
"""


class InterviewStartedHandler(BatchHandler):
    name = "interview.started"

    async def write(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        data: list[InterviewStartedData] = [item.event.data for item in items]
        await upsert_candidates(
            conn, ((d.candidate_id, d.candidate_name, d.candidate_email_id) for d in data)
        )
        await upsert_jobs(conn, ((d.job_id, d.job_name, d.ats_job_id) for d in data))
        rows = last_non_null(
            (
                d.interview_id,
                [
                    d.interview_id,
                    d.interview_name,
                    d.candidate_id,
                    d.job_id,
                    d.ats_job_id,
                    d.ats_job_application_id,
                    d.date_started,
                ],
            )
            for d in data
        )
        await conn.execute(_UPSERT_INTERVIEWS, *columns(rows, 7))
