"""The four events that build one `interview_reports` row, in any order.

`interview_report.created` owns the report's own columns: a gated row (worker/handlers/merge.py)
whose version is the report's `date_modified`. A current report event replaces each column it
carries non-null and, when it carries `proctoring_violations` (an array, even empty), the
report's violation set; a stale one changes neither. The recording, webcam-recording and
proctoring-score events carry no time and each owns its own columns, as registers where the
greater value wins, so no event erases another's values and arrival order never decides. Where
two events carry the same value (recording URL, proctoring score) each source has its own
column and the public column is computed from them, the dedicated event taking precedence.

One handler writes all four, one statement per step, so that two commit lanes holding events
of the same reports (they came through two partitions) cannot deadlock: the first statement,
the part events' upsert, names every report of the batch in key order, creating the rows that
do not exist yet and locking the others even where it changes nothing (`ON CONFLICT DO UPDATE
... WHERE` locks the rows it skips); the report events' version read, their upsert and the
violations then touch only rows the transaction holds. Every transaction thus takes its
report locks in one order, before any register table (worker/handlers/registers.py), and a lane
waits for the other instead of each holding what the other needs. (Before, each event type
had its own statement: partition 0's recordings and partition 1's webcam recordings of the
same reports locked in opposite orders; tests/test_report_lanes.py counts the deadlocks.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from schemas.interview import (
    InterviewRecordingCompleted,
    InterviewReportData,
    InterviewWebcamRecordingCompleted,
    ProctoringScoreCompleted,
    ProctoringViolation,
    raw_or_none,
)
from worker.handlers.base import BatchHandler, Item, columns
from worker.handlers.merge import (
    ROW_AGE,
    Column,
    GatedFold,
    GatedTable,
    RegisterTable,
    Rule,
    param,
    stamp,
    time_order,
)
from worker.handlers.registers import Registers

_BLOCKS = (
    "interview_transcript",
    "technical_skills_evaluation",
    "soft_skills_evaluation",
    "coding_skills_evaluation",
    "custom_exercise_evaluation",
    "custom_question_evaluation",
)

# Column name -> (type, how the report event fills it).
_REPORT_COLUMNS: dict[str, tuple[str, Any]] = {
    "interview_id": ("text", lambda d: d.interview_id),
    "session_id": ("text", lambda d: d.session_id),
    "candidate_id": ("text", lambda d: d.candidate_id),
    "job_applicant_id": ("text", lambda d: d.job_applicant_id),
    "interview_name": ("text", lambda d: d.interview_name),
    "ats_job_id": ("text", lambda d: d.ats_job_id),
    "ats_job_application_id": ("text", lambda d: d.ats_job_application_id),
    "report_date": ("date", lambda d: d.report_date),
    "report_url": ("text", lambda d: d.report_url),
    "recording_url_from_report": ("text", lambda d: d.interview_recording_url),
    "proctoring_score_from_report": ("numeric", lambda d: d.proctoring_score),
    "ai_match_score": ("numeric", lambda d: d.ai_match_score),
    "status": ("text", lambda d: d.status),
    "date_created": ("timestamptz", lambda d: d.date_created),
    "date_modified": ("timestamptz", lambda d: d.date_modified),
    **{block: ("jsonb", lambda d, b=block: _json_text(getattr(d, b))) for block in _BLOCKS},
}


def _report_version(date_modified: dt.datetime | None) -> tuple[Any, ...]:
    return time_order(date_modified)


REPORTS = GatedTable(
    "interview_reports",
    Column("report_id", "text", Rule.KEY),
    tuple(Column(name, pg_type) for name, (pg_type, _) in _REPORT_COLUMNS.items()),
    version="(COALESCE({ref}.date_modified, '-infinity'))",
    version_columns=("date_modified",),
    order=_report_version,
    # A row the other three events created is still waiting for its report.
    fresh="NOT {ref}.has_report",
    constants=(("has_report", "true"),),
)

_DELETE_VIOLATIONS = "DELETE FROM proctoring_violations WHERE report_id = ANY($1::text[])"

_INSERT_VIOLATIONS = """
INSERT INTO proctoring_violations (report_id, type, value, description)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
"""


class ReportHandler(BatchHandler):
    """One instance serves the four events of a report: they write the same rows, so a
    batch's report events become one statement per step, in key order (see the module
    docstring: why two lanes then never deadlock)."""

    name = "interview_report"

    def __init__(self, parts: dict[type, dict[str, Column]]) -> None:
        """`parts` maps each part event's struct to {data attribute: the column it fills}."""
        self._parts = parts
        columns = [c for fields in parts.values() for c in fields.values()]
        # The first statement of every report of the batch: a row it creates is born with
        # its age (worker/horizon.py), which no later statement of the batch changes.
        self._table = RegisterTable(
            "interview_reports",
            REPORTS.key,
            (Column("candidate_id", "text"), *columns),
            born=ROW_AGE,
        )
        self._sql = _parts_sql(self._table, columns)

    async def write(
        self, conn: asyncpg.Connection, items: Sequence[Item], registers: Registers
    ) -> None:
        parts = self._table.fold()
        least: dict[str, str] = {}
        reports: list[InterviewReportData] = []
        for item in items:
            d = item.event.data
            fields = self._parts.get(type(item.event))
            if fields is None:
                reports.append(d)
                parts.add(d.report_id, None, {})  # the row is locked (or created) here too
                continue
            parts.add(d.report_id, None, {c.name: getattr(d, a) for a, c in fields.items()})
            least[d.report_id] = min(least.get(d.report_id, d.candidate_id), d.candidate_id)
        for report_id, candidate_id in least.items():
            parts.add(report_id, None, {"candidate_id": candidate_id})
        # Step 1 locks every report row of the batch, creating the missing ones, in key
        # order; every later statement touches only rows this transaction already holds.
        born = registers.ages.get(self._table.name)
        await conn.execute(self._sql, *parts.arrays(born), registers.at)
        if reports:
            await _write_reports(conn, reports, registers)


def _parts_sql(table: RegisterTable, columns: Sequence[Column]) -> str:
    """The part events' upsert: registers of their own columns (no time: the greater value
    wins), and the report's candidate_id until the report event sets it (the smallest value,
    which no arrival order can change). A row without values is locked and left alone."""
    names, types = table.inserted()
    params = ", ".join(param(i, t) for i, t in enumerate(types, 1))
    at = len(types) + 1
    sets = [
        f"{c.name} = CASE WHEN {table.wins(c)} THEN EXCLUDED.{c.name} ELSE t.{c.name} END"
        for c in columns
    ]
    sets_sql = ",\n    ".join(sets)
    changed = "\n   OR ".join(table.wins(c) for c in columns)
    return f"""
INSERT INTO interview_reports AS t ({", ".join(names)}, updated_at)
SELECT *, ${at}::timestamptz FROM unnest({params})
ON CONFLICT (report_id) DO UPDATE SET
    candidate_id = CASE WHEN t.has_report THEN t.candidate_id
                        ELSE LEAST(t.candidate_id COLLATE "C", EXCLUDED.candidate_id) END,
    {sets_sql},
    {stamp(at)}
WHERE (NOT t.has_report AND EXCLUDED.candidate_id IS NOT NULL
       AND (t.candidate_id IS NULL OR EXCLUDED.candidate_id COLLATE "C" < t.candidate_id))
   OR {changed}
"""


async def _write_reports(
    conn: asyncpg.Connection, reports: list[InterviewReportData], registers: Registers
) -> None:
    """The report events' columns (a gated row) and violation sets, and their names and
    interviews into the registers."""
    stored = await REPORTS.stored_versions(conn, (d.report_id for d in reports))
    fold = GatedFold(REPORTS, stored)
    violations: dict[str, list[ProctoringViolation]] = {}
    for d in reports:
        values = {name: fill(d) for name, (_, fill) in _REPORT_COLUMNS.items()}
        current = fold.offer(d.report_id, _report_version(d.date_modified), values)
        if current and d.proctoring_violations is not None:
            violations[d.report_id] = d.proctoring_violations
        # Names and the interview are registers: a stale report still offers them, at
        # its own (older) time.
        at = d.date_modified
        registers.candidates.add(
            d.candidate_id, at, {"name": d.candidate_name, "email": d.candidate_email_id}
        )
        registers.interviews.add(
            d.interview_id,
            at,
            {
                "interview_name": d.interview_name,
                "candidate_id": d.candidate_id,
                "ats_job_id": d.ats_job_id,
                "ats_job_application_id": d.ats_job_application_id,
            },
        )
    await fold.write(conn, registers.at)
    await _replace_violations(conn, violations)


async def _replace_violations(
    conn: asyncpg.Connection, violations: dict[str, list[ProctoringViolation]]
) -> None:
    if not violations:
        return
    await conn.execute(_DELETE_VIOLATIONS, sorted(violations))
    rows: dict[tuple[str, str], tuple[str, str, str | None, str | None]] = {}
    for report_id, listed in violations.items():
        for v in listed:
            # A type listed twice keeps its last entry: the key is (report_id, type).
            rows[(report_id, v.type)] = (report_id, v.type, v.value_text, v.description)
    if rows:
        await conn.execute(_INSERT_VIOLATIONS, *columns([rows[k] for k in sorted(rows)], 4))


def _json_text(raw: object) -> str | None:
    body = raw_or_none(raw)  # type: ignore[arg-type]
    return None if body is None else body.decode()


report_handler = ReportHandler(
    {
        InterviewRecordingCompleted: {
            "interview_recording_url": Column("recording_url_from_event", "text", Rule.GREATEST),
            "interview_recording_player_url": Column(
                "interview_recording_player_url", "text", Rule.GREATEST
            ),
        },
        InterviewWebcamRecordingCompleted: {
            "interview_webcam_recording_url": Column(
                "interview_webcam_recording_url", "text", Rule.GREATEST
            ),
            "interview_webcam_recording_player_url": Column(
                "interview_webcam_recording_player_url", "text", Rule.GREATEST
            ),
        },
        ProctoringScoreCompleted: {
            "proctoring_score": Column("proctoring_score_from_event", "numeric", Rule.GREATEST)
        },
    }
)
