"""The 13 Proctorme event types (seed 000), each decoded and stored in real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import asyncpg
import pytest
from support.storage import (
    PROCTORING_TOPIC,
    apply,
    apply_each,
    db,  # noqa: F401  (fixture)
    proctoring_item,
    utc,
)

from schemas import proctoring as pr
from schemas.common import tag_of
from worker.decode import proctoring_decoder
from worker.dev.seeds import system_check_example
from worker.dlq import SCHEMA_VIOLATION, DecodeFailure
from worker.handlers.base import Item

EXAM = "exam-2025-backend-42"
CANDIDATE = "cand-7f3a9c"
MEDIA_TYPES = frozenset({"FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED", "PERIODIC_SNAPSHOT"})
FLAG_TYPES = ("EXIT_FULLSCREEN", "TAB_NOT_FOCUS", "FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED")

DESCRIPTIONS: dict[str, str] = {
    "STARTED": "Proctoring session started",
    "END_PROCTORING": "Proctoring session ended by the candidate",
    "SET_CONFIG": "Proctoring configuration applied",
    "FULLSCREEN_CHANGE": "Candidate entered fullscreen",
    "EXIT_FULLSCREEN": "Candidate exited fullscreen mode",
    "TAB_FOCUS_CHANGE": "Exam tab regained focus",
    "TAB_NOT_FOCUS": "Candidate switched to another tab",
    "FACE_ABSENCE": "No face detected for 10 seconds",
    "MULTIPLE_FACE": "2 faces detected in the webcam frame",
    "SOUND_DETECTED": "Speech detected in the background",
    "PERIODIC_SNAPSHOT": "Periodic webcam snapshot",
    "SYSTEM_CHECK_STARTED": "System check started",
    "SYSTEM_CHECK_COMPLETED": "System check completed",
}
EXAMPLE_CHECK: dict[str, Any] = json.loads(system_check_example())


def media_url(type_: str, n: int = 1) -> str:
    return f"https://cdn.proctorme.example/{EXAM}/{CANDIDATE}/{type_.lower()}-{n:04d}.jpg"


def record(
    type_: str,
    created_at: str = "2025-09-21T12:00:05.250Z",
    *,
    exam: str = EXAM,
    candidate: str = CANDIDATE,
    description: str | None = None,
    media: str | None = None,
) -> bytes:
    """A realistic record of `type_`; media types carry mediaUrl, SYSTEM_CHECK_COMPLETED the
    seed's SystemCheck example as `systemCheck`, byte for byte."""
    fields: dict[str, Any] = {
        "examId": exam,
        "candidateId": candidate,
        "type": type_,
        "description": DESCRIPTIONS[type_] if description is None else description,
        "createdAt": created_at,
    }
    if type_ in MEDIA_TYPES:
        fields["mediaUrl"] = media or media_url(type_)
    body = json.dumps(fields).encode()
    if type_ == "SYSTEM_CHECK_COMPLETED":
        body = body[:-1] + b', "systemCheck": ' + system_check_example() + b"}"
    return body


async def session(conn: asyncpg.Connection, exam: str = EXAM) -> asyncpg.Record:
    rows = await conn.fetch(
        "SELECT * FROM proctoring_sessions WHERE exam_id = $1 AND candidate_id = $2",
        exam,
        CANDIDATE,
    )
    assert len(rows) == 1, rows
    return rows[0]


def test_there_are_thirteen_types() -> None:
    assert sorted(DESCRIPTIONS) == sorted(pr.EVENT_TYPES)
    assert len(pr.EVENT_TYPES) == 13
    assert set(FLAG_TYPES) == pr.FLAG_TYPES


@pytest.mark.parametrize("type_", pr.EVENT_TYPES)
async def test_each_type_is_stored(db: asyncpg.Connection, type_: str) -> None:  # noqa: F811
    body = record(type_)
    if type_ == "SYSTEM_CHECK_COMPLETED":
        assert system_check_example() in body
    item = proctoring_item(body, offset=1234, partition=3)
    assert tag_of(item.event) == type_
    await apply(db, [item])

    created = dt.datetime(2025, 9, 21, 12, 0, 5, 250_000, tzinfo=dt.UTC)
    rows = await db.fetch("SELECT * FROM proctoring_events")
    assert len(rows) == 1
    row = rows[0]
    assert (row["exam_id"], row["candidate_id"], row["type"]) == (EXAM, CANDIDATE, type_)
    assert row["created_at"] == created
    assert row["created_at"].utcoffset() == dt.timedelta(0)
    assert row["description"] == DESCRIPTIONS[type_]
    assert row["media_url"] == (media_url(type_) if type_ in MEDIA_TYPES else None)
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (
        PROCTORING_TOPIC,
        3,
        1234,
    )

    checks = await db.fetch("SELECT * FROM system_checks")
    if type_ == "SYSTEM_CHECK_COMPLETED":
        assert len(checks) == 1
        check = checks[0]
        assert (check["exam_id"], check["candidate_id"]) == (EXAM, CANDIDATE)
        assert check["checked_at"] == utc(2025, 9, 21, 12)
        assert check["success"] is True
        assert json.loads(check["results"]) == EXAMPLE_CHECK["data"]
        details = json.loads(row["details"])
        assert details["success"] is True
        assert details["data"] == EXAMPLE_CHECK["data"]
    else:
        assert checks == []

    s = await session(db)
    assert s["started_at"] == (created if type_ == "STARTED" else None)
    assert s["ended_at"] == (created if type_ == "END_PROCTORING" else None)
    assert s["last_event_at"] == created
    assert s["flag_count"] == (1 if type_ in FLAG_TYPES else 0)

    # Redelivery (a later offset, as after a rebalance) changes nothing, the count included.
    await apply(db, [proctoring_item(body, offset=1300, partition=3)])
    await apply(db, [proctoring_item(body, offset=1301, partition=3)] * 2)
    assert await db.fetchval("SELECT count(*) FROM proctoring_events") == 1
    assert await db.fetchval("SELECT kafka_offset FROM proctoring_events") == 1234
    assert await db.fetchval("SELECT count(*) FROM system_checks") == (
        1 if type_ == "SYSTEM_CHECK_COMPLETED" else 0
    )
    again = await session(db)
    assert again["flag_count"] == s["flag_count"]
    assert (again["started_at"], again["ended_at"], again["last_event_at"]) == (
        s["started_at"],
        s["ended_at"],
        s["last_event_at"],
    )


def test_absent_description_means_empty() -> None:
    body = json.dumps(
        {
            "examId": EXAM,
            "candidateId": CANDIDATE,
            "type": "TAB_NOT_FOCUS",
            "createdAt": "2025-09-21T12:00:00Z",
        }
    ).encode()
    event = proctoring_decoder.decode(body)
    assert isinstance(event, pr.TabNotFocus)
    assert event.description == ""


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        ("2025-09-21T12:00:00Z", utc(2025, 9, 21, 12)),
        ("2025-09-21T17:30:00+05:30", utc(2025, 9, 21, 12)),
        ("2025-09-21T12:00:00", utc(2025, 9, 21, 12)),
        ("2025-09-21T12:00:00.123456Z", dt.datetime(2025, 9, 21, 12, 0, 0, 123456, tzinfo=dt.UTC)),
        ("2025-09-21T08:00:00-04:00", utc(2025, 9, 21, 12)),
        # docs/contract.md §3: Java's OffsetDateTime/LocalDateTime drop zero seconds; short offsets;
        # the basic format.
        ("2025-09-21T12:00Z", utc(2025, 9, 21, 12)),
        ("2025-09-21T12:00", utc(2025, 9, 21, 12)),
        ("2025-09-21T14:00+02", utc(2025, 9, 21, 12)),
        ("20250921T120000Z", utc(2025, 9, 21, 12)),
    ],
    ids=[
        "Z",
        "plus0530",
        "no_offset",
        "micros",
        "minus0400",
        "minutes_Z",
        "minutes_no_offset",
        "plus02_short",
        "basic",
    ],
)
async def test_created_at_is_stored_as_the_utc_instant(
    db: asyncpg.Connection,  # noqa: F811
    created_at: str,
    expected: dt.datetime,
) -> None:
    items = [proctoring_item(record(t, created_at), offset=i) for i, t in enumerate(pr.EVENT_TYPES)]
    for item in items:
        assert item.event.createdAt == expected
        assert item.event.createdAt.utcoffset() is not None
    await apply(db, items)
    rows = await db.fetch("SELECT type, created_at FROM proctoring_events ORDER BY type")
    assert len(rows) == 13
    for row in rows:
        assert row["created_at"] == expected, row["type"]
        assert row["created_at"].utcoffset() == dt.timedelta(0)
    s = await session(db)
    assert (s["started_at"], s["ended_at"], s["last_event_at"]) == (expected, expected, expected)
    assert s["flag_count"] == 5


async def test_one_instant_in_three_notations_is_one_event(db: asyncpg.Connection) -> None:  # noqa: F811
    """`Z`, `+05:30` and no offset name the same instant, hence the same event identity."""
    notations = ("2025-09-21T12:00:00Z", "2025-09-21T17:30:00+05:30", "2025-09-21T12:00:00")
    items = [proctoring_item(record("FACE_ABSENCE", n), offset=i) for i, n in enumerate(notations)]
    await apply_each(db, items)
    await apply(db, items)
    assert await db.fetchval("SELECT count(*) FROM proctoring_events") == 1
    assert await db.fetchval("SELECT created_at FROM proctoring_events") == utc(2025, 9, 21, 12)
    assert (await session(db))["flag_count"] == 1


def _exam_timeline() -> list[Item]:
    """A whole proctored exam, flags included, some of them repeated at later instants."""
    base = utc(2025, 9, 21, 9)

    def at(minutes: int, notation: str = "Z") -> str:
        moment = base + dt.timedelta(minutes=minutes)
        if notation == "Z":
            return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        if notation == "+05:30":
            return (moment + dt.timedelta(hours=5, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S+05:30")
        return moment.strftime("%Y-%m-%dT%H:%M:%S")

    events = [
        ("SYSTEM_CHECK_STARTED", at(0)),
        ("SYSTEM_CHECK_COMPLETED", at(1)),
        ("SET_CONFIG", at(2, "naive")),
        ("STARTED", at(3, "+05:30")),
        ("FULLSCREEN_CHANGE", at(4)),
        ("PERIODIC_SNAPSHOT", at(5)),
        ("EXIT_FULLSCREEN", at(10)),  # flag 1
        ("FULLSCREEN_CHANGE", at(11)),
        ("TAB_NOT_FOCUS", at(12, "+05:30")),  # flag 2
        ("TAB_FOCUS_CHANGE", at(13)),
        ("FACE_ABSENCE", at(20)),  # flag 3
        ("FACE_ABSENCE", at(25, "naive")),  # flag 4: same type, another instant
        ("MULTIPLE_FACE", at(30)),  # flag 5
        ("SOUND_DETECTED", at(35)),  # flag 6
        ("PERIODIC_SNAPSHOT", at(40)),
        ("TAB_NOT_FOCUS", at(45)),  # flag 7
        ("END_PROCTORING", at(60, "+05:30")),
        ("PERIODIC_SNAPSHOT", at(61)),  # the last event may follow END_PROCTORING
    ]
    return [proctoring_item(record(t, c), offset=i) for i, (t, c) in enumerate(events)]


@pytest.mark.parametrize("mode", ["one_batch", "per_event", "reversed_with_redelivery"])
async def test_session_summary_over_a_whole_exam(db: asyncpg.Connection, mode: str) -> None:  # noqa: F811
    items = _exam_timeline()
    if mode == "one_batch":
        await apply(db, items)
    elif mode == "per_event":
        await apply_each(db, items)
    else:
        redelivered = [items[i] for i in (6, 8, 10, 11, 11, 15, 0, 16)]
        await apply(db, list(reversed(items[9:])) + redelivered)
        await apply(db, list(reversed(items[:9])) + redelivered)
        await apply_each(db, redelivered)

    base = utc(2025, 9, 21, 9)
    s = await session(db)
    assert s["started_at"] == base + dt.timedelta(minutes=3)
    assert s["ended_at"] == base + dt.timedelta(minutes=60)
    assert s["last_event_at"] == base + dt.timedelta(minutes=61)
    assert s["flag_count"] == 7
    assert await db.fetchval("SELECT count(*) FROM proctoring_events") == len(items)
    flagged = await db.fetchval(
        "SELECT count(*) FROM proctoring_events WHERE type = ANY($1::text[])", list(FLAG_TYPES)
    )
    assert flagged == s["flag_count"]
    assert await db.fetchval("SELECT count(*) FROM system_checks") == 1


async def test_sessions_are_per_exam_and_candidate(db: asyncpg.Connection) -> None:  # noqa: F811
    same_instant = "2025-09-21T12:00:00Z"
    items = [
        proctoring_item(record("TAB_NOT_FOCUS", same_instant, exam="exam-a"), offset=0),
        proctoring_item(record("TAB_NOT_FOCUS", same_instant, exam="exam-b"), offset=1),
        proctoring_item(record("EXIT_FULLSCREEN", same_instant, exam="exam-b"), offset=2),
    ]
    await apply(db, items)
    assert (await session(db, "exam-a"))["flag_count"] == 1
    assert (await session(db, "exam-b"))["flag_count"] == 2
    assert await db.fetchval("SELECT count(*) FROM proctoring_events") == 3


@pytest.mark.parametrize("type_", sorted(MEDIA_TYPES))
def test_media_type_without_media_url_is_a_schema_violation(type_: str) -> None:
    value = json.loads(record(type_))
    del value["mediaUrl"]
    failure = proctoring_decoder.decode(json.dumps(value).encode())
    assert isinstance(failure, DecodeFailure)
    assert failure.reason == SCHEMA_VIOLATION
    assert "mediaUrl" in failure.message

    value["mediaUrl"] = ""
    failure = proctoring_decoder.decode(json.dumps(value).encode())
    assert isinstance(failure, DecodeFailure)
    assert failure.reason == SCHEMA_VIOLATION


def test_system_check_completed_without_system_check_is_a_schema_violation() -> None:
    value = json.loads(record("SYSTEM_CHECK_COMPLETED"))
    del value["systemCheck"]
    failure = proctoring_decoder.decode(json.dumps(value).encode())
    assert isinstance(failure, DecodeFailure)
    assert failure.reason == SCHEMA_VIOLATION
    assert "systemCheck" in failure.message


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.pop("data"),
        lambda c: c.update(success="yes"),
        lambda c: c["data"].append({"name": "gpu", "status": "success", "finished": True}),
        lambda c: c["data"].append({"name": "webcam", "status": "pending", "finished": True}),
        lambda c: c.update(timestamp="not a time"),
        lambda c: c.update(timestamp="2025-09-21T12:60Z"),
    ],
    ids=[
        "no_data",
        "success_not_bool",
        "unknown_check_name",
        "unknown_status",
        "bad_timestamp",
        "bad_short_timestamp",
    ],
)
def test_malformed_system_check_is_a_schema_violation(mutate: Any) -> None:
    value = json.loads(record("SYSTEM_CHECK_COMPLETED"))
    mutate(value["systemCheck"])
    failure = proctoring_decoder.decode(json.dumps(value).encode())
    assert isinstance(failure, DecodeFailure)
    assert failure.reason == SCHEMA_VIOLATION


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [("2025-09-21T12:05Z", utc(2025, 9, 21, 12, 5)), ("20250921T1405+02", utc(2025, 9, 21, 12, 5))],
)
async def test_system_check_timestamp_in_short_forms_is_stored(
    db: asyncpg.Connection,  # noqa: F811
    stamp: str,
    expected: dt.datetime,
) -> None:
    value = json.loads(record("SYSTEM_CHECK_COMPLETED"))
    value["systemCheck"]["timestamp"] = stamp
    await apply(db, [proctoring_item(json.dumps(value).encode())])
    assert await db.fetchval("SELECT checked_at FROM system_checks") == expected
    # The details keep the check as stored: its instant in UTC, in one notation.
    assert await db.fetchval("SELECT details->>'timestamp' FROM proctoring_events") == (
        "2025-09-21T12:05:00Z"
    )


def test_media_url_is_ignored_on_types_without_media() -> None:
    value = json.loads(record("TAB_NOT_FOCUS"))
    value["mediaUrl"] = "https://cdn.example/x.jpg"
    event = proctoring_decoder.decode(json.dumps(value).encode())
    assert isinstance(event, pr.TabNotFocus)
    assert event.media_url is None
