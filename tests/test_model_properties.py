"""Property: the worker's tables equal the reference model's (README, docs/contract.md §5).

Hypothesis generates streams as producers may send them, varying every field a producer may
vary: names, emails, job names and ATS ids (code-point ties such as `Ann`/`ann`/`Ånn`), scores
(`85`, `85.0`, `72.3`, `72.30`, as JSON numbers and as strings where allowed), timestamps in
the §3 forms (space, `Z`, minutes only, naive, `+05:30`, `-03:00`, `+02`, basic format,
fractions; equal instants in different forms to hit ties; absent ones), partial reports with
fields absent or null, violation arrays present, empty, absent or null, stale applicant and
report events, shared candidate, job and interview ids across partitions, redeliveries (the
same record again later in its partition), all nine interview events and the 13 proctoring
types. Each stream is encoded to JSON bytes and decoded by the worker's own decoders.

Partitions: the events of one application, one report's `interview_report.created` events
and one proctoring session (exam, candidate) share a partition, as the README requires;
everything else lands on any partition. The stream is then stored through
`worker.router.apply_batch` on a real PostgreSQL under a random plan: batches taking any
number of records from any set of partitions (per-partition order kept, partitions
interleaved arbitrarily inside and between batches), one or two lanes (two connections
committing batches of disjoint partition sets concurrently), and bisection (a batch tried
whole under a savepoint, rolled back, then stored in halves recursively, as
`Worker._store` does after a rejection). The result must equal `reference_model.Model` run
on the stream, for every table; the model itself is checked to give the same tables for
another interleaving of the partitions. A replay of the whole stream on top changes nothing.

Sizes: the defaults run in well under 90 s on two cores; `MODEL_EXAMPLES=10` (a multiplier)
runs ten times as many examples, and longer streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from support.reference_model import (
    AGED,
    Model,
    database_ages,
    database_tables,
    diff_tables,
    model_tables,
)
from support.storage import (
    INTERVIEW_TOPIC,
    PROCTORING_TOPIC,
    db,  # noqa: F401  (fixture)
    decode_ok,
    snapshot,
    truncate_all,
)

from schemas.proctoring import EVENT_TYPES
from worker import retention
from worker.decode import interview_decoder, proctoring_decoder
from worker.handlers.base import Item
from worker.horizon import Ages, Horizon, Span, raise_ages, row_ages
from worker.retention import Removed
from worker.router import apply_batch

pytestmark = pytest.mark.integration

SCALE = max(1, int(os.environ.get("MODEL_EXAMPLES", "1")))
T = TypeVar("T")

# The world: few ids, so that events collide; values chosen to tie and to differ by case,
# accents and scale ---------------------------------------------------------------------------

CANDIDATES = ("c-1", "c-2", "c-3")
JOBS = ("j-1", "j-2", "j-3")
INTERVIEWS = ("i-1", "i-2")
REPORTS = ("r-1", "r-2", "r-3")
APPLICATIONS = ("a-1", "a-2", "a-3")
EXAMS = ("exam-A", "exam-B")
# Proctorme ids: one is an address, as a widget may use the email (the erasure by email links it).
PROCTORED = ("p-1", "p-2", "ANN@example.com")

NAMES = ("Ann", "ann", "Ann ", "Ånn", "Zoë Ng", "John Doe", "", "李雷")
# One person's email as producers write it: any case, blanks around it, a non-ASCII capital.
EMAILS = ("ann@example.com", "Ann@example.com", " ann@example.com\t", "zoe@example.org", "")
EMAILS += ("ÄNN@example.com",)
JOB_NAMES = ("Backend Developer", "backend developer", "Test Engineer", "Ω Engineer")
ATS_JOBS = ("ATS-1", "ATS-10", "ATS-2", "ats-1")
ATS_APPLICATIONS = ("AJA-1", "AJA-2", "TEST123")
INTERVIEW_NAMES = ("Backend Interview", "Round 2", "round 2")
STAGES = ("Screening", "Interview", "Offer")
STATUSES = ("active", "archived")
SESSIONS = ("s-1", "s-2")
JOB_APPLICANTS = ("ja-1", "ja-2")
SCORES = ("85", "85.0", "72.3", "72.30", "0", "100", "99.99", "100.00", "0.5")
RESUME_SCORES = ("99.99", "12.5", "12.50", "80", "0", "-1.50", "250")
URLS = ("https://x.example/a.m3u8", "https://x.example/b.m3u8", "https://x.example/B.m3u8")
REPORT_URLS = ("https://micro1.ai/report/1.pdf", "https://micro1.ai/report/2.pdf")
APPLICANT_STATUSES = ("applicant.created", "applicant.invited", "applicant.updated")
APPLICANT_EVENTS = (*APPLICANT_STATUSES, "applicant.completed")
PART_EVENTS = (
    "interview_recording.completed",
    "interview_webcam_recording.completed",
    "proctoring_score.completed",
)

UTC = dt.UTC
I_TIMES: tuple[dt.datetime, ...] = (
    dt.datetime(2024, 1, 1, 10, 0, tzinfo=UTC),
    dt.datetime(2024, 1, 1, 11, 0, tzinfo=UTC),
    dt.datetime(2024, 1, 2, 9, 30, 15, 250000, tzinfo=UTC),
)
P_TIMES: tuple[dt.datetime, ...] = (
    dt.datetime(2025, 9, 21, 12, 0, tzinfo=UTC),
    dt.datetime(2025, 9, 21, 12, 5, 30, tzinfo=UTC),
    dt.datetime(2025, 9, 21, 12, 7, 13, 500000, tzinfo=UTC),
)
# The first and last instants the contract accepts (years 1-9999 in UTC). They have a test of
# their own below (test_first_and_last_instants_...); MODEL_EDGE_INSTANTS=1 mixes them into
# every stream as well.
FIRST = dt.datetime(1, 1, 1, tzinfo=UTC)
LAST = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
if os.environ.get("MODEL_EDGE_INSTANTS") == "1":
    I_TIMES += (FIRST, LAST)
    P_TIMES += (FIRST,)
MEDIA_TYPES = frozenset({"FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED", "PERIODIC_SNAPSHOT"})
CHECK_DATA = (
    [{"name": "webcam", "status": "success", "finished": True}],
    [
        {"name": "webcam", "status": "success", "finished": True},
        {"name": "microphone", "status": "failed", "finished": True},
    ],
    [],
)
ARRAY_BLOCKS = (
    [{"timestamp": 100, "role": "interviewer", "content": "Can you tell me about yourself?"}],
    [{"skill": "React.js", "ai_evaluation": {"rating": "Senior", "score": 1.10}}],
)
OBJECT_BLOCKS = ({"feedback": "good", "rating": "Senior"}, {"feedback": "ok", "rating": "Mid"})
VIOLATION_TYPES = ("tab_switch", "face_absence", "multiple_faces")


# Choosing: the same builders serve hypothesis (draws) and the end-to-end test (a Random) ------


class Chooser(Protocol):
    def one(self, options: Sequence[T]) -> T: ...

    def flag(self) -> bool: ...

    def integer(self, low: int, high: int) -> int: ...


class DrawChooser:
    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def one(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def flag(self) -> bool:
        return self._draw(st.booleans())

    def integer(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))


class RandomChooser:
    def __init__(self, rnd: random.Random) -> None:
        self._rnd = rnd

    def one(self, options: Sequence[T]) -> T:
        return self._rnd.choice(options)

    def flag(self) -> bool:
        return self._rnd.random() < 0.5

    def integer(self, low: int, high: int) -> int:
        return self._rnd.randint(low, high)


# JSON as a producer writes it ------------------------------------------------------------------


class Num(str):
    """A JSON number written exactly as this text (`72.30`, which json.dumps cannot write)."""


def to_json(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, dict):
        inner = ",".join(
            f"{json.dumps(k, ensure_ascii=ascii_only)}:{to_json(v, ascii_only)}"
            for k, v in value.items()
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def stamp_forms(moment: dt.datetime) -> tuple[str, ...]:
    """The §3 forms that write `moment` exactly."""
    forms = ["+05:30", "-03:00", "+02", "basic", "fraction"]
    if moment.year == 1:  # local time before year 1 cannot be written
        forms.remove("-03:00")
    if moment.year == 9999:  # nor after year 9999
        forms = [f for f in forms if f not in ("+05:30", "+02", "basic")]
    if not moment.microsecond:
        forms += ["space", "Z", "naive_T"]
        if not moment.second:
            forms += ["minute_Z", "minute"]
    elif not moment.microsecond % 1000:
        forms.append("millis")
    return tuple(forms)


def _wall(moment: dt.datetime, date_sep: str = "-", time_sep: str = ":") -> str:
    """Date and time of day with four-digit years (strftime writes year 1 as `1`)."""
    m = moment
    return (
        f"{m.year:04d}{date_sep}{m.month:02d}{date_sep}{m.day:02d}"
        f"T{m.hour:02d}{time_sep}{m.minute:02d}{time_sep}{m.second:02d}"
    )


def stamp(moment: dt.datetime, form: str) -> str:
    frac = f".{moment.microsecond:06d}" if moment.microsecond else ""
    wall = _wall(moment)
    if form == "space":
        return wall.replace("T", " ")
    if form == "Z":
        return wall + "Z"
    if form == "naive_T":
        return wall
    if form == "minute_Z":
        return wall[:-3] + "Z"
    if form == "minute":
        return wall[:-3]
    if form == "millis":
        return wall + f".{moment.microsecond // 1000:03d}Z"
    if form == "fraction":
        return wall + f".{moment.microsecond:06d}Z"
    if form in ("+05:30", "-03:00"):
        sign = 1 if form[0] == "+" else -1
        hours, minutes = int(form[1:3]), int(form[4:6])
        local = moment.astimezone(dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes)))
        return _wall(local) + frac + form
    local = moment.astimezone(dt.timezone(dt.timedelta(hours=2)))
    if form == "+02":
        return _wall(local) + frac + "+02"
    if form == "basic":
        return _wall(local, "", "") + frac + "+02"
    raise ValueError(form)


def when(ch: Chooser, instants: Sequence[dt.datetime]) -> str:
    moment = ch.one(instants)
    return stamp(moment, ch.one(stamp_forms(moment)))


def opt(ch: Chooser, options: Sequence[Any]) -> Any:
    """One of `options`, or None (sent as null or left out by `envelope`)."""
    return ch.one(options) if ch.flag() else None


def opt_when(ch: Chooser, instants: Sequence[dt.datetime] = I_TIMES) -> str | None:
    return when(ch, instants) if ch.flag() else None


def number(ch: Chooser, texts: Sequence[str]) -> str | None:
    """A decimal as a JSON number or a JSON string, or None."""
    if not ch.flag():
        return None
    text = ch.one(texts)
    return text if ch.flag() else Num(text)


@dataclass(frozen=True)
class Ev:
    """A record: its value, its topic, and what it must share a partition with (None: any)."""

    body: bytes
    topic: str
    affinity: tuple[str, ...] | None
    timestamp: int | None = None  # its Kafka timestamp (ms), where it has one


def envelope(ch: Chooser, event: str, data: dict[str, Any], affinity: Any = None) -> Ev:
    """Encode `{"event", "data"}`; each None field is sent as null or left out, and sometimes a
    field the contract does not know rides along."""
    kept = {k: v for k, v in data.items() if v is not None or ch.flag()}
    if ch.integer(0, 7) == 0:
        kept["x_producer_extra"] = {"note": "unknown fields are ignored"}
    body = to_json({"event": event, "data": kept}, ascii_only=ch.flag())
    return Ev(body.encode("utf-8"), INTERVIEW_TOPIC, affinity)


# Builders, one per event family --------------------------------------------------------------


def applicant(ch: Chooser, event: str | None = None, times: Sequence[dt.datetime] = I_TIMES) -> Ev:
    application = ch.one(APPLICATIONS)
    data = {
        "micro1_job_application_id": application,
        "candidate_id": ch.one(CANDIDATES),
        "resume_score": number(ch, RESUME_SCORES),
        "ats_job_application_id": opt(ch, ATS_APPLICATIONS),
        "ats_job_id": opt(ch, ATS_JOBS),
        "micro1_job_id": opt(ch, JOBS),
        "email_id": opt(ch, EMAILS),
        "candidate_name": opt(ch, NAMES),
        "job_name": opt(ch, JOB_NAMES),
        "stage": opt(ch, STAGES),
        "date_created": opt_when(ch, times),
        "date_modified": opt_when(ch, times),
        "resume_url": opt(ch, URLS),
    }
    return envelope(ch, event or ch.one(APPLICANT_EVENTS), data, ("application", application))


def interview_started(ch: Chooser, times: Sequence[dt.datetime] = I_TIMES) -> Ev:
    data = {
        "interview_id": ch.one(INTERVIEWS),
        "candidate_id": ch.one(CANDIDATES),
        "candidate_name": opt(ch, NAMES),
        "candidate_email_id": opt(ch, EMAILS),
        "job_id": opt(ch, JOBS),
        "job_name": opt(ch, JOB_NAMES),
        "ats_job_id": opt(ch, ATS_JOBS),
        "ats_job_application_id": opt(ch, ATS_APPLICATIONS),
        "interview_name": opt(ch, INTERVIEW_NAMES),
        "date_started": opt_when(ch, times),
    }
    return envelope(ch, "interview.started", data)


def violations(ch: Chooser) -> list[dict[str, Any]] | None:
    if not ch.flag():
        return None
    return [
        {
            "type": ch.one(VIOLATION_TYPES),
            "value": ch.one(("3", Num("3"), Num("1.10"), None, "two")),
            "description": opt(ch, ("3 tab switches", "face absent")),
        }
        for _ in range(ch.integer(0, 3))
    ]


def report_created(ch: Chooser, times: Sequence[dt.datetime] = I_TIMES) -> Ev:
    report = ch.one(REPORTS)
    data = {
        "report_id": report,
        "interview_id": ch.one(INTERVIEWS),
        "candidate_id": ch.one(CANDIDATES),
        "session_id": opt(ch, SESSIONS),
        "interview_name": opt(ch, INTERVIEW_NAMES),
        "job_applicant_id": opt(ch, JOB_APPLICANTS),
        "ats_job_application_id": opt(ch, ATS_APPLICATIONS),
        "ats_job_id": opt(ch, ATS_JOBS),
        "candidate_name": opt(ch, NAMES),
        "candidate_email_id": opt(ch, EMAILS),
        "report_date": opt(ch, ("2024-01-01", "2024-01-02")),
        "report_url": opt(ch, REPORT_URLS),
        "interview_recording_url": opt(ch, URLS),
        "proctoring_score": number(ch, SCORES),
        "ai_match_score": number(ch, SCORES),
        "proctoring_violations": violations(ch),
        "interview_transcript": opt(ch, ARRAY_BLOCKS),
        "technical_skills_evaluation": opt(ch, ARRAY_BLOCKS),
        "soft_skills_evaluation": opt(ch, ARRAY_BLOCKS),
        "coding_skills_evaluation": opt(ch, OBJECT_BLOCKS),
        "custom_exercise_evaluation": opt(ch, OBJECT_BLOCKS),
        "custom_question_evaluation": opt(ch, ARRAY_BLOCKS),
        "status": opt(ch, STATUSES),
        "date_created": opt_when(ch, times),
        "date_modified": opt_when(ch, times),
    }
    return envelope(ch, "interview_report.created", data, ("report", report))


def report_part(ch: Chooser, event: str | None = None) -> Ev:
    event = event or ch.one(PART_EVENTS)
    data: dict[str, Any] = {"report_id": ch.one(REPORTS), "candidate_id": ch.one(CANDIDATES)}
    if event == "interview_recording.completed":
        data["interview_recording_url"] = opt(ch, URLS)
        data["interview_recording_player_url"] = opt(ch, URLS)
    elif event == "interview_webcam_recording.completed":
        data["interview_webcam_recording_url"] = opt(ch, URLS)
        data["interview_webcam_recording_player_url"] = opt(ch, URLS)
    else:
        data["proctoring_score"] = number(ch, SCORES)
    return envelope(ch, event, data)


def proctoring(
    ch: Chooser,
    types: Sequence[str] = EVENT_TYPES,
    times: Sequence[dt.datetime] = P_TIMES,
    check_times: Sequence[dt.datetime] = P_TIMES[:2],
) -> Ev:
    exam, candidate, kind = ch.one(EXAMS), ch.one(PROCTORED), ch.one(types)
    fields: dict[str, Any] = {
        "examId": exam,
        "candidateId": candidate,
        "type": kind,
        "createdAt": when(ch, times),
    }
    if ch.flag():
        fields["description"] = ch.one(("", "Candidate switched tab", "second copy"))
    if kind in MEDIA_TYPES:
        fields["mediaUrl"] = ch.one(("https://m.example/1.jpg", "https://m.example/2.jpg"))
    if kind == "SYSTEM_CHECK_COMPLETED":
        fields["systemCheck"] = {
            "success": ch.flag(),
            "timestamp": when(ch, check_times),
            "data": ch.one(CHECK_DATA),
        }
    body = to_json(fields, ascii_only=ch.flag())
    return Ev(body.encode("utf-8"), PROCTORING_TOPIC, ("session", exam, candidate))


BUILDERS: dict[str, Callable[[Chooser], Ev]] = {
    "applicant": applicant,
    "interview.started": interview_started,
    "interview_report.created": report_created,
    "part": report_part,
    "proctoring": proctoring,
}
# Session events and system checks, often enough to collide on their keys.
SESSION_TYPES = ("STARTED", "END_PROCTORING", "TAB_NOT_FOCUS", "SYSTEM_CHECK_COMPLETED")
ALL_KINDS = tuple(BUILDERS)
BUILDERS["session"] = lambda ch: proctoring(ch, SESSION_TYPES)

# Retention: instants from today back to 400 days, none within hours of a horizon in days.
R_NOW = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
R_TIMES = tuple(
    R_NOW - dt.timedelta(days=d, hours=5) for d in (0, 3, 20, 40, 70, 95, 130, 200, 400)
)
R_HORIZONS = (30, 90, 150)
R_GRACE = dt.timedelta(hours=1)  # partitions drop one hour after wholly passing the horizon


def logged(ch: Chooser, ev: Ev) -> Ev:
    """`ev` with a Kafka timestamp at one of R_TIMES, or none: an own time then may be
    earlier, later or far later (absurd) than the log's."""
    at = ch.one((None, *R_TIMES))
    return dataclasses.replace(ev, timestamp=None if at is None else int(at.timestamp() * 1000))


BUILDERS["aged"] = lambda ch: logged(
    ch, proctoring(ch, (*SESSION_TYPES, "FACE_ABSENCE"), R_TIMES, R_TIMES)
)
AGED_INTERVIEW: tuple[Callable[[Chooser], Ev], ...] = (
    lambda ch: applicant(ch, times=R_TIMES),
    lambda ch: interview_started(ch, times=R_TIMES),
    lambda ch: report_created(ch, times=R_TIMES),
    report_part,
)
BUILDERS["aged interview"] = lambda ch: logged(ch, ch.one(AGED_INTERVIEW)(ch))


def build_events(ch: Chooser, kinds: Sequence[str], count: int) -> list[Ev]:
    return [BUILDERS[ch.one(kinds)](ch) for _ in range(count)]


# Streams: partitions, redeliveries, decoding ---------------------------------------------------

TP = tuple[str, int]


@dataclass
class Stream:
    """Records per (topic, partition), in partition order; offsets are positions."""

    partitions: dict[TP, list[Ev]]

    def items(self) -> dict[TP, list[Item]]:
        out: dict[TP, list[Item]] = {}
        for (topic, p), evs in sorted(self.partitions.items()):
            decoder = proctoring_decoder if topic == PROCTORING_TOPIC else interview_decoder
            out[(topic, p)] = [
                Item(decode_ok(decoder, ev.body), topic, p, offset) for offset, ev in enumerate(evs)
            ]
        return out

    def timestamps(self) -> dict[tuple[str, int, int], int]:
        """The Kafka timestamps of the records that have one, by (topic, partition, offset)."""
        return {
            (topic, p, offset): ev.timestamp
            for (topic, p), evs in self.partitions.items()
            for offset, ev in enumerate(evs)
            if ev.timestamp is not None
        }

    def describe(self) -> str:
        return "\n".join(
            f"  {'P' if topic == PROCTORING_TOPIC else 'I'}{p}@{offset} ts={ev.timestamp} "
            f"{ev.body.decode()}"
            for (topic, p), evs in sorted(self.partitions.items())
            for offset, ev in enumerate(evs)
        )


def partition(ch: Chooser, events: Sequence[Ev], count: int, redeliveries: int) -> Stream:
    """Spread `events` over `count` partitions per topic (one partition per affinity), then
    deliver `redeliveries` records again, each somewhere later in its own partition."""
    placed: dict[Any, int] = {}
    parts: dict[TP, list[Ev]] = {}
    for ev in events:
        if ev.affinity is None:
            p = ch.integer(0, count - 1)
        elif ev.affinity in placed:
            p = placed[ev.affinity]
        else:
            p = placed[ev.affinity] = ch.integer(0, count - 1)
        parts.setdefault((ev.topic, p), []).append(ev)
    for _ in range(redeliveries):
        tp = ch.one(sorted(parts))
        records = parts[tp]
        source = ch.integer(0, len(records) - 1)
        records.insert(ch.integer(source + 1, len(records)), records[source])
    return Stream(parts)


@st.composite
def streams(draw: st.DrawFn, kinds: Sequence[str], max_events: int) -> Stream:
    ch = DrawChooser(draw)
    events = build_events(ch, kinds, ch.integer(1, max_events))
    return partition(ch, events, ch.integer(1, 3), ch.integer(0, 4))


def canonical(items: dict[TP, list[Item]]) -> list[Item]:
    """The records partition after partition: one order the stream allows."""
    return [item for tp in sorted(items) for item in items[tp]]


def interleaved(items: dict[TP, list[Item]], rnd: random.Random) -> list[Item]:
    """Another allowed order: partitions interleaved at random, each in its own order."""
    slots = [tp for tp, records in items.items() for _ in records]
    rnd.shuffle(slots)
    cursors = dict.fromkeys(items, 0)
    out = []
    for tp in slots:
        out.append(items[tp][cursors[tp]])
        cursors[tp] += 1
    return out


# Storing under a random plan -------------------------------------------------------------------


@dataclass
class Batch:
    items: list[Item]
    bisect: int  # how many times the batch is tried whole, rolled back, and halved

    def describe(self) -> str:
        marks = " ".join(
            f"{'P' if i.topic == PROCTORING_TOPIC else 'I'}{i.partition}@{i.offset}"
            for i in self.items
        )
        return f"[{marks}]" + (f" bisect={self.bisect}" if self.bisect else "")


def batches(items: dict[TP, list[Item]], rnd: random.Random) -> list[Batch]:
    """Consecutive records of any subset of partitions per batch, interleaved in the batch."""
    style = rnd.choice(("single", "small", "large", "whole"))
    cursors = dict.fromkeys(items, 0)
    out: list[Batch] = []
    while True:
        open_ = [tp for tp in sorted(items) if cursors[tp] < len(items[tp])]
        if not open_:
            return out
        chosen = open_ if style == "whole" else rnd.sample(open_, rnd.randint(1, len(open_)))
        slots: list[TP] = []
        for tp in chosen:
            left = len(items[tp]) - cursors[tp]
            take = {
                "single": 1,
                "small": rnd.randint(1, min(3, left)),
                "large": rnd.randint(1, left),
                "whole": left,
            }[style]
            slots += [tp] * take
        if style != "single":
            rnd.shuffle(slots)
        batch = []
        for tp in slots:
            batch.append(items[tp][cursors[tp]])
            cursors[tp] += 1
        out.append(Batch(batch, rnd.choice((0, 0, 0, 1, 2, 3))))


class _Rollback(Exception):
    pass


async def store(
    conn: asyncpg.Connection, items: Sequence[Item], bisect: int, ages: Ages | None = None
) -> None:
    """Like Worker._store after a rejection: the whole batch under a savepoint that rolls
    back, then each half the same way, `bisect` levels deep; the leaves are kept. `ages`:
    what rows created are born with (worker/horizon.py)."""
    if bisect and len(items) > 1:
        try:
            async with conn.transaction():
                await apply_batch(conn, items, ages=ages)
                raise _Rollback
        except _Rollback:
            pass
        mid = len(items) // 2
        await store(conn, items[:mid], bisect - 1, ages)
        await store(conn, items[mid:], bisect - 1, ages)
        return
    async with conn.transaction():
        await apply_batch(conn, items, ages=ages)


RETRIED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


async def commit(conn: asyncpg.Connection, batch: Batch) -> None:
    """One transaction per batch, retried on a deadlock as the worker does (two lanes lock
    shared candidates and jobs)."""
    for _ in range(50):
        try:
            async with conn.transaction():
                await store(conn, batch.items, batch.bisect)
            return
        except RETRIED:
            await asyncio.sleep(0.01)
    raise AssertionError(f"batch kept deadlocking: {batch.describe()}")


async def run_lanes(conns: Sequence[asyncpg.Connection], lanes: Sequence[list[Batch]]) -> None:
    async def lane(conn: asyncpg.Connection, plan: list[Batch]) -> None:
        for batch in plan:
            await commit(conn, batch)

    await asyncio.gather(*(lane(c, plan) for c, plan in zip(conns, lanes, strict=False)))


def plan_lanes(items: dict[TP, list[Item]], lanes: int, rnd: random.Random) -> list[list[Batch]]:
    """Partitions split between `lanes` (disjoint sets), each lane with its own batches."""
    owner = {tp: rnd.randrange(lanes) for tp in sorted(items)}
    return [
        batches({tp: r for tp, r in items.items() if owner[tp] == n}, rnd) for n in range(lanes)
    ]


def describe_plan(plan: Sequence[list[Batch]]) -> str:
    return "\n".join(
        f"  lane {n}: " + " ".join(b.describe() for b in lane) for n, lane in enumerate(plan)
    )


# The properties ----------------------------------------------------------------------------------


@pytest.fixture
async def db2(db: asyncpg.Connection, database_url: str) -> AsyncIterator[asyncpg.Connection]:  # noqa: F811
    """A second connection to the migrated database of `db`, for a second lane."""
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


def _settings(examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings, and a time limit that leaves room to shrink a failure."""
    hypothesis_settings = settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    limit = pytest.mark.timeout(900 * SCALE)
    return lambda test: limit(hypothesis_settings(test))


async def check_against_model(
    conns: Sequence[asyncpg.Connection], stream: Stream, data: st.DataObject
) -> None:
    rnd = data.draw(st.randoms(use_true_random=False), label="rnd")
    lanes = data.draw(st.sampled_from((1, 1, 2)), label="lanes")
    items = stream.items()
    note(f"stream ({sum(map(len, items.values()))} records):\n{stream.describe()}")

    expected = model_tables(canonical(items))
    other = model_tables(interleaved(items, rnd))
    assert not diff_tables(expected, other), (
        "the reference model depends on the interleaving of partitions:\n"
        + diff_tables(expected, other, names=("canonical", "interleaved"))
    )

    await truncate_all(conns[0])
    plan = plan_lanes(items, lanes, rnd)
    note(f"plan:\n{describe_plan(plan)}")
    await run_lanes(conns[:lanes], plan)
    actual = await database_tables(conns[0])
    diff = diff_tables(expected, actual)
    assert not diff, f"tables differ from the reference model:\n{diff}"

    if data.draw(st.booleans(), label="replay"):
        # A replay from offset 0 (one batch) changes nothing; the model agrees.
        everything = canonical(items)
        assert not diff_tables(expected, model_tables(everything + everything))
        await commit(conns[0], Batch(everything, 0))
        diff = diff_tables(expected, await database_tables(conns[0]))
        assert not diff, f"tables differ from the reference model after a replay:\n{diff}"


@_settings(100)
@given(stream=streams(ALL_KINDS, 30 + 10 * (SCALE > 1)), data=st.data())
async def test_every_table_matches_the_reference_model(
    db: asyncpg.Connection,  # noqa: F811
    db2: asyncpg.Connection,
    stream: Stream,
    data: st.DataObject,
) -> None:
    await check_against_model([db, db2], stream, data)


@_settings(80)
@given(
    stream=streams(("applicant", "applicant", "interview.started", "interview_report.created"), 25),
    data=st.data(),
)
async def test_applicants_candidates_and_jobs_match_the_reference_model(
    db: asyncpg.Connection,  # noqa: F811
    db2: asyncpg.Connection,
    stream: Stream,
    data: st.DataObject,
) -> None:
    """Stale applicant events, and names of candidates and jobs from three sources."""
    await check_against_model([db, db2], stream, data)


@_settings(50)
@given(stream=streams(("session", "proctoring"), 30), data=st.data())
async def test_proctoring_tables_match_the_reference_model(
    db: asyncpg.Connection,  # noqa: F811
    db2: asyncpg.Connection,
    stream: Stream,
    data: st.DataObject,
) -> None:
    """First event per key in both keyed tables, session aggregates, flag counts."""
    await check_against_model([db, db2], stream, data)


@_settings(80)
@given(stream=streams(("interview_report.created", "part", "part"), 25), data=st.data())
async def test_reports_and_their_parts_match_the_reference_model(
    db: asyncpg.Connection,  # noqa: F811
    db2: asyncpg.Connection,
    stream: Stream,
    data: st.DataObject,
) -> None:
    """The four events of a report in any order, partial and stale reports, violations."""
    await check_against_model([db, db2], stream, data)


# Retention: the horizon, a drop, a replay from offset 0 -----------------------------------------


async def reset_retention(conn: asyncpg.Connection) -> None:
    """Empty tables, nothing dropped yet, and a far_past partition below the months again."""
    await truncate_all(conn)
    await conn.execute("DELETE FROM retention_state")
    for table, _ in retention.TABLES:
        lowest = (await retention.partitions(conn, table))[0]
        if lowest.kind != retention.FAR_PAST:
            assert lowest.lo is not None
            await conn.execute(
                f'CREATE TABLE "{table}_{retention.FAR_PAST}" PARTITION OF "{table}" '
                f"FOR VALUES FROM (MINVALUE) TO ('{lowest.lo.isoformat()}')"
            )


async def store_sifted(
    conn: asyncpg.Connection,
    horizon: Horizon,
    items: dict[TP, list[Item]],
    rnd: random.Random,
    timestamps: dict[tuple[str, int, int], int],
) -> int:
    """Store `items` in random batches, each sifted and aged as the commit path does it (by
    the records' Kafka `timestamps`); return how many were expired."""

    def timestamp_of(item: Item) -> int | None:
        return timestamps.get((item.topic, item.partition, item.offset))

    expired = 0
    for batch in batches(items, rnd):
        kept, gone = horizon.sift(batch.items, timestamp_of, now=R_NOW)
        expired += len(gone)
        ages = row_ages(kept, timestamp_of)
        async with conn.transaction():
            await store(conn, kept, batch.bisect, ages)
            await raise_ages(conn, ages)
    return expired


async def check_retention(
    db: asyncpg.Connection,  # noqa: F811
    stream: Stream,
    data: st.DataObject,
    family: str,
) -> None:
    """Part of the stream stored under one horizon of `family` (or none), retention applied
    with another, the rest stored under it, then the whole stream replayed from offset 0:
    every table (and every interview row's age) equals the model's at each step, the replay
    changes none, and it expires exactly the records the model expires."""
    rnd = data.draw(st.randoms(use_true_random=False), label="rnd")
    days = data.draw(st.sampled_from(R_HORIZONS), label="days")
    # Before: none, the same or a longer horizon (a shorter one would let a replay store what
    # it had expired: a legitimate change, not the property here).
    before = data.draw(st.sampled_from((None, days, days + 60)), label="days before")
    interview = family == "interview"
    topic = INTERVIEW_TOPIC if interview else PROCTORING_TOPIC

    def spans(days: int | None, removed: Removed) -> Horizon:
        if interview:
            return Horizon(None, Span(days, removed.interview))
        return Horizon(Span(days, removed.proctoring))

    def horizons(model: Model, days: int | None) -> None:
        if interview:
            model.interview_days = days
        else:
            model.days = days

    items, timestamps = stream.items(), stream.timestamps()
    note(f"stream ({sum(map(len, items.values()))} records):\n{stream.describe()}")
    cut = {tp: rnd.randint(0, len(records)) for tp, records in items.items()}
    first = {tp: records[: cut[tp]] for tp, records in items.items()}
    rest = {tp: records[cut[tp] :] for tp, records in items.items()}
    await reset_retention(db)

    model = Model(None, R_NOW)
    horizons(model, before)
    model.apply_all(canonical(first), timestamps)
    await store_sifted(db, spans(before, Removed()), first, rnd, timestamps)
    if interview:
        await retention.apply_locked(db, None, wait=True, now=R_NOW, interview_days=days)
        model.drop_interviews(R_NOW - dt.timedelta(days=days) - R_GRACE)
    else:
        await retention.apply_locked(db, days, wait=True, now=R_NOW)
        model.drop_before(retention.month_floor(R_NOW - dt.timedelta(days=days) - R_GRACE))
    removed = await retention.read_removed(db)
    assert removed == Removed(model.expired_before, model.interview_expired_before)
    horizons(model, days)
    model.apply_all(canonical(rest), timestamps)
    horizon = spans(days, removed)
    await store_sifted(db, horizon, rest, rnd, timestamps)
    expected = model.tables()
    diff = diff_tables(expected, await database_tables(db))
    assert not diff, f"tables differ from the reference model after retention:\n{diff}"
    assert await database_ages(db) == model.stamps, "last_event_at differs from the model's"

    counted = model.expired.get(topic, 0)
    model.apply_all(canonical(items), timestamps)
    if not interview:
        assert not diff_tables(expected, model.tables()), "the model changed on a replay"
    # (An interview record still within the horizon is applied again, as any replayed record
    # is: where its row's version ties with a later record since past the horizon, the row
    # takes its values again. What was deleted stays deleted.)
    stored = await snapshot(db)  # every column, event_count and last_event_at included
    replay_expired = await store_sifted(db, horizon, items, rnd, timestamps)
    assert replay_expired == model.expired.get(topic, 0) - counted
    tables = await database_tables(db)
    diff = diff_tables(model.tables(), tables)
    assert not diff, f"after the replay, tables differ from the reference model:\n{diff}"
    assert await database_ages(db) == model.stamps, "last_event_at differs after the replay"
    back = {t: set(tables[t]) - set(expected[t]) for t in AGED}
    assert not any(back.values()), f"the replay brought deleted rows back: {back}"
    if not interview:
        assert await snapshot(db) == stored, "the replay changed a column the model does not hold"


@_settings(30)
@pytest.mark.parametrize("family", ["proctoring", "interview"])
@given(data=st.data())
async def test_retention_matches_the_reference_model_and_a_replay_after_removal_changes_nothing(
    db: asyncpg.Connection,  # noqa: F811
    family: str,
    data: st.DataObject,
) -> None:
    """Records over 400 days with Kafka timestamps earlier, later or far later than their own
    times, or none: proctoring records (partitions dropped), interview and applicant records
    (own times absent or not, part events with none; rows deleted by age)."""
    kind = "aged" if family == "proctoring" else "aged interview"
    stream = data.draw(streams((kind,), 30), label="stream")
    await check_retention(db, stream, data, family)


# The first and last instants the contract accepts ---------------------------------------------


def _iv(event: str, **data: Any) -> bytes:
    return json.dumps({"event": event, "data": data}).encode()


def _check(stamp: str) -> bytes:
    system_check = {"success": True, "timestamp": stamp, "data": []}
    event = {
        "examId": "e",
        "candidateId": "c",
        "type": "SYSTEM_CHECK_COMPLETED",
        "createdAt": "2025-09-21T12:00:00Z",
        "systemCheck": system_check,
    }
    return json.dumps(event).encode()


_APPLICATION = {"micro1_job_application_id": "a", "candidate_id": "c"}
_REPORT = {"report_id": "r", "interview_id": "i", "candidate_id": "c"}
_STARTED = {"interview_id": "i", "candidate_id": "c"}
EDGE_CASES: dict[str, list[bytes]] = {
    # Stored as sent, not as -infinity / infinity.
    "applicant date_modified 0001-01-01T00:00:00Z": [
        _iv("applicant.created", **_APPLICATION, date_modified="0001-01-01T00:00:00Z")
    ],
    "applicant date_created 9999-12-31T23:59:59.999999Z": [
        _iv("applicant.created", **_APPLICATION, date_created="9999-12-31T23:59:59.999999Z")
    ],
    "system check at 0001-01-01T00:00:00Z": [_check("0001-01-01T00:00:00Z")],
    # A stored version at an edge still orders against the next event.
    "applicant after one modified 9999-12-31T23:59:59.999999Z": [
        _iv("applicant.created", **_APPLICATION, date_modified="9999-12-31T23:59:59.999999Z"),
        _iv("applicant.updated", **_APPLICATION, stage="late", date_modified="2024-01-01 10:00:00"),
    ],
    "report after one modified 9999-12-31T23:59:59.999999Z": [
        _iv("interview_report.created", **_REPORT, date_modified="9999-12-31T23:59:59.999999Z"),
        _iv("interview_report.created", **_REPORT, status="old", date_modified="2024-01-01"),
    ],
    # An event at year 1 has a time; an event without one is older.
    "name at 0001-01-01T00:00:00Z against a name without a time": [
        _iv(
            "interview.started", **_STARTED, candidate_name="Ann", date_started="0001-01-01T00:00Z"
        ),
        _iv("interview.started", **_STARTED, candidate_name="Zoe"),
    ],
}


@pytest.mark.parametrize("split", ["one batch", "one batch per record"])
@pytest.mark.parametrize("case", list(EDGE_CASES))
async def test_first_and_last_instants_are_stored_and_ordered_as_instants(
    db: asyncpg.Connection,  # noqa: F811
    case: str,
    split: str,
) -> None:
    """0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z decode (docs/contract.md §3: years
    1-9999); they must be stored as those instants and compare as any other time."""
    items = [
        Item(
            decode_ok(proctoring_decoder if b'"examId"' in body else interview_decoder, body),
            PROCTORING_TOPIC if b'"examId"' in body else INTERVIEW_TOPIC,
            0,
            n,
        )
        for n, body in enumerate(EDGE_CASES[case])
    ]
    plan = [items] if split == "one batch" else [[item] for item in items]
    for batch in plan:
        try:
            await commit(db, Batch(batch, 0))
        except Exception as exc:
            pytest.fail(f"{case} ({split}): the worker could not store a batch: {exc!r}")
    diff = diff_tables(model_tables(items), await database_tables(db))
    assert not diff, f"{case} ({split}):\n{diff}"


# The model's own rules, on fixed cases (no database) --------------------------------------------


def _items(*bodies: dict[str, Any]) -> list[Item]:
    return [
        Item(decode_ok(interview_decoder, json.dumps(b).encode()), INTERVIEW_TOPIC, 0, n)
        for n, b in enumerate(bodies)
    ]


def test_model_stale_applicant_changes_nothing() -> None:
    new = {
        "micro1_job_application_id": "a",
        "candidate_id": "c",
        "candidate_name": "Zed",
        "micro1_job_id": "j",
        "job_name": "New",
        "date_modified": "2024-01-02 00:00:00",
    }
    old = {
        **new,
        "candidate_name": "Old",
        "job_name": "Older",
        "stage": "S",
        "date_modified": "2024-01-01 00:00:00",
    }
    tables = model_tables(
        _items(
            {"event": "applicant.created", "data": new},
            {"event": "applicant.completed", "data": old},
        )
    )
    assert tables["candidates"][("c",)]["name"] == "Zed"
    assert tables["jobs"][("j",)]["name"] == "New"
    assert tables["applicants"][("a",)]["stage"] is None
    assert tables["applicants"][("a",)]["status"] == "created"


def test_model_registers_tie_on_time_to_the_greater_value() -> None:
    base = {"interview_id": "i", "candidate_id": "c", "date_started": "2024-01-01 10:00:00"}
    tables = model_tables(
        _items(
            {"event": "interview.started", "data": {**base, "candidate_name": "ann"}},
            {"event": "interview.started", "data": {**base, "candidate_name": "Ann"}},
            {
                "event": "interview.started",
                "data": {**base, "date_started": None, "candidate_name": "zz"},
            },
        )
    )
    assert tables["candidates"][("c",)]["name"] == "ann"  # "a" > "A" by code point; zz is older


def test_model_keeps_a_system_check_whose_event_key_was_taken() -> None:
    def check(stamp: str, success: bool) -> bytes:
        event = {
            "examId": "e",
            "candidateId": "c",
            "type": "SYSTEM_CHECK_COMPLETED",
            "createdAt": "2025-09-21T12:00:00Z",
            "systemCheck": {"success": success, "timestamp": stamp, "data": []},
        }
        return json.dumps(event).encode()

    items = [
        Item(decode_ok(proctoring_decoder, check(stamp, ok)), PROCTORING_TOPIC, 0, n)
        for n, (stamp, ok) in enumerate(
            (("2025-09-21T11:59:00Z", True), ("2025-09-21T11:58Z", False))
        )
    ]
    tables = model_tables(items)
    assert len(tables["proctoring_events"]) == 1
    assert [row["success"] for row in tables["system_checks"].values()] == [True, False]


def test_model_scores_tie_numerically_then_by_text() -> None:
    part = {"report_id": "r", "candidate_id": "c"}
    tables = model_tables(
        _items(
            {"event": "proctoring_score.completed", "data": {**part, "proctoring_score": "72.30"}},
            {"event": "proctoring_score.completed", "data": {**part, "proctoring_score": 72.3}},
            {"event": "proctoring_score.completed", "data": {**part, "proctoring_score": 9}},
        )
    )
    assert tables["interview_reports"][("r",)]["proctoring_score"] == "72.30"
    assert tables["interview_reports"][("r",)]["candidate_id"] == "c"
