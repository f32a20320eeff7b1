"""docs/contract.md §3 "Wire format", as real producers send records: every timestamp form
`datetime.fromisoformat` accepts, text of any length, and scores and decimals exactly as written.

Decoding is checked on its own (the exact UTC instant, the exact decimal) and through real
PostgreSQL (numbers compared as the column's text, so `85.0` can never pass for `85`).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
from support.event_builders import encode, proctoring, sample
from support.storage import (
    apply,
    db,  # noqa: F401  (fixture)
    interview_item,
    proctoring_item,
)

from schemas import interview as iv
from schemas import proctoring as pr
from worker.decode import EventDecoder, interview_decoder, proctoring_decoder
from worker.dev.seeds import interview_samples, system_check_example
from worker.dlq import SCHEMA_VIOLATION, DecodeFailure

SAMPLES = interview_samples()
STARTED, REPORT, RECORDING, WEBCAM, SCORE, APPLICANT = SAMPLES[:6]

MINUTE_UTC = dt.datetime(2025, 9, 21, 12, 5, tzinfo=dt.UTC)


def at(hour: int, minute: int, second: int = 0, micro: int = 0) -> dt.datetime:
    return dt.datetime(2025, 9, 21, hour, minute, second, micro, tzinfo=dt.UTC)


def with_number(body: bytes, field: str, number: str, **others: str) -> bytes:
    """A seed sample whose `data.field` (and each of `others`) is the JSON number `number`,
    spelt exactly so: json.dumps would turn `72.30` into `72.3` before the worker saw it."""
    numbers = {field: number, **others}
    value = json.loads(body)
    for name in numbers:
        value["data"][name] = f"@@{name}@@"
    text = encode(value)
    for name, spelt in numbers.items():
        text = text.replace(f'"@@{name}@@"'.encode(), spelt.encode())
        assert f'"{name}": {spelt}'.encode() in text
    return text


def expect_event(decoder: EventDecoder, value: bytes) -> Any:
    result = decoder.decode(value)
    assert not isinstance(result, DecodeFailure), result
    return result


def expect_violation(decoder: EventDecoder, value: bytes) -> DecodeFailure:
    result = decoder.decode(value)
    assert isinstance(result, DecodeFailure), f"decoded instead of failing: {result!r}"
    assert result.reason == SCHEMA_VIOLATION, result
    assert len(result.message.encode()) <= 1024
    return result


# Timestamps -----------------------------------------------------------------------------------

# (text, the UTC instant it names). Every row is a form docs/contract.md §3 names or implies.
TIMESTAMP_FORMS: list[tuple[str, dt.datetime]] = [
    # Java OffsetDateTime / LocalDateTime with zero seconds: the forms that started the issue.
    ("2025-09-21T12:05Z", MINUTE_UTC),
    ("2025-09-21T12:06", at(12, 6)),
    # RFC 3339 (msgspec's own fast path).
    ("2025-09-21T12:05:00Z", MINUTE_UTC),
    ("2025-09-21T12:05:07.250Z", at(12, 5, 7, 250_000)),
    ("2025-09-21T12:05:07.123456Z", at(12, 5, 7, 123_456)),
    ("2025-09-21T14:05:00+02:00", MINUTE_UTC),
    ("2025-09-21T12:05:00", MINUTE_UTC),
    ("2025-09-21 12:05:00", MINUTE_UTC),
    # Offsets without seconds, short offsets, offsets without a colon.
    ("2025-09-21T14:05+02:00", MINUTE_UTC),
    ("2025-09-21T14:05+02", MINUTE_UTC),
    ("2025-09-21T14:05:00+02", MINUTE_UTC),
    ("2025-09-21T14:05:00+0200", MINUTE_UTC),
    ("2025-09-21T07:35-04:30", MINUTE_UTC),
    ("2025-09-21T12:05-00:00", MINUTE_UTC),
    ("2025-09-21T17:35:00.5+05:30", at(12, 5, 0, 500_000)),
    # A space separator without seconds, hours alone, a comma before the fraction.
    ("2025-09-21 12:05", MINUTE_UTC),
    ("2025-09-21 14:05+02", MINUTE_UTC),
    ("2025-09-21T12Z", at(12, 0)),
    ("2025-09-21T12:05:07,25Z", at(12, 5, 7, 250_000)),
    # Basic format (no separators), and basic mixed with extended.
    ("20250921T120500Z", MINUTE_UTC),
    ("20250921T1205Z", MINUTE_UTC),
    ("20250921T120507.25Z", at(12, 5, 7, 250_000)),
    ("20250921T140500+0200", MINUTE_UTC),
    ("20250921T1405+02", MINUTE_UTC),
    ("20250921T120500", MINUTE_UTC),
    ("20250921T12:05:00Z", MINUTE_UTC),
    ("2025-09-21T120500Z", MINUTE_UTC),
    # Offsets with seconds, which fromisoformat also takes.
    ("2025-09-21T14:05:30+02:00:30", at(12, 5)),
    # A date alone: fromisoformat reads it as midnight, so the contract does too.
    ("2025-09-21", at(0, 0)),
    ("20250921", at(0, 0)),
]
FORM_IDS = [text for text, _ in TIMESTAMP_FORMS]


@pytest.mark.parametrize(("text", "instant"), TIMESTAMP_FORMS, ids=FORM_IDS)
def test_created_at_in_every_contract_form(text: str, instant: dt.datetime) -> None:
    event = expect_event(proctoring_decoder, encode(proctoring(createdAt=text)))
    assert isinstance(event, pr.TabNotFocus)
    assert event.createdAt == instant
    assert event.createdAt.utcoffset() == dt.timedelta(0)
    assert event.createdAt.tzinfo is dt.UTC


@pytest.mark.parametrize(("text", "instant"), TIMESTAMP_FORMS, ids=FORM_IDS)
def test_interview_timestamps_in_every_contract_form(text: str, instant: dt.datetime) -> None:
    started = expect_event(interview_decoder, sample(STARTED, date_started=text))
    assert started.data.date_started == instant
    assert started.data.date_started.tzinfo is dt.UTC
    applicant = expect_event(interview_decoder, sample(APPLICANT, date_modified=text))
    assert applicant.data.date_modified == instant
    assert applicant.data.date_modified.tzinfo is dt.UTC


# Every timestamp field of every struct, each given a form msgspec's RFC 3339 parser refuses.
SHORT = "2025-09-21T14:05+02"


def _system_check(timestamp: str, created_at: str = SHORT) -> bytes:
    check = json.loads(system_check_example())
    check["timestamp"] = timestamp
    value = proctoring(type="SYSTEM_CHECK_COMPLETED", createdAt=created_at, systemCheck=check)
    return encode(value)


TIMESTAMP_FIELDS: list[tuple[str, EventDecoder, bytes, Any]] = [
    ("createdAt", proctoring_decoder, encode(proctoring(createdAt=SHORT)), lambda e: e.createdAt),
    (
        "systemCheck.timestamp",
        proctoring_decoder,
        _system_check(SHORT),
        lambda e: e.systemCheck.timestamp,
    ),
    (
        "interview.started date_started",
        interview_decoder,
        sample(STARTED, date_started=SHORT),
        lambda e: e.data.date_started,
    ),
    (
        "report date_created",
        interview_decoder,
        sample(REPORT, date_created=SHORT),
        lambda e: e.data.date_created,
    ),
    (
        "report date_modified",
        interview_decoder,
        sample(REPORT, date_modified=SHORT),
        lambda e: e.data.date_modified,
    ),
    *(
        (
            f"applicant.{status} {field}",
            interview_decoder,
            sample(body, **{field: SHORT}),
            lambda e, field=field: getattr(e.data, field),
        )
        for status, body in zip(
            ("created", "invited", "updated", "completed"), SAMPLES[5:], strict=True
        )
        for field in ("date_created", "date_modified")
    ),
]


@pytest.mark.parametrize(
    ("decoder", "value", "read"),
    [f[1:] for f in TIMESTAMP_FIELDS],
    ids=[f[0] for f in TIMESTAMP_FIELDS],
)
def test_every_timestamp_field_takes_the_short_forms(
    decoder: EventDecoder, value: bytes, read: Any
) -> None:
    event = expect_event(decoder, value)
    stamp = read(event)
    assert stamp == MINUTE_UTC
    assert stamp.tzinfo is dt.UTC


def test_every_timestamp_field_of_one_record_at_once() -> None:
    """Two fields in short forms: the slow path must convert all of them, not the first."""
    event = expect_event(
        interview_decoder,
        sample(REPORT, date_created="2025-09-21T12:05Z", date_modified="20250921T1405+02"),
    )
    assert (event.data.date_created, event.data.date_modified) == (MINUTE_UTC, MINUTE_UTC)
    event = expect_event(proctoring_decoder, _system_check("2025-09-21 12:05", "2025-09-21T12:05Z"))
    assert (event.createdAt, event.systemCheck.timestamp) == (MINUTE_UTC, MINUTE_UTC)


def test_a_short_timestamp_keeps_the_rest_of_the_record() -> None:
    """The slow path yields the same structs, with the same values, as the fast path."""
    fast = expect_event(interview_decoder, sample(REPORT, date_modified="2025-09-21T12:05:00Z"))
    slow = expect_event(interview_decoder, sample(REPORT, date_modified="2025-09-21T12:05Z"))
    assert type(slow) is type(fast) is iv.InterviewReportCreated
    assert type(slow.data) is iv.InterviewReportData
    assert type(slow.data.proctoring_violations[0]) is iv.ProctoringViolation
    for name in slow.data.__struct_fields__:
        a, b = getattr(fast.data, name), getattr(slow.data, name)
        if isinstance(a, msgspec.Raw):
            assert bytes(a) == bytes(b), name
        else:
            assert a == b, name


def test_rfc3339_records_never_take_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is one C-level decode; the fallback exists only for refused timestamps."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("the slow path was taken")

    for decoder in (proctoring_decoder, interview_decoder):
        monkeypatch.setattr(decoder, "_decode_lenient", refuse)
    expect_event(proctoring_decoder, encode(proctoring(createdAt="2025-09-21T12:05:00Z")))
    for body in SAMPLES:
        expect_event(interview_decoder, body)
    # A record that fails for a reason other than a timestamp does not try it either.
    expect_violation(proctoring_decoder, encode(proctoring(examId="")))


@pytest.mark.parametrize(
    "text",
    [
        "2025-13-01T00:00Z",
        "2025-13-01T00:00:00Z",
        "2025-02-30T10:00Z",
        "2025-09-21T24:00",
        "2025-09-21T12:60Z",
        "2025-09-21T12:05+24:00",
        "2025-09-21T12:5Z",
        "2025-09-21T12:05z",
        "2025-09",
        "12:05",
        "yesterday",
        "",
        " 2025-09-21T12:05Z",
        "2025-09-21T12:05Z ",
        "0000-01-01T00:00Z",
    ],
)
def test_invalid_timestamps_are_still_schema_violations(text: str) -> None:
    failure = expect_violation(proctoring_decoder, encode(proctoring(createdAt=text)))
    assert "createdAt" in failure.message
    failure = expect_violation(interview_decoder, sample(APPLICANT, date_modified=text))
    assert "date_modified" in failure.message


@pytest.mark.parametrize("value", [1758456000, 1758456000.5, True, ["2025-09-21T12:05Z"]])
def test_a_timestamp_that_is_not_a_string_is_a_schema_violation(value: Any) -> None:
    failure = expect_violation(proctoring_decoder, encode(proctoring(createdAt=value)))
    assert "createdAt" in failure.message


def test_invalid_system_check_timestamp_names_its_path() -> None:
    failure = expect_violation(proctoring_decoder, _system_check("2025-09-21T12:60"))
    assert "systemCheck.timestamp" in failure.message


@pytest.mark.parametrize(
    "text",
    ["9999-12-31T23:59-14:00", "9999-12-31T23:59:59-01", "0001-01-01T00:30+01:00"],
)
def test_instants_outside_utc_years_1_to_9999_are_refused_on_the_slow_path(text: str) -> None:
    """The same rule as the fast path (schemas.common.utc): in UTC the instant must fall in
    years 1-9999, or no Python client could read the row back."""
    failure = expect_violation(proctoring_decoder, encode(proctoring(createdAt=text)))
    assert "out of range" in failure.message
    assert "createdAt" in failure.message


def test_a_short_timestamp_does_not_hide_a_later_violation() -> None:
    value = proctoring(createdAt="2025-09-21T12:05Z", type="FACE_ABSENCE")
    failure = expect_violation(proctoring_decoder, encode(value))
    assert "mediaUrl" in failure.message


def test_report_date_is_still_a_date() -> None:
    event = expect_event(interview_decoder, sample(REPORT, report_date="2025-09-21"))
    assert event.data.report_date == dt.date(2025, 9, 21)
    expect_violation(interview_decoder, sample(REPORT, report_date="2025-02-30"))
    expect_violation(interview_decoder, sample(REPORT, report_date="yesterday"))


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2025-09-21T12:05Z", MINUTE_UTC),
        ("2025-09-21T12:06", at(12, 6)),
        ("20250921T1405+02", MINUTE_UTC),
        ("2025-09-21 12:05", MINUTE_UTC),
    ],
)
async def test_short_timestamps_are_stored_as_the_utc_instant(
    db: asyncpg.Connection,  # noqa: F811
    text: str,
    instant: dt.datetime,
) -> None:
    check = json.loads(system_check_example())
    check["timestamp"] = text
    items = [
        proctoring_item(encode(proctoring(createdAt=text)), offset=0),
        proctoring_item(
            encode(proctoring(type="SYSTEM_CHECK_COMPLETED", createdAt=text, systemCheck=check)),
            offset=1,
        ),
    ]
    await apply(db, items)
    await apply(
        db,
        [
            interview_item(sample(STARTED, date_started=text), offset=0),
            interview_item(sample(APPLICANT, date_modified=text, date_created=text), offset=1),
            interview_item(sample(REPORT, date_modified=text), offset=2),
        ],
    )
    expected = instant.isoformat(sep=" ").replace("+00:00", "+00")
    # Compared in SQL: the stored instant, rendered in UTC, is the one the text names.
    await db.execute("SET TIME ZONE 'UTC'")
    queries = [
        "SELECT created_at::text FROM proctoring_events",
        "SELECT checked_at::text FROM system_checks",
        "SELECT date_started::text FROM interviews WHERE date_started IS NOT NULL",
        "SELECT date_modified::text FROM applicants",
        "SELECT date_created::text FROM applicants",
        "SELECT date_modified::text FROM interview_reports",
    ]
    for sql in queries:
        assert {r[0] for r in await db.fetch(sql)} == {expected}, sql


# Text without a length bound ------------------------------------------------------------------

MEGA = 1_000_000


def _long_text(n: int) -> str:
    # Not one repeated character: a truncation or a swap would show.
    chunk = "Candidate looked away; 候选人; \\N \t tab\n"
    return (chunk * (n // len(chunk) + 1))[:n]


async def test_a_one_megabyte_description_is_stored_whole(db: asyncpg.Connection) -> None:  # noqa: F811
    text = _long_text(MEGA)
    assert len(text) == MEGA
    media = "https://cdn.example/" + "m" * 100_000
    value = encode(proctoring(type="FACE_ABSENCE", description=text, mediaUrl=media))
    event = expect_event(proctoring_decoder, value)
    assert event.description == text
    await apply(db, [proctoring_item(value)])
    row = await db.fetchrow("SELECT description, media_url FROM proctoring_events")
    assert row["description"] == text
    assert row["media_url"] == media
    assert await db.fetchval("SELECT length(description) FROM proctoring_events") == MEGA


async def test_long_interview_text_is_stored_whole(db: asyncpg.Connection) -> None:  # noqa: F811
    name = _long_text(200_000)
    description = _long_text(MEGA)
    url = "https://micro1.ai/report/" + "r" * 20_000
    violations = [{"type": "tab_switch", "value": "3", "description": description}]
    await apply(
        db,
        [
            interview_item(
                sample(
                    REPORT,
                    candidate_name=name,
                    report_url=url,
                    status=description,
                    proctoring_violations=violations,
                )
            )
        ],
    )
    report = await db.fetchrow("SELECT report_url, status FROM interview_reports")
    assert (report["report_url"], report["status"]) == (url, description)
    assert await db.fetchval("SELECT description FROM proctoring_violations") == description
    assert await db.fetchval("SELECT name FROM candidates") == name


def test_identity_keys_keep_their_bound() -> None:
    expect_event(proctoring_decoder, encode(proctoring(examId="x" * 512)))
    failure = expect_violation(proctoring_decoder, encode(proctoring(examId="x" * 513)))
    assert "examId" in failure.message
    expect_violation(interview_decoder, sample(REPORT, report_id="r" * 513))
    expect_violation(interview_decoder, sample(REPORT, report_id=""))


async def test_lists_have_no_length_bound(db: asyncpg.Connection) -> None:  # noqa: F811
    violations = [{"type": f"t{i:05d}", "value": str(i)} for i in range(1500)]
    await apply(db, [interview_item(sample(REPORT, proctoring_violations=violations))])
    assert await db.fetchval("SELECT count(*) FROM proctoring_violations") == 1500
    check = json.loads(system_check_example())
    check["data"] = check["data"] * 50
    value = encode(proctoring(type="SYSTEM_CHECK_COMPLETED", systemCheck=check))
    event = expect_event(proctoring_decoder, value)
    assert len(event.systemCheck.data) == len(check["data"]) > 64


# Numbers exactly as written -------------------------------------------------------------------

SCORES = ["85", "72.30", "99.99", "0", "100", "100.00", "0.1", "85.0"]


@pytest.mark.parametrize("score", SCORES)
def test_scores_decode_to_the_decimal_as_written(score: str) -> None:
    for body, field in (
        (REPORT, "proctoring_score"),
        (REPORT, "ai_match_score"),
        (SCORE, "proctoring_score"),
    ):
        event = expect_event(interview_decoder, with_number(body, field, score))
        value = getattr(event.data, field)
        assert isinstance(value, Decimal), (field, type(value))
        assert str(value) == score, field


async def test_scores_are_stored_as_written(db: asyncpg.Connection) -> None:  # noqa: F811
    """`SELECT proctoring_score::text` gives back the producer's digits: '85', not '85.0'."""
    for i, score in enumerate(SCORES):
        report = sample(REPORT, report_id=f"report-{i}")
        body = with_number(report, "proctoring_score", score, ai_match_score=score)
        await apply(db, [interview_item(body, offset=i)])
        part = with_number(sample(SCORE, report_id=f"part-{i}"), "proctoring_score", score)
        await apply(db, [interview_item(part, offset=i)])
    rows = await db.fetch(
        """
        SELECT report_id, proctoring_score::text AS p, ai_match_score::text AS a,
               proctoring_score_from_event::text AS e
        FROM interview_reports ORDER BY report_id
        """
    )
    by_id = {r["report_id"]: r for r in rows}
    for i, score in enumerate(SCORES):
        assert (by_id[f"report-{i}"]["p"], by_id[f"report-{i}"]["a"]) == (score, score)
        assert (by_id[f"part-{i}"]["p"], by_id[f"part-{i}"]["e"]) == (score, score)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [('"72.30"', "72.30"), ("72.30", "72.30"), ("99.99", "99.99"), ("85", "85"), ('"0"', "0")],
    ids=["string_72.30", "number_72.30", "number_99.99", "number_85", "string_0"],
)
async def test_resume_score_is_stored_as_written(
    db: asyncpg.Connection,  # noqa: F811
    sent: str,
    stored: str,
) -> None:
    body = with_number(APPLICANT, "resume_score", sent)
    event = expect_event(interview_decoder, body)
    assert str(event.data.resume_score) == stored
    await apply(db, [interview_item(body)])
    assert await db.fetchval("SELECT resume_score::text FROM applicants") == stored


@pytest.mark.parametrize("score", ["100.5", "101", "-1", "-0.01", "1e3", '"NaN"', '"Infinity"'])
def test_out_of_range_score_is_a_schema_violation(score: str) -> None:
    for body, field in (
        (REPORT, "proctoring_score"),
        (REPORT, "ai_match_score"),
        (SCORE, "proctoring_score"),
    ):
        failure = expect_violation(interview_decoder, with_number(body, field, score))
        assert field in failure.message
        assert "0" in failure.message and "100" in failure.message, failure.message


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ('"3"', "3"),
        ("3", "3"),
        ("1.10", "1.10"),
        ("-0.50", "-0.50"),
        ("1E+3", "1E+3"),
        ("null", None),
    ],
)
async def test_violation_value_is_stored_as_written(
    db: asyncpg.Connection,  # noqa: F811
    sent: str,
    stored: str | None,
) -> None:
    value = json.loads(REPORT)
    value["data"]["proctoring_violations"] = [{"type": "tab_switch", "value": "@@V@@"}]
    body = encode(value).replace(b'"@@V@@"', sent.encode())
    event = expect_event(interview_decoder, body)
    assert event.data.proctoring_violations[0].value_text == stored
    await apply(db, [interview_item(body)])
    assert await db.fetchval("SELECT value FROM proctoring_violations") == stored


@pytest.mark.parametrize("value", [True, {"n": 3}, [3]], ids=["bool", "object", "array"])
def test_violation_value_of_another_kind_is_a_schema_violation(value: Any) -> None:
    violations = [{"type": "tab_switch", "value": value}]
    failure = expect_violation(interview_decoder, sample(REPORT, proctoring_violations=violations))
    assert "value" in failure.message


def test_nul_in_a_violation_value_is_a_schema_violation() -> None:
    violations = [{"type": "tab_switch", "value": "a\u0000b"}]
    expect_violation(interview_decoder, sample(REPORT, proctoring_violations=violations))
