"""The register tables several handlers fill: candidates, jobs and interviews.

Every interview or applicant event that names a candidate, a job or an interview contributes
to its row; a batch's contributions from all handlers are folded into one row per key and
written once per transaction, after the handlers' own tables, in key order. One fold makes
the batch's result independent of the order handlers run in, and one statement per table,
in the same table order in every transaction, keeps two commit lanes from deadlocking on a
shared job or candidate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import asyncpg

from worker.clock import transaction_time
from worker.handlers.merge import ROW_AGE, Born, Column, RegisterTable, Rule

_NEWEST_TEXT = ("text", Rule.NEWEST)

CANDIDATES = RegisterTable(
    "candidates",
    Column("candidate_id", "text", Rule.KEY),
    (Column("name", *_NEWEST_TEXT), Column("email", *_NEWEST_TEXT)),
)
JOBS = RegisterTable(
    "jobs",
    Column("job_id", "text", Rule.KEY),
    (Column("name", *_NEWEST_TEXT), Column("ats_job_id", *_NEWEST_TEXT)),
)
INTERVIEWS = RegisterTable(
    "interviews",
    Column("interview_id", "text", Rule.KEY),
    (
        Column("interview_name", *_NEWEST_TEXT),
        Column("candidate_id", *_NEWEST_TEXT),
        Column("job_id", *_NEWEST_TEXT),
        Column("ats_job_id", *_NEWEST_TEXT),
        Column("ats_job_application_id", *_NEWEST_TEXT),
        # Only interview.started carries it, at its own time: the greatest value is the
        # newest, and no version column is needed.
        Column("date_started", "timestamptz", Rule.GREATEST),
    ),
    born=ROW_AGE,
)


class Registers:
    """A transaction's contributions to the shared register tables, and its time `at`
    (`worker.clock.transaction_time`), which every handler of the transaction binds
    as `updated_at`. `guarded`: the writes run under a savepoint, so a handler may try a
    statement and recover from its failure inside the transaction; when False, a failure
    loses the transaction and the caller tries it again guarded (worker/commit.py). `ages`:
    by table name, the age each row the batch may create is born with (worker/horizon.py)."""

    __slots__ = ("ages", "at", "candidates", "guarded", "interviews", "jobs")

    def __init__(
        self,
        at: dt.datetime | None = None,
        guarded: bool = True,
        ages: Mapping[str, Born] | None = None,
    ) -> None:
        self.at = transaction_time() if at is None else at
        self.guarded = guarded
        self.ages: Mapping[str, Born] = {} if ages is None else ages
        self.interviews = INTERVIEWS.fold()
        self.candidates = CANDIDATES.fold()
        self.jobs = JOBS.fold()

    async def write(self, conn: asyncpg.Connection) -> None:
        # Always this order: every transaction locks shared rows table by table, key by key.
        for fold in (self.interviews, self.candidates, self.jobs):
            await fold.write(conn, self.at, self.ages.get(fold.table.name))
