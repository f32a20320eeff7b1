"""Deterministic synthetic workloads: the records the benchmark preloads into Kafka.

Everything is generated from a seed, so a baseline subprocess (the COPY ceiling) can rebuild
exactly the rows the worker was given without shipping them between processes.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

UTC = dt.UTC
_BASE = dt.datetime(2025, 9, 1, 8, 0, tzinfo=UTC)
_encode = msgspec.json.encode

# The flags a proctor counts, with realistic relative frequencies, plus the snapshot that
# every session sends periodically. STARTED and END_PROCTORING bracket each session.
_FLAG_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("TAB_NOT_FOCUS", 0.27),
    ("SOUND_DETECTED", 0.22),
    ("FACE_ABSENCE", 0.18),
    ("EXIT_FULLSCREEN", 0.13),
    ("MULTIPLE_FACE", 0.08),
    ("PERIODIC_SNAPSHOT", 0.12),
)
_FLAG_TYPES = tuple(t for t, _ in _FLAG_WEIGHTS)
_FLAG_CUM = tuple(
    sum(w for _, w in _FLAG_WEIGHTS[: i + 1]) / sum(w for _, w in _FLAG_WEIGHTS)
    for i in range(len(_FLAG_WEIGHTS))
)
_MEDIA = {
    "FACE_ABSENCE": ("face", "jpg"),
    "MULTIPLE_FACE": ("faces", "jpg"),
    "SOUND_DETECTED": ("sound", "webm"),
    "PERIODIC_SNAPSHOT": ("snap", "jpg"),
}
_DESCRIPTIONS = {
    "STARTED": ("Exam started",),
    "END_PROCTORING": ("Exam submitted", "Time is up"),
    "TAB_NOT_FOCUS": ("Candidate switched to another tab", "Window lost focus"),
    "SOUND_DETECTED": ("Voice detected", "Background noise detected", "Speech detected"),
    "FACE_ABSENCE": ("No face detected for 10 seconds", "No face detected for 5 seconds"),
    "EXIT_FULLSCREEN": ("Candidate exited fullscreen",),
    "MULTIPLE_FACE": ("2 faces detected", "3 faces detected"),
    "PERIODIC_SNAPSHOT": ("Periodic webcam snapshot",),
}


def uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def iso_z(ts: dt.datetime) -> str:
    """RFC 3339 with microseconds and `Z`, as a browser's `toISOString()` (plus µs)."""
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def micro1_time(ts: dt.datetime) -> str:
    """The micro1 seed's timestamp format: `2024-01-01 10:00:00`, UTC."""
    return ts.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class Record:
    topic: str  # "proctoring" or "interview" (logical; mapped to real names by the caller)
    key: bytes
    value: bytes
    at: dt.datetime  # event time, used only to order the stream


def proctoring_event(
    rng: random.Random,
    exam_id: str,
    candidate_id: str,
    event_type: str,
    created_at: dt.datetime,
    seq: int,
) -> bytes:
    body: dict[str, object] = {
        "examId": exam_id,
        "candidateId": candidate_id,
        "type": event_type,
        "description": rng.choice(_DESCRIPTIONS[event_type]),
        "createdAt": iso_z(created_at),
    }
    media = _MEDIA.get(event_type)
    if media is not None:
        body["mediaUrl"] = (
            f"https://media.proctorme.example/{exam_id}/{candidate_id}/{media[0]}-{seq:05d}.{media[1]}"
        )
    return _encode(body)


def _flag(rng: random.Random) -> str:
    x = rng.random()
    for t, c in zip(_FLAG_TYPES, _FLAG_CUM, strict=True):
        if x < c:
            return t
    return _FLAG_TYPES[-1]


def _session(
    rng: random.Random, exam_id: str, candidate_id: str, start: dt.datetime, n: int
) -> Iterator[Record]:
    """One exam session: STARTED, n-2 flags/snapshots, END_PROCTORING; strictly increasing
    `createdAt` (µs precision), so every (exam, candidate, type, createdAt) is distinct."""
    key = f"{exam_id}:{candidate_id}".encode()
    t = start
    for i in range(n):
        if i == 0:
            kind = "STARTED"
        elif i == n - 1 and n > 1:
            kind = "END_PROCTORING"
        else:
            kind = _flag(rng)
        yield Record("proctoring", key, proctoring_event(rng, exam_id, candidate_id, kind, t, i), t)
        t += dt.timedelta(seconds=rng.uniform(2.0, 40.0), microseconds=rng.randrange(1, 1000))


@dataclass(frozen=True, slots=True)
class ProctoringSpec:
    events: int
    candidates: int
    exams: int
    seed: int = 20250921


def proctoring_spec(scale: float) -> ProctoringSpec:
    return ProctoringSpec(
        events=max(100, round(200_000 * scale)),
        candidates=max(20, round(1_000 * scale)),
        exams=max(5, round(50 * scale)),
    )


def proctoring_workload(spec: ProctoringSpec) -> list[Record]:
    """`spec.events` proctoring events of `spec.candidates` sessions in `spec.exams` exams, in
    event-time order (exams start 30 minutes apart, so a few run at once, as in real life)."""
    rng = random.Random(spec.seed)
    exams = [uuid4(rng) for _ in range(spec.exams)]
    per, extra = divmod(spec.events, spec.candidates)
    records: list[Record] = []
    for c in range(spec.candidates):
        exam_index = c % spec.exams
        start = _BASE + dt.timedelta(
            minutes=30 * exam_index + rng.uniform(0, 10), microseconds=rng.randrange(1_000_000)
        )
        n = per + (1 if c < extra else 0)
        records.extend(_session(rng, exams[exam_index], uuid4(rng), start, n))
    records.sort(key=lambda r: r.at)
    return records


# -- the mixed (micro1 interview + proctoring) workload ---------------------------------------

_SKILLS = (
    "Python",
    "React.js",
    "PostgreSQL",
    "System Design",
    "FastAPI",
    "Kubernetes",
    "TypeScript",
    "Testing",
    "AWS",
    "Kafka",
)
_RATINGS = ("Junior", "Mid", "Senior", "Expert")
_INTERVIEWER_LINES = (
    "Tell me about you.",
    "How to design it?",
    "Trade-offs?",
    "How do you test?",
    "An example?",
    "How does it scale?",
    "What went wrong?",
)
_CANDIDATE_LINES = (
    "Built a Python API.",
    "Shard by customer.",
    "Latency vs safety.",
    "Unit and e2e tests.",
    "Kafka and Postgres.",
    "Cache, then replicas.",
    "A migration locked.",
)
_QUESTIONS = (
    ("Willing to relocate?", "Yes, within Europe."),
    ("Notice period?", "Four weeks."),
    ("Expected salary?", "Within the band."),
    ("Can you work EU hours?", "Yes."),
    ("Do you need a visa?", "No."),
)
_VIOLATIONS = (
    ("tab_switch", "3 tab switches detected."),
    ("face_absence", "Face not visible for 40s."),
    ("multiple_faces", "Two faces seen once."),
    ("background_voice", "Another voice detected."),
)
_JOBS = (
    "Backend Developer",
    "Full Stack Engineer",
    "Data Engineer",
    "Frontend Developer",
    "SRE",
    "ML Engineer",
)


def _report(rng: random.Random, c: dict[str, str], at: dt.datetime) -> bytes:
    turns = []
    ts = 0
    for i in range(50):
        ts += rng.randrange(5, 40)
        lines = _INTERVIEWER_LINES if i % 2 == 0 else _CANDIDATE_LINES
        role = "interviewer" if i % 2 == 0 else "candidate"
        turns.append({"timestamp": ts, "role": role, "content": rng.choice(lines)})
    skills = rng.sample(_SKILLS, 8)
    technical = [
        {
            "skill": s,
            "ai_evaluation": {
                "feedback": "Solid.",
                "rating": rng.choice(_RATINGS),
            },
            "timestamp": rng.randrange(60, 1800),
        }
        for s in skills
    ]
    soft = [
        {
            "skill": "Overall",
            "ai_evaluation": {
                "feedback": "Clear, organized answers with relevant examples.",
                "rating": rng.choice(("B1", "B2", "C1")),
                "sub_score": {
                    "vocabulary": "Good vocabulary.",
                    "grammar": "Good grammar.",
                    "critical_thinking": "Good critical thinking.",
                },
            },
        }
    ]
    questions = [
        {
            "question_text": q,
            "answer_text": a,
            "ai_evaluation": {"feedback": "Fine.", "rating": "Good Answer"},
        }
        for q, a in _QUESTIONS
    ]
    violations = [
        {"type": t, "value": str(rng.randrange(1, 5)), "description": d}
        for t, d in rng.sample(_VIOLATIONS, rng.randint(1, 3))
    ]
    report_id = c["report_id"]
    data = {
        "report_id": report_id,
        "interview_id": c["interview_id"],
        "session_id": c["interview_id"],
        "interview_name": f"{c['job_name']} Interview",
        "candidate_id": c["candidate_id"],
        "job_applicant_id": c["application_id"],
        "ats_job_application_id": c["ats_application_id"],
        "ats_job_id": c["ats_job_id"],
        "candidate_name": c["name"],
        "candidate_email_id": c["email"],
        "report_date": at.date().isoformat(),
        "report_url": f"https://micro1.ai/report/{report_id}.pdf",
        "interview_recording_url": f"https://micro1.ai/interview/{report_id}.m3u8",
        "proctoring_score": rng.randrange(40, 100),
        "ai_match_score": rng.randrange(30, 100),
        "proctoring_violations": violations,
        "interview_transcript": turns,
        "technical_skills_evaluation": technical,
        "soft_skills_evaluation": soft,
        "coding_skills_evaluation": {
            "feedback": "Correct solution, good complexity.",
            "rating": rng.choice(_RATINGS),
        },
        "custom_exercise_evaluation": {
            "feedback": "Solved the exercise effectively.",
            "rating": rng.choice(_RATINGS),
        },
        "custom_question_evaluation": questions,
        "date_created": micro1_time(at),
        "date_modified": micro1_time(at),
        "status": "active",
    }
    return _encode({"event": "interview_report.created", "data": data})


def _applicant(
    event: str, c: dict[str, str], stage: str, score: str, modified: dt.datetime
) -> bytes:
    data = {
        "resume_score": score,
        "ats_job_application_id": c["ats_application_id"],
        "ats_job_id": c["ats_job_id"],
        "micro1_job_id": c["job_id"],
        "email_id": c["email"],
        "micro1_job_application_id": c["application_id"],
        "candidate_id": c["candidate_id"],
        "candidate_name": c["name"],
        "job_name": c["job_name"],
        "stage": stage,
        "date_created": c["created"],
        "date_modified": micro1_time(modified),
        "resume_url": f"https://cv.example.com/{c['candidate_id']}.pdf",
    }
    return _encode({"event": event, "data": data})


def _candidate_timeline(
    rng: random.Random, i: int, jobs: list[tuple[str, str, str]], exams: list[str]
) -> list[Record]:
    job_id, ats_job_id, job_name = rng.choice(jobs)
    cid = uuid4(rng)
    t0 = _BASE + dt.timedelta(seconds=rng.uniform(0, 7 * 86400))
    c = {
        "candidate_id": cid,
        "name": f"Candidate {i}",
        "email": f"candidate{i}@mail.example",
        "job_id": job_id,
        "ats_job_id": ats_job_id,
        "job_name": job_name,
        "application_id": uuid4(rng),
        "ats_application_id": f"APP{i:07d}",
        "interview_id": uuid4(rng),
        "report_id": f"r{rng.getrandbits(48):012x}",
        "created": micro1_time(t0),
    }
    key = cid.encode()
    out: list[Record] = []

    def iv(at: dt.datetime, value: bytes) -> None:
        out.append(Record("interview", key, value, at))

    score = f"{rng.uniform(40, 99.99):.2f}"
    iv(t0, _applicant("applicant.created", c, "Applied", score, t0))
    invited = t0 + dt.timedelta(hours=rng.uniform(1, 24))
    iv(invited, _applicant("applicant.invited", c, "Invited", score, invited))
    if rng.random() < 0.5:
        upd = invited + dt.timedelta(minutes=rng.uniform(10, 120))
        iv(
            upd,
            _applicant("applicant.updated", c, "Screening", f"{rng.uniform(40, 99.99):.2f}", upd),
        )
    started = invited + dt.timedelta(hours=rng.uniform(3, 48))
    iv(
        started,
        _encode(
            {
                "event": "interview.started",
                "data": {
                    "candidate_id": cid,
                    "candidate_name": c["name"],
                    "candidate_email_id": c["email"],
                    "job_id": job_id,
                    "job_name": job_name,
                    "ats_job_id": ats_job_id,
                    "ats_job_application_id": c["ats_application_id"],
                    "interview_id": c["interview_id"],
                    "interview_name": f"{job_name} Interview",
                    "date_started": micro1_time(started),
                },
            }
        ),
    )
    # The proctoring widget runs during the interview: ~10 events.
    exam = rng.choice(exams)
    for r in _session(rng, exam, cid, started, rng.randint(7, 13)):
        out.append(r)
    report_at = started + dt.timedelta(minutes=rng.uniform(45, 60))
    iv(report_at, _report(rng, c, report_at))
    rid = c["report_id"]
    rec = report_at + dt.timedelta(minutes=rng.uniform(1, 10))
    iv(
        rec,
        _encode(
            {
                "event": "interview_recording.completed",
                "data": {
                    "report_id": rid,
                    "candidate_id": cid,
                    "interview_recording_url": f"https://cdn.micro1.example/{rid}.m3u8",
                    "interview_recording_player_url": f"https://zara.micro1.ai/v/{rid}",
                },
            }
        ),
    )
    web = report_at + dt.timedelta(minutes=rng.uniform(1, 10))
    iv(
        web,
        _encode(
            {
                "event": "interview_webcam_recording.completed",
                "data": {
                    "report_id": rid,
                    "candidate_id": cid,
                    "interview_webcam_recording_url": f"https://cdn.micro1.example/{rid}-cam.m3u8",
                    "interview_webcam_recording_player_url": f"https://zara.micro1.ai/c/{rid}",
                },
            }
        ),
    )
    ps = report_at + dt.timedelta(minutes=rng.uniform(5, 15))
    iv(
        ps,
        _encode(
            {
                "event": "proctoring_score.completed",
                "data": {
                    "report_id": rid,
                    "candidate_id": cid,
                    "proctoring_score": rng.randrange(40, 100),
                },
            }
        ),
    )
    done = ps + dt.timedelta(minutes=rng.uniform(1, 30))
    iv(done, _applicant("applicant.completed", c, "Interviewed", score, done))
    return out


@dataclass(frozen=True, slots=True)
class MixedSpec:
    events: int
    seed: int = 20240101


def mixed_spec(scale: float) -> MixedSpec:
    return MixedSpec(events=max(100, round(50_000 * scale)))


def mixed_workload(spec: MixedSpec) -> list[Record]:
    """Candidates' whole journeys (applicant.*, interview.*, report, recordings, score, and
    the proctoring events of their interview), merged in event-time order, cut at
    `spec.events` records."""
    rng = random.Random(spec.seed)
    jobs = [(uuid4(rng), f"JOB{j:04d}", rng.choice(_JOBS)) for j in range(40)]
    exams = [uuid4(rng) for _ in range(40)]
    records: list[Record] = []
    i = 0
    # ~19 records per candidate; the cut drops at most one journey's tail.
    while len(records) < spec.events:
        records.extend(_candidate_timeline(rng, i, jobs, exams))
        i += 1
    records.sort(key=lambda r: r.at)
    return records[: spec.events]
