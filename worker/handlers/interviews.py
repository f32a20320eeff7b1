"""`interview.started`: its interview, candidate and job, all registers at `date_started`."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from schemas.interview import InterviewStartedData
from worker.handlers.base import BatchHandler, Item
from worker.handlers.registers import Registers


class InterviewStartedHandler(BatchHandler):
    name = "interview.started"

    async def write(
        self, conn: asyncpg.Connection, items: Sequence[Item], registers: Registers
    ) -> None:
        for item in items:
            d: InterviewStartedData = item.event.data
            at = d.date_started
            registers.interviews.add(
                d.interview_id,
                at,
                {
                    "interview_name": d.interview_name,
                    "candidate_id": d.candidate_id,
                    "job_id": d.job_id,
                    "ats_job_id": d.ats_job_id,
                    "ats_job_application_id": d.ats_job_application_id,
                    "date_started": d.date_started,
                },
            )
            registers.candidates.add(
                d.candidate_id, at, {"name": d.candidate_name, "email": d.candidate_email_id}
            )
            registers.jobs.add(d.job_id, at, {"name": d.job_name, "ats_job_id": d.ats_job_id})
