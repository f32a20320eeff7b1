"""`applicant.created|invited|updated|completed`: the application, its candidate and its job.

An application is a gated row (worker/handlers/merge.py): its version is (`date_modified`,
lifecycle rank created < invited < updated < completed), a missing `date_modified` being the
oldest. A stale event (lower version than the row) changes nothing anywhere, not even the
candidate's or the job's names; a current one replaces each field it carries non-null and
gives the row its status and version.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from schemas.interview import ApplicantEvent
from worker.handlers.base import BatchHandler, Item
from worker.handlers.merge import ROW_AGE, Column, GatedFold, GatedTable, Rule, time_order
from worker.handlers.registers import Registers

STATUSES = ("created", "invited", "updated", "completed")
STATUS_RANK = {status: rank for rank, status in enumerate(STATUSES, 1)}


def version(date_modified: dt.datetime | None, status: str) -> tuple[Any, int]:
    return (time_order(date_modified), STATUS_RANK[status])


_STATUS_ARRAY = "ARRAY[" + ", ".join(f"'{s}'" for s in STATUSES) + "]"

APPLICANTS = GatedTable(
    "applicants",
    Column("job_application_id", "text", Rule.KEY),
    (
        Column("candidate_id", "text"),
        Column("job_id", "text"),
        Column("ats_job_application_id", "text"),
        Column("ats_job_id", "text"),
        Column("email", "text"),
        Column("candidate_name", "text"),
        Column("job_name", "text"),
        Column("stage", "text"),
        Column("resume_score", "numeric"),
        Column("resume_url", "text"),
        Column("status", "text"),
        Column("date_created", "timestamptz"),
        Column("date_modified", "timestamptz"),
    ),
    version=(
        "(COALESCE({ref}.date_modified, '-infinity'), "
        f"array_position({_STATUS_ARRAY}, {{ref}}.status))"
    ),
    version_columns=("date_modified", "status"),
    order=version,
    born=ROW_AGE,
)


class ApplicantHandler(BatchHandler):
    """One instance serves the four applicant events: they write the same row."""

    name = "applicant"

    async def write(
        self, conn: asyncpg.Connection, items: Sequence[Item], registers: Registers
    ) -> None:
        events: list[ApplicantEvent] = [item.event for item in items]
        stored = await APPLICANTS.stored_versions(
            conn, (e.data.micro1_job_application_id for e in events)
        )
        fold = GatedFold(APPLICANTS, stored)
        for e in events:
            d = e.data
            current = fold.offer(
                d.micro1_job_application_id,
                version(d.date_modified, e.status),
                {
                    "candidate_id": d.candidate_id,
                    "job_id": d.micro1_job_id,
                    "ats_job_application_id": d.ats_job_application_id,
                    "ats_job_id": d.ats_job_id,
                    "email": d.email_id,
                    "candidate_name": d.candidate_name,
                    "job_name": d.job_name,
                    "stage": d.stage,
                    "resume_score": d.resume_score,
                    "resume_url": d.resume_url,
                    "status": e.status,
                    "date_created": d.date_created,
                    "date_modified": d.date_modified,
                },
            )
            if current:
                at = d.date_modified
                registers.candidates.add(
                    d.candidate_id, at, {"name": d.candidate_name, "email": d.email_id}
                )
                registers.jobs.add(
                    d.micro1_job_id, at, {"name": d.job_name, "ats_job_id": d.ats_job_id}
                )
        await fold.write(conn, registers.at, registers.ages.get(APPLICANTS.name))
