"""A reference model of docs/contract.md §5, as the README's "What each table promises" states it.

Slow and plain on purpose: decoded events (the structs of schemas/, as worker.decode returns
them) are applied ONE AT A TIME, IN STREAM ORDER, to one dictionary per table keyed by the
table's primary key. Nothing here comes from worker.handlers or worker.router: this is the rule
text, so the worker's SQL is checked against it and not against itself.

The rules, as applied below:

- An event's *time* is its `date_modified`, else its `date_started`; without either it is older
  than any event with one (`time_order`). Values compare as text by code point, numbers
  numerically and then by their decimal text, timestamps and dates chronologically
  (`value_order`).
- Registers (`Register`): `candidates`, `jobs`, `interviews` and the columns of the recording,
  webcam-recording and proctoring-score events hold, per column, the non-null value with the
  greatest (time, value) among the events that carried one. The three part events have no time.
- `applicants` is a gated row: version (date_modified, lifecycle rank). A stale event (lower
  version) changes nothing anywhere, including the candidate's and the job's registers; a
  current one replaces each column it carries non-null, sets `status`, and takes the version.
- `interview_reports`, the `interview_report.created` columns: gated by `date_modified`. A stale
  report event changes nothing in `interview_reports` or `proctoring_violations`; its
  contributions to `candidates` and `interviews` still go to those registers. A current one
  replaces each column it carries non-null and, when it carries a violations array (even
  empty), the whole violation set (a type listed twice keeps its last entry). `candidate_id` is
  the report event's; until one arrives, the smallest the part events carry.
  `interview_recording_url` and `proctoring_score` are the part event's value, else the report's.
- Erasure (docs/contract.md §7): `forget(candidate, ends)` removes every row naming the candidate
  (`candidates`; `applicants`, `interviews`, `interview_reports` whose candidate_id is theirs,
  with the reports' violations; the candidate's proctoring events, sessions and system
  checks). `forget_email(email, ends)` does so for every id the email links: ids equal to it
  lower-cased (any namespace, any table), and ids whose stored `candidates.email` or
  `applicants.email` equals it lower-cased; the erasure then covers those ids AND the email.
  From then on an event that names a covered id (its candidate id) or the email (lower-cased,
  in `candidate_email_id`, `email_id`, or as its candidate id) is *old* when ANY of its
  coordinates lies below the erasure's end for the coordinate's partition: its own, and those
  of its `dlq.replay.origin` when (and only when) that origin is signed. An old event is
  skipped whole, contributing to no table, and counted in `erased`; later events apply as
  usual. A dead letter (`dead_letter(names, coordinates)`: the JSON strings of its raw value,
  its own and its signed origin's coordinates) is published unless old by the same rule, in
  which case it is counted in `erased` instead.
- `proctoring_events`, `system_checks`: the first event with a key is kept.
  `proctoring_sessions`: earliest STARTED, latest END_PROCTORING, latest event, and the number
  of distinct flag events ever stored in `proctoring_events` (a session's aggregates change
  only when one of its events is stored for the first time).
- Retention (docs/contract.md §7), the horizon learnt first. A record's *instant* is its own
  time (proctoring: `createdAt`; `interview.started`: `date_started`; a report or applicant
  event: `date_modified`, else `date_created`; the part events: none), or its Kafka timestamp
  where it has none or its own time is later than the Kafka timestamp by more than an hour
  (absurd); neither: no instant. With the clock at `now`, a record whose instant lies before
  its family's cutoff is *expired*: it changes no table and is counted per topic (before any
  erasure: a record both expired and erased counts as expired). The cutoffs are
  `max(now - days, expired_before)` for proctoring records and `max(now - interview_days,
  interview_expired_before)` for interview records (an unset days: no age rule).
  A system check's `timestamp` decides nothing about its record: the `system_checks` row of a
  kept event is stored unless its timestamp lies before `expired_before`.
  `drop_before(month)` (a UTC month start: partitions are UTC months, and one is
  dropped when its whole month lies before the drop bound) removes the events and system
  checks before it, the sessions whose last event is before it, and raises `expired_before`
  to it. Each `interview_reports`, `interviews` and `applicants` row keeps an age: the end of
  the UTC day of the latest instant of the records applied to it, stale ones included
  (`stamps`); `drop_interviews(bound)` removes the rows whose age is before `bound` (reports
  with their violations) and raises `interview_expired_before` to it. A record without an
  instant never expires, and the rows it was applied to never age (their age is the last
  instant, 9999-12-31).

`Model.tables()` gives {table: {primary key tuple: {column: value}}} in the normal form that
`database_tables()` reads from PostgreSQL: numeric columns as their decimal text, jsonb as the
parsed JSON document, timestamps as aware datetimes. Only the columns of docs/contract.md §4 (and
the interview attributes a report carries) are compared, never bookkeeping columns (updated_at,
ingested_at, has_report, version columns such as `*_at`, counters the contract does not name).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from schemas import interview as iv
from schemas import proctoring as pr

# The layout compared: primary key columns, then the other columns of each table ------------

KEYS: dict[str, tuple[str, ...]] = {
    "candidates": ("candidate_id",),
    "jobs": ("job_id",),
    "applicants": ("job_application_id",),
    "interviews": ("interview_id",),
    "interview_reports": ("report_id",),
    "proctoring_violations": ("report_id", "type"),
    "proctoring_events": ("exam_id", "candidate_id", "type", "created_at"),
    "proctoring_sessions": ("exam_id", "candidate_id"),
    "system_checks": ("exam_id", "candidate_id", "checked_at"),
}
BLOCKS: tuple[str, ...] = (
    "interview_transcript",
    "technical_skills_evaluation",
    "soft_skills_evaluation",
    "coding_skills_evaluation",
    "custom_exercise_evaluation",
    "custom_question_evaluation",
)
REPORT_COLUMNS: tuple[str, ...] = (
    "interview_id",
    "session_id",
    "candidate_id",
    "job_applicant_id",
    "report_date",
    "report_url",
    "interview_recording_url",
    "interview_recording_player_url",
    "interview_webcam_recording_url",
    "interview_webcam_recording_player_url",
    "proctoring_score",
    "ai_match_score",
    "status",
    "date_created",
    "date_modified",
    *BLOCKS,
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "candidates": ("name", "email"),
    "jobs": ("name", "ats_job_id"),
    "applicants": (
        "candidate_id",
        "job_id",
        "ats_job_application_id",
        "ats_job_id",
        "email",
        "candidate_name",
        "job_name",
        "stage",
        "resume_score",
        "resume_url",
        "status",
        "date_created",
        "date_modified",
    ),
    "interviews": (
        "interview_name",
        "candidate_id",
        "job_id",
        "ats_job_id",
        "ats_job_application_id",
        "date_started",
    ),
    "interview_reports": REPORT_COLUMNS,
    "proctoring_violations": ("value", "description"),
    "proctoring_events": (
        "description",
        "media_url",
        "details",
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
    ),
    "proctoring_sessions": ("started_at", "ended_at", "last_event_at", "flag_count"),
    "system_checks": ("success", "results"),
}
# Columns of 001_initial_schema.sql that docs/contract.md §4 does not list but a report event fills
# (gated like the others): compared when the table has them.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "interview_reports": ("interview_name", "ats_job_id", "ats_job_application_id"),
}
TABLES: tuple[str, ...] = tuple(KEYS)

# Where a proctoring event's Kafka coordinates are a volatile detail (two productions of the
# same data), compare without them.
KAFKA_COLUMNS: frozenset[str] = frozenset({"kafka_topic", "kafka_partition", "kafka_offset"})

FLAG_TYPES: frozenset[str] = frozenset(
    {"EXIT_FULLSCREEN", "TAB_NOT_FOCUS", "FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED"}
)
STATUS_RANK: dict[str, int] = {"created": 0, "invited": 1, "updated": 2, "completed": 3}

Row = dict[str, Any]
Tables = dict[str, dict[tuple[Any, ...], Row]]
Coordinate = tuple[str, int, int]  # (topic, partition, offset)


# Orders ---------------------------------------------------------------------------------------


def decimal_text(value: Decimal) -> str:
    """A numeric's text as PostgreSQL prints it: positional, with the scale as written."""
    return format(value, "f")


def time_order(time: dt.datetime | None) -> tuple[Any, ...]:
    """An event's time; an event without one is older than any event with one."""
    return (0,) if time is None else (1, time)


def value_order(value: Any) -> Any:
    """Text by code point (Python's str order), numbers numerically then by decimal text,
    timestamps and dates chronologically."""
    if isinstance(value, Decimal):
        return (value, decimal_text(value))
    return value


def event_time(data: Any) -> dt.datetime | None:
    """`date_modified`, else `date_started`, else None (oldest)."""
    modified = getattr(data, "date_modified", None)
    return modified if modified is not None else getattr(data, "date_started", None)


@dataclass
class Register:
    """The non-null value with the greatest (time, value) offered so far."""

    rank: tuple[Any, ...] | None = None
    value: Any = None

    def offer(self, time: dt.datetime | None, value: Any) -> None:
        if value is None:
            return
        rank = (time_order(time), value_order(value))
        if self.rank is None or rank > self.rank:
            self.rank, self.value = rank, value


def _registers(columns: Iterable[str]) -> dict[str, Register]:
    return {c: Register() for c in columns}


def _json(raw: msgspec.Raw) -> Any:
    """A raw JSON block as a document, or None when absent or null."""
    body = bytes(raw).strip()
    if not body or body == b"null":
        return None
    return json.loads(body)


def _normal(value: Any) -> Any:
    return decimal_text(value) if isinstance(value, Decimal) else value


# Rows with state beyond their columns --------------------------------------------------------


@dataclass
class Applicant:
    version: tuple[Any, ...]
    columns: Row


@dataclass
class Report:
    """A report row: the gated columns of interview_report.created, the part registers, the
    violation set."""

    version: tuple[Any, ...] | None = None  # None: no report event yet
    columns: Row = field(default_factory=lambda: dict.fromkeys(_REPORT_OWN))
    recording_url: Register = field(default_factory=Register)
    recording_player_url: Register = field(default_factory=Register)
    webcam_url: Register = field(default_factory=Register)
    webcam_player_url: Register = field(default_factory=Register)
    score: Register = field(default_factory=Register)
    part_candidates: set[str] = field(default_factory=set)
    violations: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)


# What interview_report.created sets in its row: column -> data attribute.
_REPORT_OWN: dict[str, str] = {
    "interview_id": "interview_id",
    "session_id": "session_id",
    "candidate_id": "candidate_id",
    "job_applicant_id": "job_applicant_id",
    "interview_name": "interview_name",
    "ats_job_id": "ats_job_id",
    "ats_job_application_id": "ats_job_application_id",
    "report_date": "report_date",
    "report_url": "report_url",
    "interview_recording_url": "interview_recording_url",
    "proctoring_score": "proctoring_score",
    "ai_match_score": "ai_match_score",
    "status": "status",
    "date_created": "date_created",
    "date_modified": "date_modified",
}
# What an applicant event sets in its row: column -> data attribute.
_APPLICANT_OWN: dict[str, str] = {
    "candidate_id": "candidate_id",
    "job_id": "micro1_job_id",
    "ats_job_application_id": "ats_job_application_id",
    "ats_job_id": "ats_job_id",
    "email": "email_id",
    "candidate_name": "candidate_name",
    "job_name": "job_name",
    "stage": "stage",
    "resume_score": "resume_score",
    "resume_url": "resume_url",
    "date_created": "date_created",
    "date_modified": "date_modified",
}


class Model:
    """The tables after applying events one at a time, in the order `apply` is called."""

    def __init__(
        self,
        days: int | None = None,
        now: dt.datetime | None = None,
        interview_days: int | None = None,
    ) -> None:
        self.days = days
        self.interview_days = interview_days
        self.now = now  # the clock the horizon is measured from (None: no age rule)
        self.expired_before: dt.datetime | None = None
        self.interview_expired_before: dt.datetime | None = None
        self.expired: dict[str, int] = {}  # records expired, by topic
        # The age of each interview row (see the module docstring), by table and key.
        self.stamps: dict[str, dict[str, dt.datetime]] = {t: {} for t in AGED}
        self.sessions: dict[tuple[Any, ...], Row] = {}
        self.candidates: dict[str, dict[str, Register]] = {}
        self.jobs: dict[str, dict[str, Register]] = {}
        self.interviews: dict[str, dict[str, Register]] = {}
        self.applicants: dict[str, Applicant] = {}
        self.reports: dict[str, Report] = {}
        self.proctoring_events: dict[tuple[Any, ...], Row] = {}
        self.system_checks: dict[tuple[Any, ...], Row] = {}
        # Erasures made so far: (covered ids, covered email or None, {(topic, partition): end}).
        self.erasures: list[tuple[frozenset[str], str | None, dict[tuple[str, int], int]]] = []
        self.erased: dict[str, int] = {}  # skipped events, by topic

    # -- erasing -------------------------------------------------------------------------------

    def forget(self, candidate: str, ends: Mapping[tuple[str, int], int]) -> None:
        """Erase `candidate` with the log ending at `ends` (per topic and partition)."""
        self.erasures.append((frozenset({candidate}), None, dict(ends)))
        self._delete(candidate)

    def forget_email(self, email: str, ends: Mapping[tuple[str, int], int]) -> list[str]:
        """Erase the person `email` names; the ids it linked, sorted."""
        address = normal_email(email)
        ids = sorted(self.linked(address))
        self.erasures.append((frozenset(ids), address, dict(ends)))
        for candidate in ids:
            self._delete(candidate)
        return ids

    def linked(self, address: str) -> set[str]:
        """The ids the normal form `address` links in the tables as they are now."""
        ids: set[str] = set()
        ids |= {k for k, row in self.candidates.items() if _email(row["email"].value) == address}
        for a in self.applicants.values():
            if _email(a.columns["email"]) == address:
                ids.add(a.columns["candidate_id"])
        every = {
            *self.candidates,
            *(a.columns["candidate_id"] for a in self.applicants.values()),
            *(row["candidate_id"].value for row in self.interviews.values()),
            *(self._report_columns(r)["candidate_id"] for r in self.reports.values()),
            *(k[1] for k in self.proctoring_events),
            *(k[1] for k in self.system_checks),
            *(k[1] for k in self.sessions),
        }
        ids |= {c for c in every if c is not None and "@" in c and normal_email(c) == address}
        return ids

    def _delete(self, candidate: str) -> None:
        self.candidates.pop(candidate, None)
        for key in [
            k for k, a in self.applicants.items() if a.columns["candidate_id"] == candidate
        ]:
            del self.applicants[key]
        for key in [
            k for k, row in self.interviews.items() if row["candidate_id"].value == candidate
        ]:
            del self.interviews[key]
        for key in [
            k
            for k, report in self.reports.items()
            if self._report_columns(report)["candidate_id"] == candidate
        ]:
            del self.reports[key]
        for table in (self.proctoring_events, self.system_checks, self.sessions):
            for key in [k for k in table if k[1] == candidate]:
                del table[key]
        rows = self._aged_rows()
        for table, stamps in self.stamps.items():
            for key in [k for k in stamps if k not in rows[table]]:
                del stamps[key]

    def _is_old(self, ids: set[str], emails: set[str], coordinates: Iterable[Coordinate]) -> bool:
        """Whether a record naming `ids` and `emails` (normal forms), at `coordinates`, is old."""
        coordinates = list(coordinates)
        for covered, address, ends in self.erasures:
            if not (covered & ids or (address is not None and address in emails)):
                continue
            if any(o < ends.get((t, p), 0) for t, p, o in coordinates):
                return True
        return False

    def dead_letter(self, names: Iterable[str], coordinates: Sequence[Coordinate]) -> bool:
        """Whether a dead letter whose raw value holds the strings `names`, at `coordinates`
        (its own first, then its signed origin's), is published; if not it counts as erased."""
        names = set(names)
        emails = {normal_email(n) for n in names if "@" in n}
        if self.erasures and self._is_old(names, emails, coordinates):
            topic = coordinates[0][0]
            self.erased[topic] = self.erased.get(topic, 0) + 1
            return False
        return True

    # -- applying ----------------------------------------------------------------------------

    def apply_all(
        self,
        items: Iterable[tuple[Any, str, int, int]],
        timestamps: Mapping[tuple[str, int, int], int] | None = None,
    ) -> Model:
        """Apply `items` in order; `timestamps`: Kafka timestamps (ms) by (topic, partition,
        offset), where the records have one."""
        for event, topic, partition, offset in items:
            ts = None if timestamps is None else timestamps.get((topic, partition, offset))
            self.apply(event, topic, partition, offset, timestamp=ts)
        return self

    def apply(
        self,
        event: Any,
        topic: str = "",
        partition: int = 0,
        offset: int = 0,
        origin: Sequence[Coordinate] = (),
        signed: bool = True,
        timestamp: int | None = None,
    ) -> None:
        """Apply one event read at (topic, partition, offset) whose record has the Kafka
        `timestamp` (ms; None or negative: none); `origin` is the coordinates of its
        `dlq.replay.origin`, believed only when `signed`."""
        at = instant(event, timestamp)
        # Past the horizon first: a record both expired and erased counts as expired.
        if self._is_expired(event, at):
            self.expired[topic] = self.expired.get(topic, 0) + 1
            return
        if self.erasures:
            ids, emails = _names(event)
            coordinates = [(topic, partition, offset), *(origin if signed else ())]
            if self._is_old(ids, emails, coordinates):
                self.erased[topic] = self.erased.get(topic, 0) + 1
                return
        # A row's age: the end of the UTC day of its latest record; a record that never ages
        # keeps its rows from ageing too.
        age = NEVER if at is None or at.date() == NEVER.date() else day_end(at)
        for table, key in touched(event):
            stamps = self.stamps[table]
            stamps[key] = max(age, stamps.get(key, age))
        if isinstance(event, pr.ProctoringEvent):
            self._proctoring(event, topic, partition, offset)
        elif isinstance(event, iv.InterviewStarted):
            self._started(event.data)
        elif isinstance(event, iv.InterviewReportCreated):
            self._report(event.data)
        elif isinstance(event, iv.InterviewRecordingCompleted):
            report = self._report_row(event.data.report_id, event.data.candidate_id)
            report.recording_url.offer(None, event.data.interview_recording_url)
            report.recording_player_url.offer(None, event.data.interview_recording_player_url)
        elif isinstance(event, iv.InterviewWebcamRecordingCompleted):
            report = self._report_row(event.data.report_id, event.data.candidate_id)
            report.webcam_url.offer(None, event.data.interview_webcam_recording_url)
            report.webcam_player_url.offer(None, event.data.interview_webcam_recording_player_url)
        elif isinstance(event, iv.ProctoringScoreCompleted):
            report = self._report_row(event.data.report_id, event.data.candidate_id)
            report.score.offer(None, event.data.proctoring_score)
        elif isinstance(event, iv.ApplicantEvent):
            self._applicant(event)
        else:
            raise TypeError(f"no rule for {type(event).__name__}")

    # -- retention -----------------------------------------------------------------------------

    def cutoff(self, interview: bool = False) -> dt.datetime | None:
        """The proctoring (or interview) records' cutoff: instants before it are expired."""
        days = self.interview_days if interview else self.days
        done = self.interview_expired_before if interview else self.expired_before
        bounds = [b for b in (done,) if b is not None]
        if days is not None and self.now is not None:
            bounds.append(self.now - dt.timedelta(days=days))
        return max(bounds) if bounds else None

    def _is_expired(self, event: Any, at: dt.datetime | None) -> bool:
        cutoff = self.cutoff(interview=not isinstance(event, pr.ProctoringEvent))
        return cutoff is not None and at is not None and at < cutoff

    def drop_before(self, month: dt.datetime) -> None:
        """Retention dropped every month before `month`."""
        self.proctoring_events = {k: v for k, v in self.proctoring_events.items() if k[3] >= month}
        self.system_checks = {k: v for k, v in self.system_checks.items() if k[2] >= month}
        self.sessions = {k: v for k, v in self.sessions.items() if v["last_event_at"] >= month}
        self.expired_before = max(month, self.expired_before or month)

    def _aged_rows(self) -> dict[str, dict[str, Any]]:
        return {
            "interview_reports": self.reports,
            "interviews": self.interviews,
            "applicants": self.applicants,
        }

    def drop_interviews(self, bound: dt.datetime) -> None:
        """Interview retention deleted the rows whose age is before `bound`."""
        rows = self._aged_rows()
        for table, stamps in self.stamps.items():
            for key in [k for k, at in stamps.items() if at < bound]:
                rows[table].pop(key, None)
                del stamps[key]
        self.interview_expired_before = max(bound, self.interview_expired_before or bound)

    def _candidate(self, candidate_id: str, time: Any, name: Any, email: Any) -> None:
        row = self.candidates.setdefault(candidate_id, _registers(COLUMNS["candidates"]))
        row["name"].offer(time, name)
        row["email"].offer(time, email)

    def _job(self, job_id: str | None, time: Any, name: Any, ats_job_id: Any) -> None:
        if job_id is None:
            return
        row = self.jobs.setdefault(job_id, _registers(COLUMNS["jobs"]))
        row["name"].offer(time, name)
        row["ats_job_id"].offer(time, ats_job_id)

    def _interview(self, interview_id: str, time: Any, **values: Any) -> None:
        row = self.interviews.setdefault(interview_id, _registers(COLUMNS["interviews"]))
        for column, value in values.items():
            row[column].offer(time, value)

    def _started(self, d: iv.InterviewStartedData) -> None:
        time = event_time(d)
        self._candidate(d.candidate_id, time, d.candidate_name, d.candidate_email_id)
        self._job(d.job_id, time, d.job_name, d.ats_job_id)
        self._interview(
            d.interview_id,
            time,
            interview_name=d.interview_name,
            candidate_id=d.candidate_id,
            job_id=d.job_id,
            ats_job_id=d.ats_job_id,
            ats_job_application_id=d.ats_job_application_id,
            date_started=d.date_started,
        )

    def _report_row(self, report_id: str, part_candidate: str | None = None) -> Report:
        report = self.reports.setdefault(report_id, Report())
        if part_candidate is not None:
            report.part_candidates.add(part_candidate)
        return report

    def _report(self, d: iv.InterviewReportData) -> None:
        time = event_time(d)
        # The registers see every report event, stale or not (README: sources of the
        # candidates and interviews registers).
        self._candidate(d.candidate_id, time, d.candidate_name, d.candidate_email_id)
        self._interview(
            d.interview_id,
            time,
            interview_name=d.interview_name,
            candidate_id=d.candidate_id,
            ats_job_id=d.ats_job_id,
            ats_job_application_id=d.ats_job_application_id,
        )
        report = self._report_row(d.report_id)
        version = time_order(d.date_modified)
        if report.version is not None and version < report.version:
            return  # stale: nothing in interview_reports or proctoring_violations
        report.version = version
        for column, attr in _REPORT_OWN.items():
            value = getattr(d, attr)
            if value is not None:
                report.columns[column] = value
        for block in BLOCKS:
            value = _json(getattr(d, block))
            if value is not None:
                report.columns[block] = value
        if d.proctoring_violations is not None:
            report.violations = {}
            for v in d.proctoring_violations:
                report.violations[v.type] = (_violation_value(v.value), v.description)

    def _applicant(self, event: iv.ApplicantEvent) -> None:
        d = event.data
        status = event.status
        version = (time_order(d.date_modified), STATUS_RANK[status])
        stored = self.applicants.get(d.micro1_job_application_id)
        if stored is not None and version < stored.version:
            return  # stale: changes nothing in any table
        if stored is None:
            stored = self.applicants[d.micro1_job_application_id] = Applicant(
                version, dict.fromkeys(COLUMNS["applicants"])
            )
        stored.version = version
        for column, attr in _APPLICANT_OWN.items():
            value = getattr(d, attr)
            if value is not None:
                stored.columns[column] = value
        stored.columns["status"] = status
        time = event_time(d)
        self._candidate(d.candidate_id, time, d.candidate_name, d.email_id)
        self._job(d.micro1_job_id, time, d.job_name, d.ats_job_id)

    def _proctoring(self, e: pr.ProctoringEvent, topic: str, partition: int, offset: int) -> None:
        # Two tables with two keys: each keeps the first event with its own key, so a
        # system check is stored even when its event's proctoring_events key was taken.
        details = None
        if isinstance(e, pr.SystemCheckCompleted):
            check = e.systemCheck
            results = [
                {"name": i.name, "status": i.status, "finished": i.finished} for i in check.data
            ]
            details = {"success": check.success, "timestamp": check.timestamp, "data": results}
            # Its own clock decides only where the row goes: into a dropped range, nowhere.
            if self.expired_before is None or check.timestamp >= self.expired_before:
                self.system_checks.setdefault(
                    (e.examId, e.candidateId, check.timestamp),
                    {"success": check.success, "results": results},
                )
        kind = type(e).__struct_config__.tag
        key = (e.examId, e.candidateId, kind, e.createdAt)
        if key not in self.proctoring_events:
            self._session_adds(e.examId, e.candidateId, kind, e.createdAt)
        self.proctoring_events.setdefault(
            key,
            {
                "description": e.description,
                "media_url": e.mediaUrl if isinstance(e, pr.FlagDataWithFile) else None,
                "details": details,
                "kafka_topic": topic,
                "kafka_partition": partition,
                "kafka_offset": offset,
            },
        )

    # -- reading -------------------------------------------------------------------------------

    def tables(self) -> Tables:
        registers = {
            "candidates": self.candidates,
            "jobs": self.jobs,
            "interviews": self.interviews,
        }
        out: Tables = {
            table: {
                (key,): {c: _normal(r.value) for c, r in row.items()} for key, row in rows.items()
            }
            for table, rows in registers.items()
        }
        out["applicants"] = {
            (key,): {c: _normal(v) for c, v in a.columns.items()}
            for key, a in self.applicants.items()
        }
        out["interview_reports"] = {
            (key,): self._report_columns(report) for key, report in self.reports.items()
        }
        out["proctoring_violations"] = {
            (key, kind): {"value": value, "description": description}
            for key, report in self.reports.items()
            for kind, (value, description) in report.violations.items()
        }
        out["proctoring_events"] = {key: dict(row) for key, row in self.proctoring_events.items()}
        out["proctoring_sessions"] = self._sessions()
        out["system_checks"] = {key: dict(row) for key, row in self.system_checks.items()}
        return out

    @staticmethod
    def _report_columns(report: Report) -> Row:
        own = report.columns
        row: Row = {
            c: own.get(c) for c in (*REPORT_COLUMNS, *OPTIONAL_COLUMNS["interview_reports"])
        }
        if report.version is None:
            row["candidate_id"] = min(report.part_candidates) if report.part_candidates else None
        recording = report.recording_url.value
        row["interview_recording_url"] = (
            recording if recording is not None else own["interview_recording_url"]
        )
        row["interview_recording_player_url"] = report.recording_player_url.value
        row["interview_webcam_recording_url"] = report.webcam_url.value
        row["interview_webcam_recording_player_url"] = report.webcam_player_url.value
        score = report.score.value
        row["proctoring_score"] = score if score is not None else own["proctoring_score"]
        return {c: _normal(v) for c, v in row.items()}

    def _session_adds(self, exam: str, candidate: str, kind: str, created: dt.datetime) -> None:
        """A session's aggregates take an event stored for the first time."""
        s = self.sessions.setdefault(
            (exam, candidate),
            {"started_at": None, "ended_at": None, "last_event_at": None, "flag_count": 0},
        )
        if kind == "STARTED":
            s["started_at"] = _least(s["started_at"], created)
        if kind == "END_PROCTORING":
            s["ended_at"] = _greatest(s["ended_at"], created)
        s["last_event_at"] = _greatest(s["last_event_at"], created)
        if kind in FLAG_TYPES:
            s["flag_count"] += 1

    def _sessions(self) -> dict[tuple[Any, ...], Row]:
        return {key: dict(row) for key, row in self.sessions.items()}


def json_strings(raw: bytes | None) -> set[str]:
    """The JSON strings a raw value holds, whole, whether or not it parses: what a dead
    letter's value can name (docs/contract.md §7). A plain scan, quote to quote; and, as a
    value that is not valid JSON may pair its quotes wrongly (a stray quote, a broken escape),
    the text between any two consecutive quotes."""
    text = (raw or b"").decode("utf-8", "replace")
    found: set[str] = set()
    for between in text.split('"')[1:-1]:
        try:
            value = json.loads(f'"{between}"')
        except ValueError:
            value = between
        if value and len(value) <= 512:
            found.add(value)
    i = 0
    while (start := text.find('"', i)) >= 0:
        j = start + 1
        while j < len(text) and text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        if j >= len(text):
            break
        try:
            value = json.loads(text[start : j + 1])
        except ValueError:
            value = text[start + 1 : j]
        if value and len(value) <= 512:
            found.add(value)
        i = j + 1
    return found


def normal_email(address: str) -> str:
    """An email's normal form (docs/contract.md §7): trimmed of white space, lower-cased."""
    return address.strip().lower()


def _email(value: Any) -> str | None:
    return normal_email(value) if isinstance(value, str) else None


def _names(event: Any) -> tuple[set[str], set[str]]:
    """The candidate id an event names, and the emails it names, in normal form: its email field
    (`candidate_email_id`, `email_id`) and its candidate id when that is an address."""
    if isinstance(event, pr.ProctoringEvent):
        candidate, email = event.candidateId, None
    else:
        data = event.data
        candidate = data.candidate_id
        email = getattr(data, "candidate_email_id", None) or getattr(data, "email_id", None)
    emails = {normal_email(v) for v in (candidate, email) if v and "@" in v}
    return {candidate}, emails


# Retention's instants ------------------------------------------------------------------------

# An event's own time is absurd when it is later than its record's Kafka timestamp by more.
AHEAD = dt.timedelta(hours=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The age of a row that a record without an instant was applied to.
NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)
# The interview tables that age by the records applied to them.
AGED: tuple[str, ...] = ("interview_reports", "interviews", "applicants")


def day_end(at: dt.datetime) -> dt.datetime:
    """Midnight UTC after `at` (a datetime of the UTC day after `at`'s)."""
    day = at.astimezone(dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def own_time(event: Any) -> dt.datetime | None:
    """The time an event says it happened (None: its type carries none, or it is absent)."""
    if isinstance(event, pr.ProctoringEvent):
        return event.createdAt
    if isinstance(event, iv.InterviewStarted):
        return event.data.date_started
    if isinstance(event, iv.InterviewReportCreated | iv.ApplicantEvent):
        d = event.data
        return d.date_modified if d.date_modified is not None else d.date_created
    return None


def instant(event: Any, timestamp: int | None) -> dt.datetime | None:
    """The instant retention ages a record by: its own time, unless absent or absurd, then
    its Kafka `timestamp` (ms; None or negative: none)."""
    kafka = (
        None if timestamp is None or timestamp < 0 else EPOCH + dt.timedelta(milliseconds=timestamp)
    )
    own = own_time(event)
    if own is None or (kafka is not None and own > kafka + AHEAD):
        return kafka
    return own


def touched(event: Any) -> list[tuple[str, str]]:
    """The aged interview rows (table, key) an event is applied to, stale or not."""
    d = getattr(event, "data", None)
    if isinstance(event, iv.InterviewStarted):
        return [("interviews", d.interview_id)]
    if isinstance(event, iv.InterviewReportCreated):
        return [("interview_reports", d.report_id), ("interviews", d.interview_id)]
    if isinstance(event, iv.ApplicantEvent):
        return [("applicants", d.micro1_job_application_id)]
    if d is not None:  # the recording, webcam-recording and score events
        return [("interview_reports", d.report_id)]
    return []


def _least(a: Any, b: Any) -> Any:
    return b if a is None else min(a, b)


def _greatest(a: Any, b: Any) -> Any:
    return b if a is None else max(a, b)


def _violation_value(raw: msgspec.Raw) -> str | None:
    """A violation's value as text: a JSON string's content, a number's text as written."""
    body = bytes(raw).strip()
    if not body or body == b"null":
        return None
    if body.startswith(b'"'):
        return json.loads(body)
    return body.decode("ascii")


def model_tables(items: Iterable[tuple[Any, str, int, int]]) -> Tables:
    """The tables after applying `items` (event, topic, partition, offset) in this order."""
    return Model().apply_all(items).tables()


def drop_columns(tables: Tables, dropped: Mapping[str, frozenset[str]]) -> Tables:
    """`tables` without the `dropped` columns of each table."""
    return {
        table: {
            key: {c: v for c, v in row.items() if c not in dropped.get(table, frozenset())}
            for key, row in rows.items()
        }
        for table, rows in tables.items()
    }


# Reading PostgreSQL in the same normal form --------------------------------------------------


async def database_tables(conn: asyncpg.Connection, tables: Iterable[str] = TABLES) -> Tables:
    """The compared columns of `tables` as {table: {key: {column: value}}}.

    numeric is read as its text (so `72.30` and `72.3` differ), jsonb as its parsed document
    (the details of a system check with its timestamp as a datetime), the rest as asyncpg
    returns it. A contract column missing from the database fails loudly."""
    out: Tables = {}
    for table in tables:
        types = {
            r["column_name"]: r["data_type"]
            for r in await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = $1",
                table,
            )
        }
        wanted = [*KEYS[table], *COLUMNS[table]]
        missing = [c for c in wanted if c not in types]
        assert not missing, f"{table} has no column(s) {missing}"
        wanted += [c for c in OPTIONAL_COLUMNS.get(table, ()) if c in types]
        select = ", ".join(
            f'"{c}"::text' if types[c] in ("numeric", "jsonb", "json") else f'"{c}"' for c in wanted
        )
        rows: dict[tuple[Any, ...], Row] = {}
        for record in await conn.fetch(f"SELECT {select} FROM {table}"):
            values = dict(zip(wanted, record.values(), strict=True))
            for c, value in values.items():
                if types[c] in ("jsonb", "json") and value is not None:
                    values[c] = _document(table, c, json.loads(value))
                elif isinstance(value, dt.datetime) and value.tzinfo is None:
                    values[c] = _infinity(value)
            key = tuple(values.pop(c) for c in KEYS[table])
            rows[key] = values
        out[table] = rows
    return out


async def database_ages(conn: asyncpg.Connection) -> dict[str, dict[str, dt.datetime]]:
    """`last_event_at` of the aged interview tables, as the model's `stamps` (rows without one
    left out: rows the worker wrote before it aged rows)."""
    out: dict[str, dict[str, dt.datetime]] = {}
    for table in AGED:
        (key,) = KEYS[table]
        rows = await conn.fetch(
            f"SELECT {key}, last_event_at FROM {table} WHERE last_event_at IS NOT NULL"
        )
        out[table] = {r[0]: r[1] for r in rows}
    return out


def _infinity(value: dt.datetime) -> Any:
    """asyncpg reads a timestamptz of -infinity / infinity as naive datetime.min / max: say
    what is stored."""
    if value == dt.datetime.min:
        return "-infinity"
    if value == dt.datetime.max:
        return "infinity"
    return value


def _document(table: str, column: str, value: Any) -> Any:
    if table == "proctoring_events" and column == "details" and isinstance(value, dict):
        stamp = value.get("timestamp")
        if isinstance(stamp, str):
            value = {**value, "timestamp": dt.datetime.fromisoformat(stamp)}
    return value


# Differences, for people ---------------------------------------------------------------------


def diff_tables(
    expected: Tables, actual: Tables, limit: int = 12, names: tuple[str, str] = ("model", "db")
) -> str:
    """What differs between two table sets, row by row and column by column; '' if nothing."""
    left, right = names
    lines: list[str] = []
    for table in sorted(set(expected) | set(actual)):
        a, b = expected.get(table, {}), actual.get(table, {})
        if a == b:
            continue
        shown = 0
        lines.append(f"{table}: {len(a)} rows in {left}, {len(b)} in {right}")
        for key in sorted(set(a) | set(b), key=repr):
            if shown >= limit:
                lines.append("  ...")
                break
            if key not in b:
                lines.append(f"  {key!r} only in {left}: {a[key]!r}")
            elif key not in a:
                lines.append(f"  {key!r} only in {right}: {b[key]!r}")
            elif a[key] != b[key]:
                lines.append(f"  {key!r}:")
                for c in a[key]:
                    mine, theirs = a[key][c], b[key].get(c, "<missing>")
                    if mine != theirs:
                        lines.append(f"      {c}: {left} {mine!r} != {right} {theirs!r}")
            else:
                continue
            shown += 1
    return "\n".join(lines)
