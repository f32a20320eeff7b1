"""micro1 AI-recruiter events (seed `003_ef4b1b5b648529a0.txt`): `{"event": name, "data": {...}}`.

The envelope's `event` is the msgspec tag, so one decode picks the struct. Identity keys are
required; everything else may be absent or null, as webhook producers routinely omit fields.
Transcript and evaluation blocks stay raw JSON: they are stored as jsonb exactly as sent,
including fields a newer producer adds, and are never re-encoded on the hot path.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from schemas.common import (
    DecimalValue,
    Id,
    Score,
    Text,
    Timestamp,
    Url,
    check_decimal,
    check_score,
    tag_of,
    utc_or_none,
)

OptId = Id | None
OptText = Text | None
OptUrl = Url | None


def _raw_kind(raw: msgspec.Raw, field: str, opener: bytes) -> None:
    """Demand that a raw JSON block is `null`, absent, or starts with `opener` (`[` or `{`),
    and is UTF-8: msgspec does not check the bytes of a block it keeps raw."""
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"`{field}` is not valid UTF-8 ({exc.reason})") from None
    head = bytes(memoryview(raw)[:64]).lstrip()[:1]
    if head in (b"", b"n") or head == opener:
        return
    kind = "an array" if opener == b"[" else "an object"
    raise ValueError(f"`{field}` must be {kind} or null")


def raw_or_none(raw: msgspec.Raw) -> bytes | None:
    """The block's JSON text for a jsonb column, or None for absent/null."""
    if not len(raw):
        return None
    body = bytes(raw)
    return None if body.strip() == b"null" else body


class InterviewStartedData(msgspec.Struct, kw_only=True, gc=False):
    interview_id: Id
    candidate_id: Id
    candidate_name: OptText = None
    candidate_email_id: OptText = None
    job_id: OptId = None
    job_name: OptText = None
    ats_job_id: OptId = None
    ats_job_application_id: OptId = None
    interview_name: OptText = None
    date_started: Timestamp | None = None

    def __post_init__(self) -> None:
        self.date_started = utc_or_none(self.date_started, "date_started")


def _raw_scalar(raw: msgspec.Raw, field: str) -> None:
    """Demand that a raw JSON value is absent, `null`, a string or a number."""
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"`{field}` is not valid UTF-8 ({exc.reason})") from None
    head = bytes(memoryview(raw)[:1])
    if head not in (b"", b"n", b'"', b"-") and not head.isdigit():
        raise ValueError(f"`{field}` must be a string, a number or null")


class ProctoringViolation(msgspec.Struct, kw_only=True, gc=False):
    type: Id
    # The seed sends "3"; a number is stored as the text the producer wrote (`1.10`, not
    # `1.1`), and only the raw JSON still has that text.
    value: msgspec.Raw = msgspec.Raw()
    description: OptText = None

    def __post_init__(self) -> None:
        _raw_scalar(self.value, "value")

    @property
    def value_text(self) -> str | None:
        body = bytes(self.value)
        if body in (b"", b"null"):
            return None
        if body[:1] == b'"':
            return msgspec.json.decode(body, type=str)
        return body.decode("ascii")


class InterviewReportData(msgspec.Struct, kw_only=True, gc=False):
    report_id: Id
    interview_id: Id
    candidate_id: Id
    session_id: OptId = None
    interview_name: OptText = None
    job_applicant_id: OptId = None
    ats_job_application_id: OptId = None
    ats_job_id: OptId = None
    candidate_name: OptText = None
    candidate_email_id: OptText = None
    report_date: dt.date | None = None
    report_url: OptUrl = None
    interview_recording_url: OptUrl = None
    proctoring_score: Score | None = None
    ai_match_score: Score | None = None
    # No bound on the count either: the contract bounds only identity keys.
    proctoring_violations: list[ProctoringViolation] | None = None
    interview_transcript: msgspec.Raw = msgspec.Raw()
    technical_skills_evaluation: msgspec.Raw = msgspec.Raw()
    soft_skills_evaluation: msgspec.Raw = msgspec.Raw()
    coding_skills_evaluation: msgspec.Raw = msgspec.Raw()
    custom_exercise_evaluation: msgspec.Raw = msgspec.Raw()
    custom_question_evaluation: msgspec.Raw = msgspec.Raw()
    status: OptText = None
    date_created: Timestamp | None = None
    date_modified: Timestamp | None = None

    def __post_init__(self) -> None:
        check_score(self.proctoring_score, "proctoring_score")
        check_score(self.ai_match_score, "ai_match_score")
        self.date_created = utc_or_none(self.date_created, "date_created")
        self.date_modified = utc_or_none(self.date_modified, "date_modified")
        _raw_kind(self.interview_transcript, "interview_transcript", b"[")
        _raw_kind(self.technical_skills_evaluation, "technical_skills_evaluation", b"[")
        _raw_kind(self.soft_skills_evaluation, "soft_skills_evaluation", b"[")
        _raw_kind(self.custom_question_evaluation, "custom_question_evaluation", b"[")
        _raw_kind(self.coding_skills_evaluation, "coding_skills_evaluation", b"{")
        _raw_kind(self.custom_exercise_evaluation, "custom_exercise_evaluation", b"{")


class InterviewRecordingData(msgspec.Struct, kw_only=True, gc=False):
    report_id: Id
    candidate_id: Id
    interview_recording_url: OptUrl = None
    interview_recording_player_url: OptUrl = None


class InterviewWebcamRecordingData(msgspec.Struct, kw_only=True, gc=False):
    report_id: Id
    candidate_id: Id
    interview_webcam_recording_url: OptUrl = None
    interview_webcam_recording_player_url: OptUrl = None


class ProctoringScoreData(msgspec.Struct, kw_only=True, gc=False):
    report_id: Id
    candidate_id: Id
    proctoring_score: Score | None = None

    def __post_init__(self) -> None:
        check_score(self.proctoring_score, "proctoring_score")


class ApplicantData(msgspec.Struct, kw_only=True, gc=False):
    micro1_job_application_id: Id
    candidate_id: Id
    resume_score: DecimalValue | None = None
    ats_job_application_id: OptId = None
    ats_job_id: OptId = None
    micro1_job_id: OptId = None
    email_id: OptText = None
    candidate_name: OptText = None
    job_name: OptText = None
    stage: OptText = None
    date_created: Timestamp | None = None
    date_modified: Timestamp | None = None
    resume_url: OptUrl = None

    def __post_init__(self) -> None:
        check_decimal(self.resume_score, "resume_score")
        self.date_created = utc_or_none(self.date_created, "date_created")
        self.date_modified = utc_or_none(self.date_modified, "date_modified")


class InterviewEvent(msgspec.Struct, tag_field="event", gc=False):
    """The `{"event", "data"}` envelope; subclasses fix the tag and the data struct."""


class InterviewStarted(InterviewEvent, tag="interview.started"):
    data: InterviewStartedData


class InterviewReportCreated(InterviewEvent, tag="interview_report.created"):
    data: InterviewReportData


class InterviewRecordingCompleted(InterviewEvent, tag="interview_recording.completed"):
    data: InterviewRecordingData


class InterviewWebcamRecordingCompleted(InterviewEvent, tag="interview_webcam_recording.completed"):
    data: InterviewWebcamRecordingData


class ProctoringScoreCompleted(InterviewEvent, tag="proctoring_score.completed"):
    data: ProctoringScoreData


class ApplicantEvent(InterviewEvent):
    data: ApplicantData

    @property
    def status(self) -> str:
        """`created`, `invited`, `updated` or `completed`: the part of the tag after the dot."""
        return tag_of(self).rpartition(".")[2]


class ApplicantCreated(ApplicantEvent, tag="applicant.created"):
    pass


class ApplicantInvited(ApplicantEvent, tag="applicant.invited"):
    pass


class ApplicantUpdated(ApplicantEvent, tag="applicant.updated"):
    pass


class ApplicantCompleted(ApplicantEvent, tag="applicant.completed"):
    pass


InterviewUnion = (
    InterviewStarted
    | InterviewReportCreated
    | InterviewRecordingCompleted
    | InterviewWebcamRecordingCompleted
    | ProctoringScoreCompleted
    | ApplicantCreated
    | ApplicantInvited
    | ApplicantUpdated
    | ApplicantCompleted
)

INTERVIEW_STRUCTS: tuple[type[InterviewEvent], ...] = InterviewUnion.__args__  # type: ignore[attr-defined]
EVENT_NAMES: tuple[str, ...] = tuple(tag_of(cls) for cls in INTERVIEW_STRUCTS)
