"""`worker schema`: the exported JSON Schemas accept what the decoder accepts and reject what it
rejects, wherever JSON Schema can express the rule. No broker or database involved.

Date-time strings are checked by `pattern`, not by `format: date-time` (which would reject the
seed's `2024-01-01 10:00:00` and needs `rfc3339-validator` to be checked at all), so the verdicts
below hold with and without a format checker.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import msgspec.structs
import pytest
from jsonschema import Draft202012Validator

from schemas.common import tag_of
from schemas.interview import INTERVIEW_STRUCTS
from schemas.proctoring import PROCTORING_STRUCTS
from worker.decode import EventDecoder, interview_decoder, proctoring_decoder
from worker.dev.seeds import interview_samples, proctoring_samples
from worker.dlq import (
    EMPTY_PAYLOAD,
    INVALID_JSON,
    SCHEMA_VIOLATION,
    UNKNOWN_EVENT_TYPE,
    DecodeFailure,
)
from worker.tools.schema import (
    DIALECT,
    RAW_BLOCK_KINDS,
    RAW_SCALAR_FIELDS,
    build_schemas,
    export_schemas,
    run_schema_command,
)

PROCTORING = "proctoring.events.schema.json"
INTERVIEW = "interview.events.schema.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every exported file, read back from disk, keyed by its path relative to the out dir."""
    out = tmp_path_factory.mktemp("schema")
    paths = export_schemas(out)
    return {p.relative_to(out).as_posix(): json.loads(p.read_text("utf-8")) for p in paths}


def validator(schema: dict[str, Any], *, formats: bool = True) -> Draft202012Validator:
    if formats:
        return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return Draft202012Validator(schema)


@pytest.fixture(scope="module")
def topic_validators(
    exported: dict[str, dict[str, Any]],
) -> dict[str, tuple[Draft202012Validator, EventDecoder]]:
    return {
        "proctoring": (validator(exported[PROCTORING]), proctoring_decoder),
        "interview": (validator(exported[INTERVIEW]), interview_decoder),
    }


def parse(value: bytes) -> Any:
    """What any UTF-8 JSON consumer does before a JSON Schema validator can look at a value."""
    return json.loads(value.decode("utf-8"))


def encode(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def interview_sample(event: str) -> dict[str, Any]:
    for body in interview_samples():
        value = parse(body)
        if value["event"] == event:
            return value
    raise LookupError(event)


def proctoring_sample(type_: str) -> dict[str, Any]:
    for body in proctoring_samples():
        value = parse(body)
        if value["type"] == type_:
            return value
    raise LookupError(type_)


def edited(value: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> bytes:
    copy = json.loads(json.dumps(value))
    edit(copy)
    return encode(copy)


# The files ------------------------------------------------------------------------------------


def test_one_file_per_event_type_and_per_topic(exported: dict[str, dict[str, Any]]) -> None:
    expected = {PROCTORING, INTERVIEW}
    expected |= {f"proctoring/{tag_of(cls)}.schema.json" for cls in PROCTORING_STRUCTS}
    expected |= {f"interview/{tag_of(cls)}.schema.json" for cls in INTERVIEW_STRUCTS}
    assert set(exported) == expected
    assert "proctoring/FACE_ABSENCE.schema.json" in exported
    assert "interview/interview.started.schema.json" in exported


def test_every_file_is_a_standalone_2020_12_schema(exported: dict[str, dict[str, Any]]) -> None:
    ids = set()
    for rel, schema in exported.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == DIALECT, rel
        assert schema["$id"].endswith("/" + rel), rel
        assert schema["title"] and schema["description"], rel
        assert isinstance(schema["$defs"], dict) and schema["$defs"], rel
        # Standalone: every reference stays inside the document.
        refs = [
            line.split('"$ref": ')[1].strip('",')
            for line in json.dumps(schema, indent=1).splitlines()
            if '"$ref": ' in line
        ]
        assert refs and all(ref.startswith("#/$defs/") for ref in refs), rel
        for ref in refs:
            assert ref.removeprefix("#/$defs/") in schema["$defs"], (rel, ref)
        ids.add(schema["$id"])
    assert len(ids) == len(exported)


def test_union_schemas_carry_msgspecs_discriminator(exported: dict[str, dict[str, Any]]) -> None:
    for rel, field, structs in (
        (PROCTORING, "type", PROCTORING_STRUCTS),
        (INTERVIEW, "event", INTERVIEW_STRUCTS),
    ):
        schema = exported[rel]
        assert schema["discriminator"]["propertyName"] == field
        mapping = schema["discriminator"]["mapping"]
        assert set(mapping) == {tag_of(cls) for cls in structs}
        assert len(schema["anyOf"]) == len(structs)
        assert schema["properties"][field]["enum"] == [tag_of(cls) for cls in structs]


def test_rules_json_schema_cannot_express_are_described(
    exported: dict[str, dict[str, Any]],
) -> None:
    for rel, schema in exported.items():
        text = schema["description"]
        assert "means UTC" in text, rel
        assert "U+0000" in text, rel
    report = exported["interview/interview_report.created.schema.json"]
    data = report["$defs"]["InterviewReportData"]["properties"]
    for field, kind in RAW_BLOCK_KINDS.items():
        assert data[field]["type"] == [kind, "null"]
        assert "verbatim" in data[field]["description"]
    created_at = exported[PROCTORING]["$defs"]["Started"]["properties"]["createdAt"]
    assert "means UTC" in created_at["description"]
    assert "format" not in created_at  # RFC 3339 `date-time` would reject naive timestamps


def test_schemas_mirror_the_structs_fields(exported: dict[str, dict[str, Any]]) -> None:
    """The mirrored structs behind the export have the real structs' fields and defaults."""

    def check(cls: type[msgspec.Struct], defs: dict[str, Any]) -> None:
        node = defs[cls.__name__]
        fields = msgspec.structs.fields(cls)
        tag_field = cls.__struct_config__.tag_field
        names = [f.encode_name for f in fields] + ([tag_field] if tag_field else [])
        assert set(node["properties"]) == set(names), cls
        required = {
            f.encode_name
            for f in fields
            if f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
        }
        assert set(node.get("required", [])) == required | ({tag_field} if tag_field else set())
        for f in fields:
            inner = f.type
            if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
                check(inner, defs)
            if f.type is msgspec.Raw:
                assert f.name in RAW_BLOCK_KINDS.keys() | RAW_SCALAR_FIELDS, f.name

    for rel, structs in ((PROCTORING, PROCTORING_STRUCTS), (INTERVIEW, INTERVIEW_STRUCTS)):
        for cls in structs:
            check(cls, exported[rel]["$defs"])


def test_build_schemas_matches_the_files(exported: dict[str, dict[str, Any]]) -> None:
    assert build_schemas() == exported


def test_run_schema_command_prints_the_written_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nested" / "schema"
    assert run_schema_command(str(out)) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 + len(PROCTORING_STRUCTS) + len(INTERVIEW_STRUCTS)
    assert all(Path(p).is_file() and Path(p).is_relative_to(out) for p in printed)


def test_run_schema_command_reports_an_unwritable_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert run_schema_command(str(blocker / "schema")) == 1
    assert "worker schema: cannot write" in capsys.readouterr().err


# Seed samples ---------------------------------------------------------------------------------


@pytest.mark.parametrize("formats", [True, False], ids=["format_checker", "no_format_checker"])
def test_every_seed_sample_is_valid(exported: dict[str, dict[str, Any]], formats: bool) -> None:
    for family, samples, tag_field in (
        ("proctoring", proctoring_samples(), "type"),
        ("interview", interview_samples(), "event"),
    ):
        topic = validator(exported[f"{family}.events.schema.json"], formats=formats)
        for body in samples:
            value = parse(body)
            errors = [e.message for e in topic.iter_errors(value)]
            assert not errors, (family, value[tag_field], errors)
            own = validator(exported[f"{family}/{value[tag_field]}.schema.json"], formats=formats)
            errors = [e.message for e in own.iter_errors(value)]
            assert not errors, (family, value[tag_field], errors)


def test_every_event_type_has_a_seed_sample() -> None:
    assert {parse(b)["type"] for b in proctoring_samples()} == {
        tag_of(c) for c in PROCTORING_STRUCTS
    }
    assert {parse(b)["event"] for b in interview_samples()} == {
        tag_of(c) for c in INTERVIEW_STRUCTS
    }


def test_an_event_schema_rejects_another_events_record(
    exported: dict[str, dict[str, Any]],
) -> None:
    own = validator(exported["proctoring/FACE_ABSENCE.schema.json"])
    assert own.is_valid(proctoring_sample("FACE_ABSENCE"))
    assert not own.is_valid(proctoring_sample("MULTIPLE_FACE"))


# Malformed records: the schema and the decoder agree ------------------------------------------

_STARTED = proctoring_sample("STARTED")
_FACE = proctoring_sample("FACE_ABSENCE")
_CHECK = proctoring_sample("SYSTEM_CHECK_COMPLETED")
_REPORT = interview_sample("interview_report.created")
_SCORE = interview_sample("proctoring_score.completed")
_APPLICANT = interview_sample("applicant.created")
_INTERVIEW_STARTED = interview_sample("interview.started")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def edit(record: dict[str, Any]) -> None:
        node = record
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def edit(record: dict[str, Any]) -> None:
        node = record
        for key in parents:
            node = node[key]
        del node[last]

    return edit


# (id, family, value, the decoder's reason, or None when the record is valid)
CASES: list[tuple[str, str, bytes, str | None]] = [
    # The malformed cases of the brief that JSON Schema can express.
    ("json_array", "proctoring", b"[]", SCHEMA_VIOLATION),
    ("json_array_of_an_event", "proctoring", encode([_STARTED]), SCHEMA_VIOLATION),
    ("json_array_interview", "interview", encode([_SCORE]), SCHEMA_VIOLATION),
    ("missing_candidateId", "proctoring", edited(_STARTED, _drop("candidateId")), SCHEMA_VIOLATION),
    (
        "proctoring_score_eighty",
        "interview",
        edited(_SCORE, _set("data.proctoring_score", "eighty")),
        SCHEMA_VIOLATION,
    ),
    (
        "report_proctoring_score_eighty",
        "interview",
        edited(_REPORT, _set("data.proctoring_score", "eighty")),
        SCHEMA_VIOLATION,
    ),
    (
        "createdAt_yesterday",
        "proctoring",
        edited(_STARTED, _set("createdAt", "yesterday")),
        SCHEMA_VIOLATION,
    ),
    (
        "unknown_type",
        "proctoring",
        edited(_STARTED, _set("type", "COFFEE_BREAK")),
        UNKNOWN_EVENT_TYPE,
    ),
    (
        "unknown_event",
        "interview",
        edited(_SCORE, _set("event", "interview.cancelled")),
        UNKNOWN_EVENT_TYPE,
    ),
    ("empty_examId", "proctoring", edited(_STARTED, _set("examId", "")), SCHEMA_VIOLATION),
    # More rules both sides state.
    ("missing_type", "proctoring", edited(_STARTED, _drop("type")), SCHEMA_VIOLATION),
    ("type_not_a_string", "proctoring", edited(_STARTED, _set("type", 5)), SCHEMA_VIOLATION),
    ("missing_event", "interview", edited(_SCORE, _drop("event")), SCHEMA_VIOLATION),
    ("missing_data", "interview", edited(_SCORE, _drop("data")), SCHEMA_VIOLATION),
    ("missing_mediaUrl", "proctoring", edited(_FACE, _drop("mediaUrl")), SCHEMA_VIOLATION),
    ("empty_mediaUrl", "proctoring", edited(_FACE, _set("mediaUrl", "")), SCHEMA_VIOLATION),
    ("missing_systemCheck", "proctoring", edited(_CHECK, _drop("systemCheck")), SCHEMA_VIOLATION),
    (
        "system_check_unknown_status",
        "proctoring",
        edited(
            _CHECK,
            _set("systemCheck.data", [{"name": "webcam", "status": "meh", "finished": True}]),
        ),
        SCHEMA_VIOLATION,
    ),
    (
        "description_null",
        "proctoring",
        edited(_STARTED, _set("description", None)),
        SCHEMA_VIOLATION,
    ),
    (
        "createdAt_feb_29_2023",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2023-02-29T10:00:00Z")),
        SCHEMA_VIOLATION,
    ),
    (
        "createdAt_hour_24",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-01-01T24:00:00Z")),
        SCHEMA_VIOLATION,
    ),
    (
        "createdAt_trailing_newline",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-01-01T10:00:00Z\n")),
        SCHEMA_VIOLATION,
    ),
    (
        "report_date_trailing_newline",
        "interview",
        edited(_REPORT, _set("data.report_date", "2024-01-01\n")),
        SCHEMA_VIOLATION,
    ),
    (
        "createdAt_month_13_short",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-13-01T00:00Z")),
        SCHEMA_VIOLATION,
    ),
    (
        "createdAt_lower_z_short",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-09-21T12:05z")),
        SCHEMA_VIOLATION,
    ),
    (
        "createdAt_offset_hour_24_short",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-09-21T12:05+24")),
        SCHEMA_VIOLATION,
    ),
    (
        "createdAt_month_only",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-09")),
        SCHEMA_VIOLATION,
    ),
    (
        "examId_too_long",
        "proctoring",
        edited(_STARTED, _set("examId", "x" * 513)),
        SCHEMA_VIOLATION,
    ),
    ("missing_report_id", "interview", edited(_SCORE, _drop("data.report_id")), SCHEMA_VIOLATION),
    (
        "missing_candidate_id",
        "interview",
        edited(_INTERVIEW_STARTED, _drop("data.candidate_id")),
        SCHEMA_VIOLATION,
    ),
    (
        "score_above_100",
        "interview",
        edited(_SCORE, _set("data.proctoring_score", 100.5)),
        SCHEMA_VIOLATION,
    ),
    (
        "resume_score_nan",
        "interview",
        edited(_APPLICANT, _set("data.resume_score", "NaN")),
        SCHEMA_VIOLATION,
    ),
    (
        "resume_score_huge",
        "interview",
        edited(_APPLICANT, _set("data.resume_score", 1e12)),
        SCHEMA_VIOLATION,
    ),
    (
        "resume_score_words",
        "interview",
        edited(_APPLICANT, _set("data.resume_score", "high")),
        SCHEMA_VIOLATION,
    ),
    (
        "report_date_not_a_date",
        "interview",
        edited(_REPORT, _set("data.report_date", "2024-02-30")),
        SCHEMA_VIOLATION,
    ),
    (
        "transcript_is_an_object",
        "interview",
        edited(_REPORT, _set("data.interview_transcript", {})),
        SCHEMA_VIOLATION,
    ),
    (
        "coding_evaluation_is_an_array",
        "interview",
        edited(_REPORT, _set("data.coding_skills_evaluation", [])),
        SCHEMA_VIOLATION,
    ),
    (
        "transcript_is_a_string",
        "interview",
        edited(_REPORT, _set("data.interview_transcript", "hi")),
        SCHEMA_VIOLATION,
    ),
    # NUL: PostgreSQL's rule, expressed as a pattern (the decoder calls it a schema violation).
    (
        "nul_in_description",
        "proctoring",
        edited(_STARTED, _set("description", "a\x00b")),
        SCHEMA_VIOLATION,
    ),
    ("nul_in_examId", "proctoring", edited(_STARTED, _set("examId", "\x00")), SCHEMA_VIOLATION),
    (
        "nul_in_candidate_name",
        "interview",
        edited(_APPLICANT, _set("data.candidate_name", "x\x00")),
        SCHEMA_VIOLATION,
    ),
    (
        "nul_in_violation",
        "interview",
        edited(_REPORT, _set("data.proctoring_violations", [{"type": "t", "value": "\x00"}])),
        SCHEMA_VIOLATION,
    ),
    (
        "nul_deep_in_transcript",
        "interview",
        edited(_REPORT, _set("data.interview_transcript", [{"q": [{"a": "\x00"}]}])),
        SCHEMA_VIOLATION,
    ),
    (
        "nul_in_a_transcript_key",
        "interview",
        edited(_REPORT, _set("data.interview_transcript", [{"\x00": 1}])),
        SCHEMA_VIOLATION,
    ),
    (
        "nul_in_an_evaluation_key",
        "interview",
        edited(_REPORT, _set("data.coding_skills_evaluation", {"\x00": 1})),
        SCHEMA_VIOLATION,
    ),
    # Valid variants: both accept.
    ("extra_unknown_field", "proctoring", edited(_STARTED, _set("browser", "firefox")), None),
    ("nul_in_an_unknown_field", "proctoring", edited(_STARTED, _set("extra", "\x00")), None),
    ("description_absent", "proctoring", edited(_STARTED, _drop("description")), None),
    (
        "createdAt_naive",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-09-21T12:00:10")),
        None,
    ),
    (
        "createdAt_space",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-09-21 12:00:10")),
        None,
    ),
    (
        "createdAt_offset_no_colon",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2025-09-21T12:00:10.5+0530")),
        None,
    ),
    (
        "createdAt_feb_29_2024",
        "proctoring",
        edited(_STARTED, _set("createdAt", "2024-02-29T10:00:00Z")),
        None,
    ),
    # docs/contract.md §3: every form datetime.fromisoformat accepts.
    *(
        (f"createdAt_{stamp}", "proctoring", edited(_STARTED, _set("createdAt", stamp)), None)
        for stamp in (
            "2025-09-21T12:05Z",
            "2025-09-21T12:05",
            "2025-09-21 12:05",
            "2025-09-21T14:05+02",
            "2025-09-21T14:05:00+02:00",
            "2025-09-21T12:05:00,5Z",
            "2025-09-21T12Z",
            "20250921T120500Z",
            "20250921T1405+0200",
            "2025-09-21t12:05:00z",
        )
    ),
    (
        "systemCheck_timestamp_short",
        "proctoring",
        edited(_CHECK, _set("systemCheck.timestamp", "2025-09-21T12:05Z")),
        None,
    ),
    (
        "applicant_date_modified_basic",
        "interview",
        edited(_APPLICANT, _set("data.date_modified", "20250921T1205")),
        None,
    ),
    ("score_as_written", "interview", edited(_SCORE, _set("data.proctoring_score", 72.5)), None),
    ("score_100", "interview", edited(_SCORE, _set("data.proctoring_score", 100)), None),
    (
        "score_negative",
        "interview",
        edited(_SCORE, _set("data.proctoring_score", -1)),
        SCHEMA_VIOLATION,
    ),
    (
        "long_description",
        "proctoring",
        edited(_STARTED, _set("description", "x" * 100_000)),
        None,
    ),
    (
        "violation_value_bool",
        "interview",
        edited(_REPORT, _set("data.proctoring_violations", [{"type": "t", "value": True}])),
        SCHEMA_VIOLATION,
    ),
    (
        "violation_value_object",
        "interview",
        edited(_REPORT, _set("data.proctoring_violations", [{"type": "t", "value": {}}])),
        SCHEMA_VIOLATION,
    ),
    (
        "violation_value_decimal",
        "interview",
        edited(_REPORT, _set("data.proctoring_violations", [{"type": "t", "value": 1.5}])),
        None,
    ),
    ("resume_score_number", "interview", edited(_APPLICANT, _set("data.resume_score", 99.5)), None),
    ("resume_score_null", "interview", edited(_APPLICANT, _set("data.resume_score", None)), None),
    ("optional_fields_null", "interview", edited(_REPORT, _set("data.report_url", None)), None),
    (
        "transcript_null",
        "interview",
        edited(_REPORT, _set("data.interview_transcript", None)),
        None,
    ),
    ("transcript_absent", "interview", edited(_REPORT, _drop("data.interview_transcript")), None),
    (
        "violation_value_number",
        "interview",
        edited(_REPORT, _set("data.proctoring_violations", [{"type": "t", "value": 3}])),
        None,
    ),
    (
        "escaped_backslash_u0000_is_text",
        "proctoring",
        edited(_STARTED, _set("description", "\\u0000")),
        None,
    ),
]


@pytest.mark.parametrize(
    ("family", "value", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_schema_agrees_with_the_decoder(
    topic_validators: dict[str, tuple[Draft202012Validator, EventDecoder]],
    exported: dict[str, dict[str, Any]],
    family: str,
    value: bytes,
    reason: str | None,
) -> None:
    topic, decoder = topic_validators[family]
    decoded = decoder.decode(value)
    if reason is None:
        assert not isinstance(decoded, DecodeFailure), decoded
    else:
        assert isinstance(decoded, DecodeFailure), f"the decoder accepted {value!r}"
        assert decoded.reason == reason, decoded
    document = parse(value)  # every case here is JSON: the schema gets to decide
    for check in (topic, validator(exported[f"{family}.events.schema.json"], formats=False)):
        errors = [e.message for e in check.iter_errors(document)]
        assert bool(errors) == (reason is not None), errors


@pytest.mark.parametrize(
    ("family", "value", "reason", "parse_error"),
    [
        ("proctoring", b"not json", INVALID_JSON, json.JSONDecodeError),
        ("proctoring", b'{"type": "STARTED",}', INVALID_JSON, json.JSONDecodeError),
        ("proctoring", b"\xff\xfe{}", INVALID_JSON, UnicodeDecodeError),
        ("interview", encode(_SCORE).replace(b"123", b"\xc3", 1), INVALID_JSON, UnicodeDecodeError),
        ("proctoring", b"", EMPTY_PAYLOAD, json.JSONDecodeError),
        ("interview", b"  \n", EMPTY_PAYLOAD, json.JSONDecodeError),
        # A raw (unescaped) NUL byte is a control character: not JSON at all.
        (
            "proctoring",
            encode(_STARTED).replace(b"Exam started", b"Exam\x00started"),
            INVALID_JSON,
            json.JSONDecodeError,
        ),
        # 100000-deep nesting inside a record, and as the whole record.
        (
            "proctoring",
            encode(_STARTED)[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            INVALID_JSON,
            RecursionError,
        ),
        ("interview", b"[" * 100_000 + b"]" * 100_000, SCHEMA_VIOLATION, RecursionError),
    ],
    ids=[
        "not_json",
        "trailing_comma",
        "invalid_utf8",
        "invalid_utf8_inside",
        "empty",
        "blank",
        "raw_nul_byte",
        "deep_nesting_in_a_field",
        "deep_nesting_whole_record",
    ],
)
def test_values_beyond_json_schemas_reach_fail_before_validation(
    family: str, value: bytes, reason: str, parse_error: type[Exception]
) -> None:
    """No JSON Schema validator sees these: parsing fails first. The decoder rejects them too."""
    with pytest.raises(parse_error):
        parse(value)
    decoder = proctoring_decoder if family == "proctoring" else interview_decoder
    decoded = decoder.decode(value)
    assert isinstance(decoded, DecodeFailure)
    assert decoded.reason == reason, decoded


# What the decoder takes beyond the schema's pattern: fromisoformat's exotic forms.
_EXOTIC_SEPARATORS = ("_",)
_EXOTIC_TIMES = ("10:00:00.", "10:00.5", "10.5")
_EXOTIC_OFFSETS = (" Z", "+01:00:30", "+01:60")


def test_timestamp_pattern_agrees_with_the_decoder(exported: dict[str, dict[str, Any]]) -> None:
    """createdAt over a grid of dates, separators, times and offsets: what the pattern accepts
    decodes, and outside fromisoformat's exotic forms the two give the same verdict."""
    topic = validator(exported["proctoring/STARTED.schema.json"])  # one branch: 13 times faster
    decoder = proctoring_decoder
    dates = [
        "2024-02-29",
        "2023-02-29",
        "2100-02-29",
        "2000-02-29",
        "2024-04-31",
        "2024-13-01",
        "0000-01-01",
        "0001-01-01",
        "2024-1-01",
        "20240101",
        "20230229",
        "2024-0101",
    ]
    separators = ["T", "t", " ", *_EXOTIC_SEPARATORS]
    times = [
        "10:00:00",
        "23:59:59",
        "24:00:00",
        "10:60:00",
        "10:00:60",
        "10:00",
        "10",
        "1000",
        "100000.5",
        "10:00:00.123456789",
        "10:00:00,5",
        "10:0000",
        "1:00",
        *_EXOTIC_TIMES,
    ]
    offsets = ["", "Z", "z", "+01:00", "-0130", "+01", "+24:00", "-00:00", "UTC", "+1"]
    offsets += _EXOTIC_OFFSETS
    disagreements = []
    for date, sep, time, offset in itertools.product(dates, separators, times, offsets):
        stamp = f"{date}{sep}{time}{offset}"
        record = {**_STARTED, "createdAt": stamp}
        by_decoder = not isinstance(decoder.decode(encode(record)), DecodeFailure)
        by_schema = topic.is_valid(record)
        exotic = sep in _EXOTIC_SEPARATORS or time in _EXOTIC_TIMES or offset in _EXOTIC_OFFSETS
        if (by_schema and not by_decoder) or (by_decoder != by_schema and not exotic):
            disagreements.append((stamp, by_decoder))
    assert not disagreements


@pytest.mark.parametrize(
    "stamp", ["2025-09-21", "2025-W38-7T12:05Z", "2025-09-21_12:05", "2025-09-21T12:05+02:00:30"]
)
def test_schema_is_stricter_than_the_decoder_on_exotic_timestamps(
    exported: dict[str, dict[str, Any]], stamp: str
) -> None:
    """fromisoformat reads these, so the worker does; the schema asks for plain forms."""
    record = {**_STARTED, "createdAt": stamp}
    assert not isinstance(proctoring_decoder.decode(encode(record)), DecodeFailure)
    assert not validator(exported[PROCTORING]).is_valid(record)


@pytest.mark.parametrize("text", [" 99.99", "99.99\n", "1_000", "1e3", "\uff11", "+.5"])
def test_schema_is_stricter_than_the_decoder_on_sloppy_decimal_strings(
    topic_validators: dict[str, tuple[Draft202012Validator, EventDecoder]], text: str
) -> None:
    """Python's Decimal() tolerates these; the schema asks producers for plain decimals."""
    topic, decoder = topic_validators["interview"]
    value = edited(_APPLICANT, _set("data.resume_score", text))
    assert not isinstance(decoder.decode(value), DecodeFailure)
    assert not topic.is_valid(parse(value))


def test_rejections_do_not_depend_on_format_checking(exported: dict[str, dict[str, Any]]) -> None:
    """In draft 2020-12 `format` is an annotation unless a validator opts in: patterns are not."""
    plain = validator(exported[PROCTORING], formats=False)
    assert not plain.is_valid({**_STARTED, "createdAt": "yesterday"})
    report = validator(exported[INTERVIEW], formats=False)
    bad_date = json.loads(edited(_REPORT, _set("data.report_date", "01/02/2024")))
    assert not report.is_valid(bad_date)
