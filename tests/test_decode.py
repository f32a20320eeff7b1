"""Decoding failure kinds (docs/contract.md §3 and §6 dead-letter reasons); no database involved."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
import pytest
from support.event_builders import encode, proctoring, sample

from schemas import interview as iv
from schemas import proctoring as pr
from worker.decode import EventDecoder, interview_decoder, proctoring_decoder
from worker.dev.seeds import interview_samples
from worker.dlq import (
    EMPTY_PAYLOAD,
    INVALID_JSON,
    SCHEMA_VIOLATION,
    UNKNOWN_EVENT_TYPE,
    DecodeFailure,
)

REASONS = {INVALID_JSON, SCHEMA_VIOLATION, UNKNOWN_EVENT_TYPE, EMPTY_PAYLOAD}
SAMPLES = interview_samples()
STARTED, REPORT, RECORDING, WEBCAM, SCORE, APPLICANT = SAMPLES[:6]


def expect_failure(decoder: EventDecoder, value: bytes | None, reason: str) -> DecodeFailure:
    result = decoder.decode(value)
    assert isinstance(result, DecodeFailure), f"decoded instead of failing: {result!r}"
    assert result.reason == reason, result
    assert result.message.strip(), "the dead letter's dlq.error must say something"
    assert len(result.message.encode("utf-8")) <= 1024
    return result


def expect_event(decoder: EventDecoder, value: bytes) -> msgspec.Struct:
    result = decoder.decode(value)
    assert not isinstance(result, DecodeFailure), result
    return result


DECODERS = pytest.mark.parametrize(
    "decoder", [proctoring_decoder, interview_decoder], ids=["proctoring", "interview"]
)


# invalid_json ------------------------------------------------------------------------------


def _valid(decoder: EventDecoder) -> bytes:
    return encode(proctoring()) if decoder is proctoring_decoder else STARTED


@DECODERS
@pytest.mark.parametrize(
    "value",
    [b"not json", b"{", b'{"type": "STARTED",}', b"{'type': 'STARTED'}", b"\xef\xbb\xbf{}"],
    ids=["words", "open_brace", "trailing_comma", "single_quotes", "utf8_bom"],
)
def test_not_json_is_invalid_json(decoder: EventDecoder, value: bytes) -> None:
    expect_failure(decoder, value, INVALID_JSON)


@DECODERS
def test_valid_record_with_trailing_garbage_is_invalid_json(decoder: EventDecoder) -> None:
    expect_failure(decoder, _valid(decoder) + b" trailing", INVALID_JSON)
    expect_failure(decoder, _valid(decoder) + _valid(decoder), INVALID_JSON)


@DECODERS
def test_truncated_record_is_invalid_json(decoder: EventDecoder) -> None:
    whole = _valid(decoder).rstrip()
    for cut in (1, 10, len(whole) // 2):
        expect_failure(decoder, whole[:-cut], INVALID_JSON)


@DECODERS
def test_invalid_utf8_is_invalid_json(decoder: EventDecoder) -> None:
    expect_failure(decoder, b"\xff\xfe{}", INVALID_JSON)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"switched", b"sw\xffitched"),  # a stray continuation byte in description
        (b"switched", b"sw\xc3itched"),  # a truncated 2-byte sequence
        (b"exam-1", b"exam\xed\xa0\x80"),  # an encoded UTF-16 surrogate in examId
        (b"cand-1", b"cand\xc0\xaf"),  # an overlong encoding in candidateId
        (b"TAB_NOT_FOCUS", b"TAB_NOT_FOCUS\xff"),  # in the type tag
    ],
    ids=["stray_byte", "truncated_sequence", "surrogate", "overlong", "in_type"],
)
def test_invalid_utf8_in_a_proctoring_record_is_invalid_json(old: bytes, new: bytes) -> None:
    value = encode(proctoring(description="Candidate switched tab"))
    assert old in value
    expect_failure(proctoring_decoder, value.replace(old, new, 1), INVALID_JSON)


def test_invalid_utf8_in_an_interview_record_is_invalid_json() -> None:
    value = STARTED.replace(b"John Doe", b"John \xe9 Doe", 1)
    assert value != STARTED
    expect_failure(interview_decoder, value, INVALID_JSON)


@pytest.mark.parametrize(
    "value",
    [
        # Not JSON (trailing garbage), and the object also lacks `type`.
        b'{"examId": "e"} trailing',
        # A record cut off mid-way whose tag happens to be unknown.
        b'{"type": "NOPE", "examId": "exam-1", "candidateId": "ca',
        # A record cut off mid-way after an ill-typed field.
        b'{"type": "TAB_NOT_FOCUS", "examId": 5, "candidateId": "ca',
        # Not UTF-8: a Latin-1 byte inside createdAt.
        encode(proctoring()).replace(b'Z"', b'Z\xe9"', 1),
    ],
    ids=["trailing_garbage", "truncated_unknown_type", "truncated_bad_field", "latin1_in_time"],
)
def test_bytes_that_are_not_utf8_json_are_invalid_json_whatever_else_is_wrong(
    value: bytes,
) -> None:
    """docs/contract.md §3/§6: the wire format is UTF-8 JSON, so bytes that are not UTF-8 JSON are
    `invalid_json`, even when the part the parser read first also breaks the schema."""
    expect_failure(proctoring_decoder, value, INVALID_JSON)


# schema_violation ----------------------------------------------------------------------------


@DECODERS
@pytest.mark.parametrize("value", [b"[]", b"[1, 2]", b'"STARTED"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_a_schema_violation(
    decoder: EventDecoder, value: bytes
) -> None:
    expect_failure(decoder, value, SCHEMA_VIOLATION)


def test_a_json_array_of_valid_events_is_a_schema_violation() -> None:
    expect_failure(proctoring_decoder, encode([proctoring()]), SCHEMA_VIOLATION)


@pytest.mark.parametrize("field", ["examId", "candidateId", "createdAt", "type"])
def test_missing_required_proctoring_field_is_a_schema_violation(field: str) -> None:
    value = proctoring()
    del value[field]
    failure = expect_failure(proctoring_decoder, encode(value), SCHEMA_VIOLATION)
    assert field in failure.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (STARTED, "interview_id"),
        (STARTED, "candidate_id"),
        (REPORT, "report_id"),
        (REPORT, "candidate_id"),
        (RECORDING, "report_id"),
        (WEBCAM, "candidate_id"),
        (SCORE, "report_id"),
        (APPLICANT, "micro1_job_application_id"),
        (APPLICANT, "candidate_id"),
    ],
)
def test_missing_interview_identity_key_is_a_schema_violation(body: bytes, field: str) -> None:
    value = json.loads(body)
    del value["data"][field]
    failure = expect_failure(interview_decoder, encode(value), SCHEMA_VIOLATION)
    assert field in failure.message


def test_null_identity_key_is_a_schema_violation() -> None:
    expect_failure(interview_decoder, sample(RECORDING, report_id=None), SCHEMA_VIOLATION)


def test_missing_data_is_a_schema_violation() -> None:
    expect_failure(interview_decoder, b'{"event": "interview.started"}', SCHEMA_VIOLATION)


def test_word_proctoring_score_is_a_schema_violation() -> None:
    failure = expect_failure(
        interview_decoder, sample(SCORE, proctoring_score="eighty"), SCHEMA_VIOLATION
    )
    assert "proctoring_score" in failure.message


@pytest.mark.parametrize(
    "created_at",
    ["yesterday", "", "2025-13-01T00:00:00Z", "2025-13-01T00:00Z", "2025-09-21T12:05z", 1758456000],
)
def test_bad_created_at_is_a_schema_violation(created_at: Any) -> None:
    failure = expect_failure(
        proctoring_decoder, encode(proctoring(createdAt=created_at)), SCHEMA_VIOLATION
    )
    assert "createdAt" in failure.message


def test_bad_interview_timestamp_is_a_schema_violation() -> None:
    expect_failure(interview_decoder, sample(STARTED, date_started="yesterday"), SCHEMA_VIOLATION)
    expect_failure(interview_decoder, sample(APPLICANT, date_modified="soon"), SCHEMA_VIOLATION)


@pytest.mark.parametrize("score", ["NaN", "abc", "Infinity", "-Infinity", "sNaN", ""])
def test_bad_resume_score_is_a_schema_violation(score: str) -> None:
    failure = expect_failure(
        interview_decoder, sample(APPLICANT, resume_score=score), SCHEMA_VIOLATION
    )
    assert "resume_score" in failure.message


@pytest.mark.parametrize("score", ["99.99", 99.99, 99, "0", "1E+1"])
def test_resume_score_as_decimal_string_or_number(score: Any) -> None:
    event = expect_event(interview_decoder, sample(APPLICANT, resume_score=score))
    assert isinstance(event, iv.ApplicantCreated)
    assert event.data.resume_score is not None
    assert event.data.resume_score == msgspec.convert(str(score), type=iv.DecimalValue)


@pytest.mark.parametrize("score", [100.5, -1, "NaN"])
def test_score_out_of_range_is_a_schema_violation_naming_the_range(score: Any) -> None:
    failure = expect_failure(
        interview_decoder, sample(SCORE, proctoring_score=score), SCHEMA_VIOLATION
    )
    assert "`proctoring_score` must be a number from 0 to 100" in failure.message


def test_score_is_the_decimal_as_written() -> None:
    value = SCORE.replace(b'"proctoring_score": 85', b'"proctoring_score": 72.30')
    assert value != SCORE
    event = expect_event(interview_decoder, value)
    assert isinstance(event, iv.ProctoringScoreCompleted)
    assert str(event.data.proctoring_score) == "72.30"


@pytest.mark.parametrize("field", ["examId", "candidateId"])
def test_empty_proctoring_id_is_a_schema_violation(field: str) -> None:
    expect_failure(proctoring_decoder, encode(proctoring(**{field: ""})), SCHEMA_VIOLATION)


def test_empty_interview_id_is_a_schema_violation() -> None:
    expect_failure(interview_decoder, sample(REPORT, report_id=""), SCHEMA_VIOLATION)


@pytest.mark.parametrize("value", [1, None, ["exam"], {"id": "exam"}])
def test_ill_typed_exam_id_is_a_schema_violation(value: Any) -> None:
    expect_failure(proctoring_decoder, encode(proctoring(examId=value)), SCHEMA_VIOLATION)


@pytest.mark.parametrize(
    "block",
    ["interview_transcript", "technical_skills_evaluation", "coding_skills_evaluation"],
)
def test_report_block_of_the_wrong_json_kind_is_a_schema_violation(block: str) -> None:
    expect_failure(interview_decoder, sample(REPORT, **{block: "text"}), SCHEMA_VIOLATION)
    expect_failure(interview_decoder, sample(REPORT, **{block: 42}), SCHEMA_VIOLATION)


def test_interview_envelope_on_proctoring_decoder_is_not_accepted() -> None:
    for body in SAMPLES:
        expect_failure(proctoring_decoder, body, SCHEMA_VIOLATION)


def test_proctoring_event_on_interview_decoder_is_not_accepted() -> None:
    for type_ in pr.EVENT_TYPES:
        value = proctoring(type=type_, mediaUrl="https://cdn.example/m.jpg")
        expect_failure(interview_decoder, encode(value), SCHEMA_VIOLATION)


# NUL characters (PostgreSQL text and jsonb cannot hold U+0000) --------------------------------


def test_nul_in_description_is_a_schema_violation() -> None:
    value = encode(proctoring(description="tab\u0000switch"))
    assert b"\\u0000" in value
    failure = expect_failure(proctoring_decoder, value, SCHEMA_VIOLATION)
    assert "description" in failure.message


def test_nul_in_an_interview_id_is_a_schema_violation() -> None:
    expect_failure(interview_decoder, sample(STARTED, interview_name="a\u0000"), SCHEMA_VIOLATION)
    expect_failure(interview_decoder, sample(APPLICANT, stage="\u0000"), SCHEMA_VIOLATION)


def test_nul_inside_report_transcript_is_a_schema_violation() -> None:
    transcript = [{"timestamp": 100, "role": "candidate", "content": "I am \u0000 John"}]
    failure = expect_failure(
        interview_decoder, sample(REPORT, interview_transcript=transcript), SCHEMA_VIOLATION
    )
    assert "interview_transcript" in failure.message


def test_nul_inside_report_block_key_is_a_schema_violation() -> None:
    block = {"feedback": "ok", "rating\u0000": "Senior"}
    expect_failure(
        interview_decoder, sample(REPORT, coding_skills_evaluation=block), SCHEMA_VIOLATION
    )


def _minimal_report(**data: Any) -> bytes:
    """A report carrying only its identity keys and `data`: the evaluation blocks are absent."""
    value = {
        "event": "interview_report.created",
        "data": {"report_id": "r-1", "interview_id": "i-1", "candidate_id": "c-1", **data},
    }
    return encode(value)


def test_nul_inside_transcript_of_a_report_without_other_blocks_is_a_schema_violation() -> None:
    """Producers may omit blocks (docs/contract.md §3: other fields may be absent)."""
    transcript = [{"timestamp": 1, "role": "candidate", "content": "a\u0000b"}]
    expect_failure(
        interview_decoder, _minimal_report(interview_transcript=transcript), SCHEMA_VIOLATION
    )


def test_nul_in_status_of_a_report_without_blocks_is_a_schema_violation() -> None:
    expect_failure(interview_decoder, _minimal_report(status="x\u0000"), SCHEMA_VIOLATION)


def test_escaped_backslash_u0000_is_not_a_nul() -> None:
    """JSON `"a\\\\u0000"` is the text a, backslash, u, 0, 0, 0, 0: no NUL at all."""
    text = "a\\u0000"
    assert len(text) == 7 and "\x00" not in text
    value = encode(proctoring(description=text))
    assert b'"a\\\\u0000"' in value
    event = expect_event(proctoring_decoder, value)
    assert isinstance(event, pr.TabNotFocus)
    assert event.description == text


def test_escaped_backslash_u0000_in_a_report_is_not_a_nul() -> None:
    event = expect_event(interview_decoder, sample(REPORT, status="a\\u0000"))
    assert isinstance(event, iv.InterviewReportCreated)
    assert event.data.status == "a\\u0000"


def test_escaped_backslash_u0000_in_a_report_without_blocks_is_not_a_nul() -> None:
    event = expect_event(interview_decoder, _minimal_report(status="a\\u0000"))
    assert isinstance(event, iv.InterviewReportCreated)
    assert event.data.status == "a\\u0000"


def test_nul_in_an_ignored_extra_field_is_harmless() -> None:
    event = expect_event(proctoring_decoder, encode(proctoring(producerNote="x\u0000")))
    assert isinstance(event, pr.TabNotFocus)


# Deep nesting ---------------------------------------------------------------------------------


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@DECODERS
def test_100k_nested_array_in_an_extra_field_fails_cleanly(decoder: EventDecoder) -> None:
    value = _valid(decoder).rstrip()[:-1] + b', "extra": ' + _deep(100_000) + b"}"
    result = decoder.decode(value)
    assert isinstance(result, DecodeFailure)
    assert result.reason in (INVALID_JSON, SCHEMA_VIOLATION)
    assert result.message and len(result.message.encode()) <= 1024


def test_100k_nested_array_in_a_report_block_fails_cleanly() -> None:
    value = _minimal_report()[:-2] + b', "interview_transcript": ' + _deep(100_000) + b"}}"
    result = interview_decoder.decode(value)
    assert isinstance(result, DecodeFailure)
    assert result.reason in (INVALID_JSON, SCHEMA_VIOLATION)


@pytest.mark.parametrize("levels", [50, 600])
def test_nested_transcript_with_a_nul_fails_cleanly(levels: int) -> None:
    """Hunting the NUL inside a deeply nested (but parseable) block must not blow the stack."""
    nested: Any = "a\u0000"
    for _ in range(levels):
        nested = [nested]
    value = (
        sample(REPORT)[:-2] + b', "interview_transcript": ' + msgspec.json.encode([nested]) + b"}}"
    )
    result = interview_decoder.decode(value)
    assert isinstance(result, DecodeFailure)
    assert result.reason in (INVALID_JSON, SCHEMA_VIOLATION)


# unknown_event_type ---------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["TAB_SWITCH", "started", "", "FACE_ABSENCE "])
def test_unknown_proctoring_type(type_: str) -> None:
    failure = expect_failure(proctoring_decoder, encode(proctoring(type=type_)), UNKNOWN_EVENT_TYPE)
    assert type_ in failure.message


@pytest.mark.parametrize("event", ["interview.cancelled", "applicant.deleted", "INTERVIEW.STARTED"])
def test_unknown_interview_event(event: str) -> None:
    value = json.loads(STARTED)
    value["event"] = event
    failure = expect_failure(interview_decoder, encode(value), UNKNOWN_EVENT_TYPE)
    assert event in failure.message


def test_unknown_type_with_a_huge_name_keeps_the_message_under_1kib() -> None:
    expect_failure(proctoring_decoder, encode(proctoring(type="X" * 100_000)), UNKNOWN_EVENT_TYPE)
    expect_failure(proctoring_decoder, encode(proctoring(type="é" * 50_000)), UNKNOWN_EVENT_TYPE)


def test_non_string_type_is_a_schema_violation() -> None:
    expect_failure(proctoring_decoder, encode(proctoring(type=7)), SCHEMA_VIOLATION)


# empty_payload --------------------------------------------------------------------------------


@DECODERS
@pytest.mark.parametrize(
    "value", [b"", None, b" ", b"\n\t \r\n"], ids=["empty", "none", "space", "ws"]
)
def test_empty_value_is_empty_payload(decoder: EventDecoder, value: bytes | None) -> None:
    expect_failure(decoder, value, EMPTY_PAYLOAD)


# What must decode -----------------------------------------------------------------------------


def test_unknown_extra_fields_are_ignored() -> None:
    value = proctoring(
        sessionToken="abc", browser={"name": "Firefox", "version": 130}, tags=[1, "x", None]
    )
    event = expect_event(proctoring_decoder, encode(value))
    assert isinstance(event, pr.TabNotFocus)
    assert event.examId == "exam-1"


def test_unknown_extra_fields_in_interview_envelope_and_data_are_ignored() -> None:
    value = json.loads(SCORE)
    value["webhook_id"] = "wh_123"
    value["data"]["model_version"] = {"name": "v2"}
    event = expect_event(interview_decoder, encode(value))
    assert isinstance(event, iv.ProctoringScoreCompleted)
    assert event.data.proctoring_score == 85


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-01 10:00:00",
        "2024-01-01T10:00:00",
        "2024-01-01T10:00:00Z",
        "2024-01-01T15:30:00+05:30",
        "2024-01-01T10:00Z",
        "2024-01-01T10:00",
        "2024-01-01 12:00+02",
        "20240101T100000Z",
    ],
)
def test_interview_timestamps_decode_as_utc_aware(text: str) -> None:
    event = expect_event(interview_decoder, sample(STARTED, date_started=text))
    assert isinstance(event, iv.InterviewStarted)
    started = event.data.date_started
    assert started is not None and started.tzinfo is not None
    assert started == dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)


def test_space_separated_timestamp_decodes_as_utc() -> None:
    event = expect_event(proctoring_decoder, encode(proctoring(createdAt="2024-01-01 10:00:00")))
    assert isinstance(event, pr.TabNotFocus)
    assert event.createdAt.utcoffset() == dt.timedelta(0)
    assert event.createdAt == dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)


def test_applicant_timestamps_decode_as_utc_aware() -> None:
    event = expect_event(interview_decoder, APPLICANT)
    assert isinstance(event, iv.ApplicantCreated)
    assert event.data.date_modified == dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    assert event.data.date_created == dt.datetime(2099, 12, 31, 23, 55, tzinfo=dt.UTC)


def test_absent_optional_interview_fields_decode_as_none() -> None:
    event = expect_event(
        interview_decoder,
        encode({"event": "interview.started", "data": {"interview_id": "i", "candidate_id": "c"}}),
    )
    assert isinstance(event, iv.InterviewStarted)
    assert event.data.date_started is None and event.data.job_id is None


def test_every_failure_reason_is_a_contract_reason() -> None:
    cases: list[tuple[EventDecoder, bytes | None]] = [
        (proctoring_decoder, b"nope"),
        (proctoring_decoder, b"[]"),
        (proctoring_decoder, encode(proctoring(type="NOPE"))),
        (interview_decoder, None),
    ]
    reasons = set()
    for decoder, value in cases:
        result = decoder.decode(value)
        assert isinstance(result, DecodeFailure)
        reasons.add(result.reason)
    assert reasons == REASONS


def test_instant_beyond_year_9999_in_utc_is_a_schema_violation() -> None:
    """PostgreSQL would store 9999-12-31T23:59:59-14:00, but no Python client could read it."""
    from worker.decode import proctoring_decoder

    value = (
        b'{"examId": "e", "candidateId": "c", "type": "TAB_NOT_FOCUS", '
        b'"createdAt": "9999-12-31T23:59:59-14:00"}'
    )
    failure = proctoring_decoder.decode(value)
    assert getattr(failure, "reason", None) == "schema_violation"
    assert "out of range" in failure.message  # type: ignore[union-attr]
