"""Candidates and jobs: side tables several interview events fill in.

Any event that names a candidate or a job may carry its name; a later non-null value wins and
a null never erases one. The WHERE clause skips rows that would not change, so replays do not
rewrite (and lock) hot rows such as a popular job.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from worker.handlers.base import columns, last_non_null

_UPSERT_CANDIDATES = """
INSERT INTO candidates AS c (candidate_id, name, email)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT (candidate_id) DO UPDATE SET
    name = COALESCE(EXCLUDED.name, c.name),
    email = COALESCE(EXCLUDED.email, c.email),
    updated_at = now()
WHERE (EXCLUDED.name IS NOT NULL AND EXCLUDED.name IS DISTINCT FROM c.name)
   OR (EXCLUDED.email IS NOT NULL AND EXCLUDED.email IS DISTINCT FROM c.email)
"""

_UPSERT_JOBS = """
INSERT INTO jobs AS j (job_id, name, ats_job_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT (job_id) DO UPDATE SET
    name = COALESCE(EXCLUDED.name, j.name),
    ats_job_id = COALESCE(EXCLUDED.ats_job_id, j.ats_job_id),
    updated_at = now()
WHERE (EXCLUDED.name IS NOT NULL AND EXCLUDED.name IS DISTINCT FROM j.name)
   OR (EXCLUDED.ats_job_id IS NOT NULL AND EXCLUDED.ats_job_id IS DISTINCT FROM j.ats_job_id)
"""


async def upsert_candidates(
    conn: asyncpg.Connection, rows: Iterable[tuple[str, str | None, str | None]]
) -> None:
    """Rows are (candidate_id, name, email) in stream order."""
    folded = last_non_null((row[0], list(row)) for row in rows)
    if folded:
        await conn.execute(_UPSERT_CANDIDATES, *columns(folded, 3))


async def upsert_jobs(
    conn: asyncpg.Connection, rows: Iterable[tuple[str | None, str | None, str | None]]
) -> None:
    """Rows are (job_id, name, ats_job_id) in stream order; rows without a job_id are skipped."""
    folded = last_non_null((row[0], list(row)) for row in rows if row[0] is not None)
    if folded:
        await conn.execute(_UPSERT_JOBS, *columns(folded, 3))
