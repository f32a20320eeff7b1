"""Property: the final tables do not depend on delivery order, redelivery or batch splits.

docs/contract.md §5: upserts are idempotent and order-safe. Hypothesis generates event sequences
over a few shared IDs, applies each sequence once in order, then again reordered within each key's
allowed freedom, with redeliveries and random batch splits, and demands identical tables.

The freedom (what Kafka and the contract permit):
- proctoring events of different identity arrive in any order (their identity is
  exam, candidate, type and the createdAt instant; one identity always carries one payload);
- the four report events of one report_id arrive in any order relative to each other, but two
  events of the same type for the same report_id keep their relative order;
- applicant events of one application keep their order (they share a partition: a stale
  event changes nothing, so their order decides what is stored);
- interview.started events of one interview keep their order.
A redelivered record lands anywhere that keeps its key's order (between its neighbours).

Generated data is consistent where the handlers document last-writer-wins for conflicting
values: a candidate's name and email, a job's name and ATS id, and the interview attributes a
report fills in are fixed per ID (an event may still omit them).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.storage import (
    INTERVIEW_TOPIC,
    KAFKA_COLUMNS,
    NOTATIONS,
    PROCTORING_TOPIC,
    Snapshot,
    apply,
    db,  # noqa: F401  (fixture)
    decode_ok,
    notate,
    snapshot,
    truncate_all,
)

from schemas.interview import EVENT_NAMES
from schemas.proctoring import EVENT_TYPES
from worker.decode import interview_decoder, proctoring_decoder
from worker.handlers.base import Item

# The world: a few shared IDs and the values that are fixed per ID ---------------------------

EXAMS = ("exam-A", "exam-B")
PROCTORED = ("cand-1", "cand-2")
MEDIA_TYPES = frozenset({"FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED", "PERIODIC_SNAPSHOT"})
P_BASE = dt.datetime(2025, 9, 21, 12, 0, tzinfo=dt.UTC)
P_INSTANTS = tuple(P_BASE + dt.timedelta(minutes=k) for k in range(6))
CHECK_DATA = (
    [{"name": "webcam", "status": "success", "finished": True}],
    [
        {"name": "webcam", "status": "success", "finished": True},
        {"name": "microphone", "status": "failed", "finished": True},
    ],
    [{"name": "internetSpeed", "status": "default", "finished": False}],
    [],
)

CANDIDATES = ("c-1", "c-2", "c-3")
NAME = {c: f"Candidate {c}" for c in CANDIDATES}
EMAIL = {c: f"{c}@example.com" for c in CANDIDATES}
JOBS = ("j-1", "j-2")
JOB_NAME = {"j-1": "Backend Developer", "j-2": "Test Engineer"}
JOB_ATS = {"j-1": "ATS-J1", "j-2": "ATS-J2"}
INTERVIEWS = ("i-1", "i-2")
INTERVIEW_CANDIDATE = {"i-1": "c-1", "i-2": "c-2"}
# What a report says about its interview (fills gaps in `interviews`), fixed per interview.
REPORT_INTERVIEW_NAME = {"i-1": "Backend Interview", "i-2": "QA Interview"}
REPORT_ATS_JOB = {"i-1": "ATS-J1", "i-2": "ATS-J2"}
REPORT_ATS_APPLICATION = {"i-1": "AJA-1", "i-2": "AJA-2"}
REPORTS = ("r-1", "r-2")
REPORT_INTERVIEW = {"r-1": "i-1", "r-2": "i-2"}
APPLICATIONS = ("a-1", "a-2")
I_INSTANTS = tuple(
    dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC) + dt.timedelta(hours=h) for h in (0, 1, 5)
)


@dataclass(frozen=True)
class Ev:
    """A record to deliver; events with the same `order_key` must keep their relative order
    (None: no constraint)."""

    body: bytes
    topic: str
    order_key: Hashable | None


# Strategies ----------------------------------------------------------------------------------


def opt(draw: st.DrawFn, value: Any) -> Any:
    """`value`, or None: a producer may omit any non-identity field."""
    return value if draw(st.booleans()) else None


def timestamp(draw: st.DrawFn, instants: Sequence[dt.datetime]) -> tuple[dt.datetime, str]:
    moment = draw(st.sampled_from(instants))
    return moment, notate(moment, draw(st.sampled_from(NOTATIONS)))


def finish(draw: st.DrawFn, event: str, data: dict[str, Any]) -> bytes:
    """Encode an envelope; a None field is either sent as null or left out."""
    kept = {k: v for k, v in data.items() if v is not None or draw(st.booleans())}
    return json.dumps({"event": event, "data": kept}).encode()


@st.composite
def proctoring_events(draw: st.DrawFn) -> Ev:
    exam = draw(st.sampled_from(EXAMS))
    candidate = draw(st.sampled_from(PROCTORED))
    type_ = draw(st.sampled_from(EVENT_TYPES))
    k = draw(st.integers(0, len(P_INSTANTS) - 1))
    created = P_INSTANTS[k]
    # Everything but the notation of the instants is a function of the identity.
    fields: dict[str, Any] = {
        "examId": exam,
        "candidateId": candidate,
        "type": type_,
        "createdAt": notate(created, draw(st.sampled_from(NOTATIONS))),
    }
    if k % 3:
        fields["description"] = f"{type_.lower()} #{k}"
    if type_ in MEDIA_TYPES:
        fields["mediaUrl"] = f"https://cdn.example/{exam}/{candidate}/{type_}/{k}.jpg"
    if type_ == "SYSTEM_CHECK_COMPLETED":
        fields["systemCheck"] = {
            "success": k % 2 == 0,
            "timestamp": notate(
                created - dt.timedelta(seconds=30), draw(st.sampled_from(NOTATIONS))
            ),
            "data": CHECK_DATA[k % len(CHECK_DATA)],
        }
    return Ev(json.dumps(fields).encode(), PROCTORING_TOPIC, None)


@st.composite
def interview_started(draw: st.DrawFn) -> Ev:
    interview = draw(st.sampled_from(INTERVIEWS))
    candidate = INTERVIEW_CANDIDATE[interview]
    job = draw(st.none() | st.sampled_from(JOBS))
    date_started = opt(draw, timestamp(draw, I_INSTANTS)[1])
    data = {
        "interview_id": interview,
        "candidate_id": candidate,
        "candidate_name": opt(draw, NAME[candidate]),
        "candidate_email_id": opt(draw, EMAIL[candidate]),
        "job_id": job,
        "job_name": opt(draw, JOB_NAME[job]) if job else None,
        "ats_job_id": opt(draw, JOB_ATS[job]) if job else draw(st.none() | st.just("ATS-X")),
        "ats_job_application_id": draw(st.none() | st.sampled_from(("AJA-1", "AJA-9"))),
        "interview_name": draw(st.none() | st.sampled_from(("Backend Interview", "Round 2"))),
        "date_started": date_started,
    }
    return Ev(finish(draw, "interview.started", data), INTERVIEW_TOPIC, ("started", interview))


def block(draw: st.DrawFn, kind: str) -> Any:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return None
    if kind == "array":
        return [{"timestamp": 100 * choice, "role": "interviewer", "content": f"Q{choice}"}]
    return {"feedback": f"feedback {choice}", "rating": ("Junior", "Mid", "Senior")[choice - 1]}


@st.composite
def report_created(draw: st.DrawFn) -> Ev:
    report = draw(st.sampled_from(REPORTS))
    interview = REPORT_INTERVIEW[report]
    candidate = INTERVIEW_CANDIDATE[interview]
    modified = opt(draw, timestamp(draw, I_INSTANTS)[1])
    violations = draw(
        st.none()
        | st.lists(
            st.tuples(
                st.sampled_from(("tab_switch", "face_absence", "multiple_faces")),
                st.sampled_from(("1", "3", 2, None)),
            ),
            max_size=3,
        )
    )
    data = {
        "report_id": report,
        "interview_id": interview,
        "candidate_id": candidate,
        "session_id": opt(draw, f"s-{draw(st.integers(1, 2))}"),
        "interview_name": opt(draw, REPORT_INTERVIEW_NAME[interview]),
        "job_applicant_id": opt(draw, f"ja-{draw(st.integers(1, 2))}"),
        "ats_job_application_id": opt(draw, REPORT_ATS_APPLICATION[interview]),
        "ats_job_id": opt(draw, REPORT_ATS_JOB[interview]),
        "candidate_name": opt(draw, NAME[candidate]),
        "candidate_email_id": opt(draw, EMAIL[candidate]),
        "report_date": opt(draw, f"2024-01-0{draw(st.integers(1, 3))}"),
        "report_url": opt(draw, f"https://micro1.ai/report/{report}-{draw(st.integers(1, 2))}.pdf"),
        "interview_recording_url": opt(
            draw, f"https://micro1.ai/interview/{report}-{draw(st.integers(1, 2))}.m3u8"
        ),
        "proctoring_score": opt(draw, draw(st.sampled_from((85, 70.5, 0, 100)))),
        "ai_match_score": opt(draw, draw(st.sampled_from((85, 42.5)))),
        "proctoring_violations": None
        if violations is None
        else [
            {"type": t, "value": v, "description": f"{t} detected {v} times"} for t, v in violations
        ],
        "interview_transcript": block(draw, "array"),
        "technical_skills_evaluation": block(draw, "array"),
        "soft_skills_evaluation": block(draw, "array"),
        "coding_skills_evaluation": block(draw, "object"),
        "custom_exercise_evaluation": block(draw, "object"),
        "custom_question_evaluation": block(draw, "array"),
        "status": opt(draw, draw(st.sampled_from(("active", "archived")))),
        "date_created": opt(draw, "2024-01-01 09:00:00"),
        "date_modified": modified,
    }
    return Ev(
        finish(draw, "interview_report.created", data),
        INTERVIEW_TOPIC,
        ("interview_report.created", report),
    )


@st.composite
def report_part(draw: st.DrawFn) -> Ev:
    report = draw(st.sampled_from(REPORTS))
    candidate = INTERVIEW_CANDIDATE[REPORT_INTERVIEW[report]]
    event = draw(
        st.sampled_from(
            (
                "interview_recording.completed",
                "interview_webcam_recording.completed",
                "proctoring_score.completed",
            )
        )
    )
    n = draw(st.integers(1, 2))
    data: dict[str, Any] = {"report_id": report, "candidate_id": candidate}
    if event == "interview_recording.completed":
        data["interview_recording_url"] = opt(draw, f"https://rec.example/{report}-{n}.m3u8")
        data["interview_recording_player_url"] = opt(draw, f"https://play.example/{report}-{n}")
    elif event == "interview_webcam_recording.completed":
        data["interview_webcam_recording_url"] = opt(draw, f"https://cam.example/{report}-{n}.m3u8")
        data["interview_webcam_recording_player_url"] = opt(
            draw, f"https://play.example/cam/{report}-{n}"
        )
    else:
        data["proctoring_score"] = opt(draw, draw(st.sampled_from((85, 90.5, 12))))
    return Ev(finish(draw, event, data), INTERVIEW_TOPIC, (event, report))


@st.composite
def applicant(draw: st.DrawFn) -> Ev:
    application = draw(st.sampled_from(APPLICATIONS))
    event = draw(st.sampled_from([e for e in EVENT_NAMES if e.startswith("applicant.")]))
    candidate = draw(st.sampled_from(CANDIDATES))
    job = draw(st.none() | st.sampled_from(JOBS))
    modified = draw(st.none() | st.sampled_from(I_INSTANTS))
    data = {
        "micro1_job_application_id": application,
        "candidate_id": candidate,
        "resume_score": draw(st.none() | st.sampled_from(("99.99", "12.5", 80, 42.25, "0"))),
        "ats_job_application_id": opt(draw, f"TEST{draw(st.integers(1, 2))}"),
        "ats_job_id": opt(draw, JOB_ATS[job]) if job else draw(st.none() | st.just("ATS-X")),
        "micro1_job_id": job,
        "email_id": opt(draw, EMAIL[candidate]),
        "candidate_name": opt(draw, NAME[candidate]),
        "job_name": opt(draw, JOB_NAME[job]) if job else None,
        "stage": opt(draw, draw(st.sampled_from(("Screening", "Interview", "Offer")))),
        "date_created": opt(draw, "2023-12-31 23:55:00"),
        "date_modified": None
        if modified is None
        else notate(modified, draw(st.sampled_from(NOTATIONS))),
        "resume_url": opt(draw, f"https://example.com/{candidate}.pdf"),
    }
    # An application's events share a partition (README: a stale event changes nothing, so
    # their order decides), so they keep their stream order.
    return Ev(finish(draw, event, data), INTERVIEW_TOPIC, ("applicant", application))


def any_event() -> st.SearchStrategy[Ev]:
    return st.one_of(
        proctoring_events(), interview_started(), report_created(), report_part(), applicant()
    )


# Reordering within the freedom ---------------------------------------------------------------


def constrained_order(events: Sequence[Ev], permutation: Sequence[int]) -> list[int]:
    """`permutation`, with the members of each order_key put back in their original order
    into the positions that key occupies."""
    result = list(permutation)
    slots: dict[Hashable, list[int]] = {}
    for position, index in enumerate(permutation):
        key = events[index].order_key
        if key is not None:
            slots.setdefault(key, []).append(position)
    for key, positions in slots.items():
        members = [i for i, e in enumerate(events) if e.order_key == key]
        for position, index in zip(positions, members, strict=True):
            result[position] = index
    return result


def redeliver(events: Sequence[Ev], order: list[int], index: int, rnd: random.Random) -> None:
    """Insert a second delivery of `events[index]` where its key's order still holds."""
    key = events[index].order_key
    lo, hi = 0, len(order)
    if key is not None:
        members = [i for i, e in enumerate(events) if e.order_key == key]
        rank = members.index(index)
        for position, other in enumerate(order):
            if events[other].order_key != key:
                continue
            other_rank = members.index(other)
            if other_rank < rank:
                lo = max(lo, position + 1)
            elif other_rank > rank:
                hi = min(hi, position)
    order.insert(rnd.randint(lo, hi), index)


def split(order: Sequence[int], rnd: random.Random) -> list[list[int]]:
    batches: list[list[int]] = [[]]
    for index in order:
        if batches[-1] and rnd.random() < 0.3:
            batches.append([])
        batches[-1].append(index)
    return batches


# Applying ------------------------------------------------------------------------------------


def to_items(events: Sequence[Ev]) -> list[Item]:
    """Decode once; a record's offset is its position in the generated stream."""
    items = []
    for offset, ev in enumerate(events):
        decoder = proctoring_decoder if ev.topic == PROCTORING_TOPIC else interview_decoder
        items.append(Item(decode_ok(decoder, ev.body), ev.topic, 0, offset))
    return items


async def state(conn: asyncpg.Connection) -> Snapshot:
    return await snapshot(conn, exclude={"proctoring_events": KAFKA_COLUMNS})


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    events=st.lists(any_event(), min_size=1, max_size=30),
    data=st.data(),
)
async def test_final_state_is_independent_of_order_redelivery_and_batching(
    db: asyncpg.Connection,  # noqa: F811
    events: list[Ev],
    data: st.DataObject,
) -> None:
    items = to_items(events)
    rnd = data.draw(st.randoms(use_true_random=False), label="rnd")

    # Reference: in generated order, one batch (one transaction) per record, or all at once.
    await truncate_all(db)
    if data.draw(st.booleans(), label="reference_per_record"):
        for item in items:
            await apply(db, [item])
    else:
        await apply(db, items)
    reference = await state(db)
    assert sum(len(rows) for rows in reference.values()) > 0

    # Reordered within the freedom, with redeliveries, in random batches.
    permutation = data.draw(st.permutations(range(len(events))), label="permutation")
    order = constrained_order(events, permutation)
    for index in data.draw(
        st.lists(st.integers(0, len(events) - 1), max_size=len(events)), label="redelivered"
    ):
        redeliver(events, order, index, rnd)
    await truncate_all(db)
    for batch in split(order, rnd):
        await apply(db, [items[i] for i in batch])
    reordered = await state(db)
    for table in reference:
        assert reordered[table] == reference[table], (
            f"{table} differs after reordering; delivered order {order}"
        )

    # Replaying the whole stream from offset 0 on top changes nothing.
    await apply(db, items)
    assert await state(db) == reference


# The helpers themselves ----------------------------------------------------------------------


def test_constrained_order_keeps_each_keys_order() -> None:
    events = [Ev(b"", "t", k) for k in ("a", None, "a", "b", "a", "b")]
    order = constrained_order(events, [5, 4, 3, 2, 1, 0])
    assert sorted(order) == list(range(6))
    for key in ("a", "b"):
        members = [i for i in order if events[i].order_key == key]
        assert members == sorted(members)


def test_redeliver_stays_between_neighbours_of_its_key() -> None:
    events = [Ev(b"", "t", "k"), Ev(b"", "t", None), Ev(b"", "t", "k"), Ev(b"", "t", "k")]
    for seed in range(50):
        order = [0, 1, 2, 3]
        redeliver(events, order, 2, random.Random(seed))
        keyed = [i for i in order if events[i].order_key == "k"]
        assert keyed in ([0, 2, 2, 3],)
