"""The four events that build one `interview_reports` row, in any order.

`interview_report.created` owns the report's own columns and replaces them when it is at least
as new (`date_modified`) as what is stored; its violations replace the report's previous set in
the same transaction. The recording, webcam-recording and proctoring-score events each own
their own columns and only ever set them, so no event erases another's values. Where two events
carry the same value (recording URL, proctoring score) each source has its own column and the
public column is computed from them, with the dedicated event taking precedence.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg

from schemas.interview import InterviewReportCreated, InterviewReportData, raw_or_none
from worker.handlers.base import BatchHandler, Item, columns, last_non_null, newest
from worker.handlers.people import upsert_candidates

_OLDEST = dt.datetime.min.replace(tzinfo=dt.UTC)

_UPSERT_REPORTS = """
INSERT INTO interview_reports AS r (
    report_id, interview_id, session_id, candidate_id, job_applicant_id, interview_name,
    ats_job_id, ats_job_application_id, report_date, report_url, recording_url_from_report,
    proctoring_score_from_report, ai_match_score, status, date_created, date_modified,
    interview_transcript, technical_skills_evaluation, soft_skills_evaluation,
    coding_skills_evaluation, custom_exercise_evaluation, custom_question_evaluation,
    has_report)
SELECT *, true FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::date[], $10::text[], $11::text[], $12::numeric[], $13::numeric[],
    $14::text[], $15::timestamptz[], $16::timestamptz[], $17::jsonb[], $18::jsonb[],
    $19::jsonb[], $20::jsonb[], $21::jsonb[], $22::jsonb[])
ON CONFLICT (report_id) DO UPDATE SET
    interview_id = EXCLUDED.interview_id,
    session_id = EXCLUDED.session_id,
    candidate_id = EXCLUDED.candidate_id,
    job_applicant_id = EXCLUDED.job_applicant_id,
    interview_name = EXCLUDED.interview_name,
    ats_job_id = EXCLUDED.ats_job_id,
    ats_job_application_id = EXCLUDED.ats_job_application_id,
    report_date = EXCLUDED.report_date,
    report_url = EXCLUDED.report_url,
    recording_url_from_report = EXCLUDED.recording_url_from_report,
    proctoring_score_from_report = EXCLUDED.proctoring_score_from_report,
    ai_match_score = EXCLUDED.ai_match_score,
    status = EXCLUDED.status,
    date_created = EXCLUDED.date_created,
    date_modified = EXCLUDED.date_modified,
    interview_transcript = EXCLUDED.interview_transcript,
    technical_skills_evaluation = EXCLUDED.technical_skills_evaluation,
    soft_skills_evaluation = EXCLUDED.soft_skills_evaluation,
    coding_skills_evaluation = EXCLUDED.coding_skills_evaluation,
    custom_exercise_evaluation = EXCLUDED.custom_exercise_evaluation,
    custom_question_evaluation = EXCLUDED.custom_question_evaluation,
    has_report = true,
    updated_at = now()
WHERE NOT r.has_report
   OR COALESCE(EXCLUDED.date_modified, '-infinity') >= COALESCE(r.date_modified, '-infinity')
RETURNING r.report_id
"""

_DELETE_VIOLATIONS = "DELETE FROM proctoring_violations WHERE report_id = ANY($1::text[])"

_INSERT_VIOLATIONS = """
INSERT INTO proctoring_violations (report_id, type, value, description)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
"""

# A report names its interview; it fills what interview.started has not (or not yet) set.
_FILL_INTERVIEWS = """
INSERT INTO interviews AS i (
    interview_id, interview_name, candidate_id, ats_job_id, ats_job_application_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
ON CONFLICT (interview_id) DO UPDATE SET
    interview_name = COALESCE(i.interview_name, EXCLUDED.interview_name),
    candidate_id = COALESCE(i.candidate_id, EXCLUDED.candidate_id),
    ats_job_id = COALESCE(i.ats_job_id, EXCLUDED.ats_job_id),
    ats_job_application_id = COALESCE(i.ats_job_application_id, EXCLUDED.ats_job_application_id),
    updated_at = now()
WHERE (i.interview_name IS NULL AND EXCLUDED.interview_name IS NOT NULL)
   OR (i.candidate_id IS NULL AND EXCLUDED.candidate_id IS NOT NULL)
   OR (i.ats_job_id IS NULL AND EXCLUDED.ats_job_id IS NOT NULL)
   OR (i.ats_job_application_id IS NULL AND EXCLUDED.ats_job_application_id IS NOT NULL)
"""


def _report_rank(data: InterviewReportData) -> dt.datetime:
    return data.date_modified or _OLDEST


class ReportCreatedHandler(BatchHandler):
    name = "interview_report.created"

    async def write(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        reports: list[InterviewReportData] = [
            item.event.data for item in items if isinstance(item.event, InterviewReportCreated)
        ]
        await upsert_candidates(
            conn, ((d.candidate_id, d.candidate_name, d.candidate_email_id) for d in reports)
        )
        interviews = last_non_null(
            (
                (
                    d.interview_id,
                    [
                        d.interview_id,
                        d.interview_name,
                        d.candidate_id,
                        d.ats_job_id,
                        d.ats_job_application_id,
                    ],
                )
                for d in reports
            ),
            keep_first=frozenset({1, 2, 3, 4}),
        )
        await conn.execute(_FILL_INTERVIEWS, *columns(interviews, 5))

        chosen = newest(((d.report_id, d) for d in reports), _report_rank)
        rows = [
            (
                d.report_id,
                d.interview_id,
                d.session_id,
                d.candidate_id,
                d.job_applicant_id,
                d.interview_name,
                d.ats_job_id,
                d.ats_job_application_id,
                d.report_date,
                d.report_url,
                d.interview_recording_url,
                d.proctoring_score,
                d.ai_match_score,
                d.status,
                d.date_created,
                d.date_modified,
                _json_text(d.interview_transcript),
                _json_text(d.technical_skills_evaluation),
                _json_text(d.soft_skills_evaluation),
                _json_text(d.coding_skills_evaluation),
                _json_text(d.custom_exercise_evaluation),
                _json_text(d.custom_question_evaluation),
            )
            for d in chosen
        ]
        applied = {r["report_id"] for r in await conn.fetch(_UPSERT_REPORTS, *columns(rows, 22))}
        if not applied:
            return
        await conn.execute(_DELETE_VIOLATIONS, sorted(applied))
        violations: dict[tuple[str, str], tuple[str, str, str | None, str | None]] = {}
        for d in chosen:
            if d.report_id in applied:
                for v in d.proctoring_violations or ():
                    # A type listed twice keeps its last entry: the key is (report_id, type).
                    violations[(d.report_id, v.type)] = (
                        d.report_id,
                        v.type,
                        v.value_text,
                        v.description,
                    )
        if violations:
            vrows = [violations[k] for k in sorted(violations)]
            await conn.execute(_INSERT_VIOLATIONS, *columns(vrows, 4))


def _json_text(raw: object) -> str | None:
    body = raw_or_none(raw)  # type: ignore[arg-type]
    return None if body is None else body.decode()


class ReportPartHandler(BatchHandler):
    """A recording, webcam-recording or proctoring-score event: sets its own columns only."""

    def __init__(self, name: str, fields: dict[str, str], casts: dict[str, str]) -> None:
        """`fields` maps event data attributes to interview_reports columns."""
        self.name = name
        self._attrs = list(fields)
        cols = list(fields.values())
        params = ", ".join(f"${i + 3}::{casts.get(c, 'text')}[]" for i, c in enumerate(cols))
        updates = ",\n    ".join(f"{c} = COALESCE(EXCLUDED.{c}, r.{c})" for c in cols)
        changed = "\n   OR ".join(
            f"(EXCLUDED.{c} IS NOT NULL AND EXCLUDED.{c} IS DISTINCT FROM r.{c})" for c in cols
        )
        # candidate_id: the report event's value is authoritative. Until it arrives, events
        # that disagree settle on the smallest value, which no arrival order can change.
        self._sql = f"""
INSERT INTO interview_reports AS r (report_id, candidate_id, {", ".join(cols)})
SELECT * FROM unnest($1::text[], $2::text[], {params})
ON CONFLICT (report_id) DO UPDATE SET
    candidate_id = CASE WHEN r.has_report THEN r.candidate_id
                        ELSE LEAST(r.candidate_id, EXCLUDED.candidate_id) END,
    {updates},
    updated_at = now()
WHERE (NOT r.has_report AND EXCLUDED.candidate_id IS NOT NULL
       AND EXCLUDED.candidate_id IS DISTINCT FROM r.candidate_id)
   OR {changed}
"""

    async def write(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        rows = last_non_null(
            (
                (
                    d.report_id,
                    [d.report_id, d.candidate_id, *(getattr(d, a) for a in self._attrs)],
                )
                for d in (item.event.data for item in items)
            ),
            keep_least=frozenset({1}),
        )
        await conn.execute(self._sql, *columns(rows, 2 + len(self._attrs)))


recording_handler = ReportPartHandler(
    "interview_recording.completed",
    {
        "interview_recording_url": "recording_url_from_event",
        "interview_recording_player_url": "interview_recording_player_url",
    },
    {},
)
webcam_recording_handler = ReportPartHandler(
    "interview_webcam_recording.completed",
    {
        "interview_webcam_recording_url": "interview_webcam_recording_url",
        "interview_webcam_recording_player_url": "interview_webcam_recording_player_url",
    },
    {},
)
proctoring_score_handler = ReportPartHandler(
    "proctoring_score.completed",
    {"proctoring_score": "proctoring_score_from_event"},
    {"proctoring_score_from_event": "numeric"},
)
