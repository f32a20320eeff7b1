"""Shared machinery of the chaos campaigns: sizes, a contract-respecting event stream, a
publisher that keeps delivery reports, the reference database, and the final checks.

The stream generator follows the ordering freedom of docs/contract.md §5 exactly as
tests/test_properties.py spells it out:

- proctoring events of different identity arrive in any order; one identity (exam, candidate,
  type, createdAt instant) always carries one payload;
- the four report events of one report_id arrive in any order, except that two events of the
  same type for the same report keep their relative order;
- applicant events of one application keep their order (a stale event changes nothing, so
  their order decides what is stored);
- interview.started events of one interview keep their order;
- values the handlers merge last-writer-wins across event types (a candidate's name and email,
  a job's name and ATS id, what a report says about its interview) are fixed per ID.

Every ordered group shares a Kafka key (the candidate for interview events, `exam:candidate`
for proctoring events), hence a partition, so the broker keeps the order the generator chose;
the worker may interleave partitions freely. The reference applies the distinct valid events
once, in generation order, through `worker.router.apply_batch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas.proctoring import EVENT_TYPES, FLAG_TYPES
from support import infra
from support.e2e import (
    WorkerProcess,
    committed_offsets,
    settings_for,
    snapshot_diff,
    table_snapshot,
)
from support.storage import NOTATIONS, notate
from worker.config import Settings
from worker.decode import EventDecoder, interview_decoder, proctoring_decoder
from worker.dlq import DecodeFailure
from worker.handlers.base import Item
from worker.migrate import migrate
from worker.retry import describe, is_record_error
from worker.router import apply_batch

# -- sizes ------------------------------------------------------------------------------------

SCALE = (os.environ.get("CHAOS_SCALE") or "ci").strip().lower()
if SCALE not in ("ci", "full"):
    raise ValueError(f"CHAOS_SCALE must be 'ci' or 'full', not {SCALE!r}")

SEED = int(os.environ.get("CHAOS_SEED", "20251122"))


@dataclass(frozen=True)
class Sizes:
    crash_events: int  # campaign 1: records produced, duplicates and malformed included
    crash_kills: int
    storm_events: int  # campaign 2
    storm_seconds: float
    db_events: int  # campaign 3
    outage_s: float  # campaign 4: how long the broker stays down
    fuzz_records: int  # campaign 5
    poison_records: int  # campaign 6: consecutive malformed records ...
    poison_valid: int  # ... followed by this many valid ones
    slow_events: int  # campaign 7: the storm of campaign 2 with every commit slowed down
    slow_seconds: float
    test_timeout_s: float  # per test (pytest-timeout)


SIZES = {
    "ci": Sizes(
        crash_events=5_000,
        crash_kills=4,
        storm_events=4_000,
        storm_seconds=25.0,
        db_events=3_000,
        outage_s=12.0,
        fuzz_records=2_000,
        poison_records=5_000,
        poison_valid=100,
        slow_events=2_000,
        slow_seconds=15.0,
        test_timeout_s=240.0,
    ),
    "full": Sizes(
        crash_events=50_000,
        crash_kills=20,
        storm_events=20_000,
        storm_seconds=120.0,
        db_events=20_000,
        outage_s=20.0,
        fuzz_records=10_000,
        poison_records=20_000,
        poison_valid=100,
        slow_events=12_000,
        slow_seconds=120.0,
        test_timeout_s=1_800.0,
    ),
}[SCALE]

# A SIGKILLed member keeps its partitions until its session times out: keep that short. The
# embedded broker accepts less than real Kafka's 6 s minimum.
FAST_GROUP_ENV: Mapping[str, str] = {
    "KAFKA_SESSION_TIMEOUT_MS": "3000",
    "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
}

# -- figures ----------------------------------------------------------------------------------

FIGURES: dict[str, dict[str, Any]] = {}


def report(campaign: str, **figures: Any) -> None:
    """Print figures now (pytest -s) and keep them for the end-of-session summary."""
    FIGURES.setdefault(campaign, {}).update(figures)
    text = ", ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\n[chaos {SCALE}] {campaign}: {text}", flush=True)


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self) -> float:
        return round(time.monotonic() - self.started, 1)


# -- the stream -------------------------------------------------------------------------------

PROCTORING = "proctoring"
INTERVIEW = "interview"
DECODERS: Mapping[str, EventDecoder] = {
    PROCTORING: proctoring_decoder,
    INTERVIEW: interview_decoder,
}

Coord = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True)
class Planned:
    """One record to publish. `family` is the topic it goes to (PROCTORING or INTERVIEW)."""

    family: str
    key: bytes | None
    value: bytes | None
    valid: bool
    reason: str | None = None  # for a malformed record: the dead-letter reason the decoder gives
    kind: str = ""  # what the generator did (event type, or the kind of damage)


@dataclass
class Stream:
    events: list[Planned]  # distinct valid events in generation order: the reference input
    records: list[Planned]  # delivery order, with redeliveries and malformed records
    duplicates: int = 0
    malformed: int = 0
    malformed_kinds: Counter[str] = field(default_factory=Counter)

    @property
    def valid_records(self) -> int:
        return sum(r.valid for r in self.records)


MEDIA_TYPES = frozenset({"FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED", "PERIODIC_SNAPSHOT"})
TYPE_WEIGHTS = [3 if t in FLAG_TYPES else 1 for t in EVENT_TYPES]
P_BASE = dt.datetime(2025, 9, 21, 8, tzinfo=dt.UTC)
I_INSTANTS = tuple(
    dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC) + dt.timedelta(hours=h) for h in (0, 1, 5, 26)
)
CHECK_DATA = (
    [{"name": "webcam", "status": "success", "finished": True}],
    [
        {"name": "webcam", "status": "success", "finished": True},
        {"name": "microphone", "status": "failed", "finished": True},
    ],
    [{"name": "internetSpeed", "status": "default", "finished": False}],
    [],
)
APPLICANT_EVENTS = (
    "applicant.created",
    "applicant.invited",
    "applicant.updated",
    "applicant.completed",
)
REPORT_PARTS = (
    "interview_recording.completed",
    "interview_webcam_recording.completed",
    "proctoring_score.completed",
)


@dataclass(frozen=True)
class _Gen:
    """A generated valid event and the group whose members must keep their order."""

    planned: Planned
    order_key: Hashable | None


class World:
    """IDs and the values that are fixed per ID, sized for `events` records."""

    def __init__(self, rng: random.Random, events: int, tag: str = "") -> None:
        self.rng = rng
        self.tag = tag
        self.sessions = max(20, events // 100)
        self.session_next: list[int] = [0] * self.sessions
        n_int = max(10, events // 3)
        self.candidates = [f"c{tag}-{i:04d}" for i in range(max(12, n_int // 12))]
        self.jobs = [f"j{tag}-{i}" for i in range(12)]
        self.interviews = [f"i{tag}-{i:04d}" for i in range(max(6, n_int // 25))]
        self.interview_candidate = {i: rng.choice(self.candidates) for i in self.interviews}
        self.applications = [f"a{tag}-{i:04d}" for i in range(max(6, n_int // 20))]
        self.application_candidate = {a: rng.choice(self.candidates) for a in self.applications}

    # fixed values
    def name(self, c: str) -> str:
        return f"Candidate {c}"

    def email(self, c: str) -> str:
        return f"{c}@example.com"

    def job_name(self, j: str) -> str:
        return f"Job {j}"

    def job_ats(self, j: str) -> str:
        return f"ATS-{j}"

    def opt(self, value: Any, p: float = 0.5) -> Any:
        return value if self.rng.random() < p else None

    def when(self, moment: dt.datetime) -> str:
        return notate(moment, self.rng.choice(NOTATIONS))

    def envelope(self, event: str, data: dict[str, Any]) -> bytes:
        """A None field is either sent as null or left out."""
        kept = {k: v for k, v in data.items() if v is not None or self.rng.random() < 0.5}
        return json.dumps({"event": event, "data": kept}).encode()

    # proctoring
    def proctoring(self) -> _Gen:
        rng = self.rng
        s = rng.randrange(self.sessions)
        n = self.session_next[s]
        self.session_next[s] += 1
        exam, candidate = f"exam{self.tag}-{s % 37}", f"pc{self.tag}-{s:04d}"
        kind = rng.choices(EVENT_TYPES, TYPE_WEIGHTS)[0]
        created = P_BASE + dt.timedelta(minutes=s, seconds=7 * n)
        body: dict[str, Any] = {
            "examId": exam,
            "candidateId": candidate,
            "type": kind,
            "createdAt": self.when(created),
        }
        if n % 4:
            body["description"] = f"{kind.lower()} #{n} of {candidate}"
        if kind in MEDIA_TYPES:
            body["mediaUrl"] = f"https://media.example.com/{exam}/{candidate}/{n}.jpg"
        if kind == "SYSTEM_CHECK_COMPLETED":
            body["systemCheck"] = {
                "success": n % 2 == 0,
                "timestamp": self.when(created - dt.timedelta(seconds=30)),
                "data": CHECK_DATA[n % len(CHECK_DATA)],
            }
        key = f"{exam}:{candidate}".encode()
        return _Gen(Planned(PROCTORING, key, json.dumps(body).encode(), True, kind=kind), None)

    # interview family
    def interview(self) -> _Gen:
        rng = self.rng
        which = rng.choices(("started", "report", "part", "applicant"), (1, 2, 3, 3))[0]
        if which == "started":
            return self._started()
        if which == "report":
            return self._report()
        if which == "part":
            return self._part()
        return self._applicant()

    def _started(self) -> _Gen:
        rng = self.rng
        interview = rng.choice(self.interviews)
        k = self.interviews.index(interview)
        candidate = self.interview_candidate[interview]
        job = rng.choice([None, *self.jobs])
        data = {
            "interview_id": interview,
            "candidate_id": candidate,
            "candidate_name": self.opt(self.name(candidate)),
            "candidate_email_id": self.opt(self.email(candidate)),
            "job_id": job,
            "job_name": self.opt(self.job_name(job)) if job else None,
            "ats_job_id": self.opt(self.job_ats(job)) if job else rng.choice((None, "ATS-X")),
            "ats_job_application_id": rng.choice((None, f"AJA-{k}", "AJA-9")),
            "interview_name": rng.choice((None, f"Interview {k}", "Round 2")),
            "date_started": self.opt(self.when(rng.choice(I_INSTANTS))),
        }
        return self._interview_gen("interview.started", data, candidate, ("started", interview))

    def _report(self) -> _Gen:
        rng = self.rng
        k = rng.randrange(len(self.interviews))
        interview = self.interviews[k]
        report = f"r{self.tag}-{k:04d}"
        candidate = self.interview_candidate[interview]
        violations = rng.choice(
            (
                None,
                [],
                [{"type": "tab_switch", "value": "3", "description": "tab switched 3 times"}],
                [
                    {"type": "face_absence", "value": rng.randint(0, 9)},
                    {"type": "multiple_faces", "value": None, "description": "2 faces"},
                ],
            )
        )

        def block(kind: str) -> Any:
            choice = rng.randint(0, 3)
            if choice == 0:
                return None
            if kind == "array":
                return [{"timestamp": 100 * choice, "role": "interviewer", "content": f"Q{choice}"}]
            return {
                "feedback": f"feedback {choice}",
                "rating": ("Junior", "Mid", "Senior")[choice - 1],
            }

        data = {
            "report_id": report,
            "interview_id": interview,
            "candidate_id": candidate,
            "session_id": self.opt(f"s-{rng.randint(1, 3)}"),
            "interview_name": self.opt(f"Report interview {k}"),
            "job_applicant_id": self.opt(f"ja-{rng.randint(1, 3)}"),
            "ats_job_application_id": self.opt(f"AJA-{k}"),
            "ats_job_id": self.opt(f"ATS-R{k}"),
            "candidate_name": self.opt(self.name(candidate)),
            "candidate_email_id": self.opt(self.email(candidate)),
            "report_date": self.opt(f"2024-01-0{rng.randint(1, 3)}"),
            "report_url": self.opt(f"https://micro1.ai/report/{report}-{rng.randint(1, 2)}.pdf"),
            "interview_recording_url": self.opt(
                f"https://micro1.ai/interview/{report}-{rng.randint(1, 2)}.m3u8"
            ),
            "proctoring_score": self.opt(rng.choice((85, 70.5, 0, 100))),
            "ai_match_score": self.opt(rng.choice((85, 42.5))),
            "proctoring_violations": violations,
            "interview_transcript": block("array"),
            "technical_skills_evaluation": block("array"),
            "soft_skills_evaluation": block("array"),
            "coding_skills_evaluation": block("object"),
            "custom_exercise_evaluation": block("object"),
            "custom_question_evaluation": block("array"),
            "status": self.opt(rng.choice(("active", "archived"))),
            "date_created": self.opt("2024-01-01 09:00:00"),
            "date_modified": self.opt(self.when(rng.choice(I_INSTANTS))),
        }
        event = "interview_report.created"
        return self._interview_gen(event, data, candidate, (event, report))

    def _part(self) -> _Gen:
        rng = self.rng
        k = rng.randrange(len(self.interviews))
        report = f"r{self.tag}-{k:04d}"
        candidate = self.interview_candidate[self.interviews[k]]
        event = rng.choice(REPORT_PARTS)
        n = rng.randint(1, 3)
        data: dict[str, Any] = {"report_id": report, "candidate_id": candidate}
        if event == "interview_recording.completed":
            data["interview_recording_url"] = self.opt(f"https://rec.example/{report}-{n}.m3u8")
            data["interview_recording_player_url"] = self.opt(f"https://play.example/{report}-{n}")
        elif event == "interview_webcam_recording.completed":
            data["interview_webcam_recording_url"] = self.opt(f"https://cam.example/{report}-{n}")
            data["interview_webcam_recording_player_url"] = self.opt(
                f"https://play.example/cam/{report}-{n}"
            )
        else:
            data["proctoring_score"] = self.opt(rng.choice((85, 90.5, 12)))
        return self._interview_gen(event, data, candidate, (event, report))

    def _applicant(self) -> _Gen:
        rng = self.rng
        application = rng.choice(self.applications)
        candidate = self.application_candidate[application]
        event = rng.choice(APPLICANT_EVENTS)
        job = rng.choice([None, *self.jobs])
        modified = rng.choice((None, *I_INSTANTS))
        data = {
            "micro1_job_application_id": application,
            "candidate_id": candidate,
            "resume_score": rng.choice((None, "99.99", "12.5", 80, 42.25, "0")),
            "ats_job_application_id": self.opt(f"TEST{rng.randint(1, 3)}"),
            "ats_job_id": self.opt(self.job_ats(job)) if job else rng.choice((None, "ATS-X")),
            "micro1_job_id": job,
            "email_id": self.opt(self.email(candidate)),
            "candidate_name": self.opt(self.name(candidate)),
            "job_name": self.opt(self.job_name(job)) if job else None,
            "stage": self.opt(rng.choice(("Screening", "Interview", "Offer"))),
            "date_created": self.opt("2023-12-31 23:55:00"),
            "date_modified": None if modified is None else self.when(modified),
            "resume_url": self.opt(f"https://example.com/{candidate}.pdf"),
        }
        # An application's events share a partition (by its candidate) and keep their stream
        # order: a stale event changes nothing, so their order decides what is stored.
        order_key = ("applicant", application)
        return self._interview_gen(event, data, candidate, order_key)

    def _interview_gen(
        self, event: str, data: dict[str, Any], candidate: str, order_key: Hashable
    ) -> _Gen:
        value = self.envelope(event, data)
        return _Gen(Planned(INTERVIEW, candidate.encode(), value, True, kind=event), order_key)


def _constrained_shuffle(keys: Sequence[Hashable | None], rng: random.Random) -> list[int]:
    """A random permutation of range(len(keys)) in which the members of each non-None key
    keep their relative order."""
    perm = list(range(len(keys)))
    rng.shuffle(perm)
    slots: dict[Hashable, list[int]] = {}
    for position, index in enumerate(perm):
        if keys[index] is not None:
            slots.setdefault(keys[index], []).append(position)
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        if key is not None:
            members.setdefault(key, []).append(index)
    for key, positions in slots.items():
        for position, index in zip(positions, members[key], strict=True):
            perm[position] = index
    return perm


# Ways to break a record: (name, family or None for both, function(planned, rng) -> bytes).
def _damage_truncate(p: Planned, rng: random.Random) -> bytes:
    assert p.value
    return p.value[: rng.randint(1, len(p.value) - 2)]


def _damage_utf8(p: Planned, rng: random.Random) -> bytes:
    assert p.value
    at = p.value.index(b': "') + 3
    return p.value[:at] + rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80")) + p.value[at:]


def _edit(p: Planned, fn: Callable[[dict[str, Any]], None]) -> bytes:
    assert p.value
    doc = json.loads(p.value)
    fn(doc["data"] if p.family == INTERVIEW else doc)
    return json.dumps(doc).encode()


def _damage_missing(p: Planned, rng: random.Random) -> bytes:
    def drop(d: dict[str, Any]) -> None:
        required = (
            ["examId", "candidateId", "createdAt"]
            if p.family == PROCTORING
            else [
                k
                for k in ("report_id", "candidate_id", "interview_id", "micro1_job_application_id")
                if k in d
            ]
        )
        del d[rng.choice(required)]

    return _edit(p, drop)


def _damage_type(p: Planned, rng: random.Random) -> bytes:
    def retype(d: dict[str, Any]) -> None:
        field_ = "examId" if p.family == PROCTORING else "candidate_id"
        d[field_] = rng.choice((12345, True, ["x"], {"id": 1}, ""))

    return _edit(p, retype)


def _damage_timestamp(p: Planned, rng: random.Random) -> bytes:
    def stamp(d: dict[str, Any]) -> None:
        if p.family == PROCTORING:
            field_ = "createdAt"
        elif p.kind == "interview.started":
            field_ = "date_started"
        else:
            field_ = "date_modified"
        d[field_] = rng.choice(("yesterday", "2024-13-01T00:00:00Z", "0000-01-01T00:00:00Z", 17))

    return _edit(p, stamp)


def _damage_nul(p: Planned, rng: random.Random) -> bytes:
    def nul(d: dict[str, Any]) -> None:
        if p.family == PROCTORING:
            d["description"] = "before\x00after"
        else:
            d["candidate_id"] = d["candidate_id"] + "\x00"

    return _edit(p, nul)


def _damage_unknown(p: Planned, rng: random.Random) -> bytes:
    assert p.value
    doc = json.loads(p.value)
    if p.family == PROCTORING:
        doc["type"] = rng.choice(("TELEPORTED", "started", "FACE_PRESENT"))
    else:
        doc["event"] = rng.choice(("applicant.deleted", "interview.paused", "INTERVIEW.STARTED"))
    return json.dumps(doc).encode()


def _damage_empty(p: Planned, rng: random.Random) -> bytes:
    return rng.choice((b"", b" ", b"\n\t "))


def _damage_not_object(p: Planned, rng: random.Random) -> bytes:
    return rng.choice((b"null", b"42", b"[1, 2, 3]", b'"STARTED"', b"true"))


DAMAGE: tuple[tuple[str, Callable[[Planned, random.Random], bytes]], ...] = (
    ("truncated", _damage_truncate),
    ("invalid_utf8", _damage_utf8),
    ("missing_field", _damage_missing),
    ("wrong_type", _damage_type),
    ("bad_timestamp", _damage_timestamp),
    ("nul_in_text", _damage_nul),
    ("unknown_type", _damage_unknown),
    ("empty", _damage_empty),
    ("not_an_object", _damage_not_object),
    ("other_family", lambda p, rng: b""),  # handled in malformed()
)


def malformed(
    world: World, rng: random.Random, kind: str | None = None, family: str | None = None
) -> Planned:
    """A record the decoder must refuse, built by damaging a fresh valid event."""
    name, damage = next(d for d in DAMAGE if d[0] == kind) if kind else rng.choice(DAMAGE)
    family = family or rng.choice((PROCTORING, INTERVIEW))
    base = (world.proctoring() if family == PROCTORING else world.interview()).planned
    while name == "bad_timestamp" and base.kind in REPORT_PARTS:  # they carry no timestamp
        base = world.interview().planned
    if name == "other_family":
        other = (world.interview() if family == PROCTORING else world.proctoring()).planned
        value = other.value
    else:
        value = damage(base, rng)
    result = DECODERS[family].decode(value)
    assert isinstance(result, DecodeFailure), f"{name} damage left a valid record: {value!r}"
    return Planned(family, base.key, value, False, reason=result.reason, kind=name)


def generate_stream(
    seed: int,
    total: int,
    *,
    duplicate_share: float = 0.05,
    malformed_share: float = 0.02,
    proctoring_share: float = 0.6,
    tag: str = "",
) -> Stream:
    """About `total` records: distinct valid events, ~duplicate_share redeliveries and
    ~malformed_share malformed records, in a delivery order the contract allows."""
    rng = random.Random(seed)
    world = World(rng, total, tag)
    n_malformed = round(total * malformed_share)
    n_valid = total - n_malformed
    n_distinct = round(n_valid / (1 + duplicate_share))
    generated = [
        world.proctoring() if rng.random() < proctoring_share else world.interview()
        for _ in range(n_distinct)
    ]
    for g in generated:
        assert g.planned.value is not None
        result = DECODERS[g.planned.family].decode(g.planned.value)
        assert not isinstance(result, DecodeFailure), (g.planned.value, result)
    keys = [g.order_key for g in generated]
    order = _constrained_shuffle(keys, rng)

    # Redeliveries: after the original and before the next member of its ordered group.
    position_of = {index: pos for pos, index in enumerate(order)}
    next_in_group: dict[int, int] = {}
    last_seen: dict[Hashable, int] = {}
    for pos in range(len(order) - 1, -1, -1):
        key = keys[order[pos]]
        if key is not None:
            next_in_group[pos] = last_seen.get(key, len(order))
            last_seen[key] = pos
    extra: dict[int, list[Planned]] = {}
    n_dups = n_valid - n_distinct
    for index in rng.sample(range(n_distinct), min(n_dups, n_distinct)):
        p = position_of[index]
        limit = next_in_group.get(p, len(order))
        after = rng.randint(p, limit - 1)
        extra.setdefault(after, []).append(generated[index].planned)
    records: list[Planned] = []
    for pos, index in enumerate(order):
        records.append(generated[index].planned)
        records.extend(extra.get(pos, ()))

    kinds: Counter[str] = Counter()
    for _ in range(n_malformed):
        bad = malformed(world, rng)
        kinds[bad.kind] += 1
        records.insert(rng.randint(0, len(records)), bad)
    return Stream(
        events=[g.planned for g in generated],
        records=records,
        duplicates=len(records) - n_malformed - n_distinct,
        malformed=n_malformed,
        malformed_kinds=kinds,
    )


# -- publishing -------------------------------------------------------------------------------


class Publisher:
    """One producer for the whole campaign; every send's delivery report is kept, in order.

    Sends are issued in order and awaited together per call, so per-partition order is the
    order of the calls (the embedded broker has no idempotence: it stays off)."""

    def __init__(self, bootstrap: str, topic_of: Mapping[str, str]) -> None:
        self.topic_of = dict(topic_of)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=5,
            max_request_size=16 << 20,
            max_batch_size=1 << 20,
        )
        self.sent: list[tuple[Planned, Coord]] = []
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def publish(self, records: Sequence[Planned]) -> list[Coord]:
        async with self._lock:
            futures = [
                await self._producer.send(self.topic_of[r.family], value=r.value, key=r.key)
                for r in records
            ]
            results = await asyncio.gather(*futures)
        coords = [(md.topic, md.partition, md.offset) for md in results]
        self.sent.extend(zip(records, coords, strict=True))
        return coords

    @property
    def produced(self) -> int:
        return len(self.sent)

    def expected_offsets(self) -> dict[tuple[str, int], int]:
        result: dict[tuple[str, int], int] = {}
        for _, (topic, partition, offset) in self.sent:
            result[(topic, partition)] = max(result.get((topic, partition), 0), offset + 1)
        return result

    def malformed(self) -> dict[Coord, Planned]:
        return {coord: p for p, coord in self.sent if not p.valid}


async def paced_publish(
    publisher: Publisher, records: Sequence[Planned], seconds: float, chunk: int = 100
) -> None:
    """Publish `records` in chunks spread evenly over about `seconds`."""
    chunks = [records[i : i + chunk] for i in range(0, len(records), chunk)]
    if not chunks:
        return
    pause = seconds / len(chunks)
    for part in chunks:
        started = time.monotonic()
        await publisher.publish(part)
        await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))


# -- the reference ----------------------------------------------------------------------------


def items_of(events: Sequence[Planned]) -> list[Item]:
    """Decode `events` (all valid) into items; offsets are positions (kafka_* columns are not
    compared)."""
    items: list[Item] = []
    for offset, p in enumerate(events):
        event = DECODERS[p.family].decode(p.value)
        assert not isinstance(event, DecodeFailure), (p.value, event)
        items.append(Item(event, p.family, 0, offset))
    return items


async def store_isolating(
    conn: asyncpg.Connection, items: Sequence[Item]
) -> list[tuple[Item, str]]:
    """Apply `items` in savepoints, bisecting around items that cannot be stored: those the
    database rejects, and those that cannot even be sent to it. Returns them with why."""
    if not items:
        return []
    try:
        async with conn.transaction():
            await apply_batch(conn, items)
        return []
    except Exception as exc:
        if isinstance(exc, asyncpg.PostgresError) and not is_record_error(exc):
            raise
        if len(items) == 1:
            return [(items[0], describe(exc))]
    mid = len(items) // 2
    return await store_isolating(conn, items[:mid]) + await store_isolating(conn, items[mid:])


async def build_reference(
    url: str, items: Sequence[Item], chunk: int = 500
) -> list[tuple[Item, str]]:
    """Migrate the fresh database at `url` and apply `items` in order, `chunk` per
    transaction. Returns the items that could not be stored."""
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        rejected: list[tuple[Item, str]] = []
        for i in range(0, len(items), chunk):
            async with conn.transaction():
                rejected += await store_isolating(conn, items[i : i + chunk])
        return rejected
    finally:
        await conn.close()


async def compare_with_reference(actual_url: str, reference_url: str) -> dict[str, Any]:
    """Assert the contract tables are identical; return row counts and session counters."""
    actual = await table_snapshot(actual_url, offsets=False)
    reference = await table_snapshot(reference_url, offsets=False)
    assert actual == reference, "tables differ from the reference:\n" + snapshot_diff(
        actual, reference
    )
    counters = []
    for url in (actual_url, reference_url):
        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchrow(
                "SELECT coalesce(sum(flag_count), 0) AS flags, "
                "coalesce(sum(event_count), 0) AS events FROM proctoring_sessions"
            )
        finally:
            await conn.close()
        counters.append((row["flags"], row["events"]))
    assert counters[0] == counters[1], f"session counters {counters[0]} != reference {counters[1]}"
    return {
        "rows": sum(len(rows) for rows in actual.values()),
        "proctoring_events": len(actual["proctoring_events"]),
        "interview_reports": len(actual["interview_reports"]),
        "applicants": len(actual["applicants"]),
        "flag_count": counters[0][0],
        "event_count": counters[0][1],
    }


async def check_offsets(url: str, group_id: str, publisher: Publisher) -> int:
    """consumer_offsets == last produced offset + 1 everywhere; sum == records produced."""
    committed = await committed_offsets(url, group_id)
    expected = publisher.expected_offsets()
    assert committed == expected, f"committed {committed} != produced {expected}"
    total = sum(committed.values())
    assert total == publisher.produced, (total, publisher.produced)
    return total


async def offsets_total(url: str, group_id: str) -> int:
    try:
        return sum((await committed_offsets(url, group_id)).values())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return -1


async def ensure_migrated(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


# -- the dead-letter topic --------------------------------------------------------------------


def dlq_origin(record: ConsumerRecord[bytes, bytes]) -> Coord:
    headers = {k: v.decode() for k, v in record.headers}
    return (
        headers["dlq.original.topic"],
        int(headers["dlq.original.partition"]),
        int(headers["dlq.original.offset"]),
    )


def dlq_reason(record: ConsumerRecord[bytes, bytes]) -> str:
    return dict(record.headers)["dlq.reason"].decode()


async def read_dlq(
    bootstrap: str, topic: str, want: set[Coord], timeout: float = 60.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every dead letter in `topic`: read until the letters cover `want` and the topic is
    quiet for a second, or until `timeout` (then the caller's check reports the gap)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=32 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    letters: list[ConsumerRecord[bytes, bytes]] = []
    seen: set[Coord] = set()
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await asyncio.sleep(0.2)
        if not partitions:
            return letters
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            got = [r for records in batch.values() for r in records]
            letters.extend(got)
            seen.update(dlq_origin(r) for r in got)
            if not got and want <= seen:
                break
        return letters
    finally:
        await consumer.stop()


def check_dlq(
    letters: Sequence[ConsumerRecord[bytes, bytes]], expected: Mapping[Coord, Planned]
) -> dict[str, Any]:
    """The set of dead-lettered coordinates equals `expected`'s; each letter carries the
    original key and value byte for byte (and the decoder's reason when known). A repeated
    letter is tolerated: same coordinates, same content."""
    got = Counter(dlq_origin(r) for r in letters)
    missing = set(expected) - set(got)
    unexpected = set(got) - set(expected)
    assert not missing and not unexpected, (
        f"dead letters: {len(missing)} missing (e.g. {sorted(missing)[:5]}), "
        f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:5]})"
    )
    reasons: Counter[str] = Counter()
    for letter in letters:
        original = expected[dlq_origin(letter)]
        assert letter.value == original.value, (
            f"dead letter {dlq_origin(letter)}: value {letter.value[:80]!r} differs from "
            f"the original {original.value[:80]!r}"
        )
        assert letter.key == original.key, f"dead letter {dlq_origin(letter)}: key differs"
        reason = dlq_reason(letter)
        if original.reason is not None:
            assert reason == original.reason, (dlq_origin(letter), reason, original.reason)
        reasons[reason] += 1
    return {
        "dead_letters": len(letters),
        "dlq_distinct": len(got),
        "dlq_repeats": len(letters) - len(got),
        "dlq_reasons": dict(sorted(reasons.items())),
    }


# -- process helpers --------------------------------------------------------------------------


def log_lines(path: Any) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def count_in_log(path: Any, needle: str) -> int:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return sum(needle in line for line in fh)
    except OSError:
        return 0


async def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2
) -> Any:
    """Poll an async predicate until truthy; AssertionError with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


async def create_named_topics(
    bootstrap: str, partitions: Mapping[str, int], timeout: float = 60.0
) -> None:
    """Create topics with the given names (after a broker lost them) and wait until led."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name=n, num_partitions=p, replication_factor=1)
                for n, p in partitions.items()
            ]
        )
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(list(partitions))
            ready = [
                t
                for t in described
                if t["error_code"] == 0
                and len([p for p in t["partitions"] if p["leader"] >= 0]) == partitions[t["topic"]]
            ]
            if len(ready) == len(partitions):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not ready after {timeout}s: {described!r}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def make_topics(
    topic_factory: infra.TopicFactory, data_partitions: int, prefix: str = "g_chaos_"
) -> infra.Topics:
    proctoring, interview, dlq = await asyncio.gather(
        topic_factory(data_partitions), topic_factory(data_partitions), topic_factory(1)
    )
    return infra.Topics(
        proctoring=proctoring, interview=interview, dlq=dlq, group_id=infra.unique_name(prefix)
    )


def topic_map(topics: infra.Topics) -> dict[str, str]:
    return {PROCTORING: topics.proctoring, INTERVIEW: topics.interview}


# -- campaigns of worker processes ------------------------------------------------------------


@dataclass
class ProcessCampaign:
    """What the campaigns of `python -m worker run` processes (crash loop, rebalance storm) set
    up and judge the same way: a stream, fresh topics, the members' settings (batches of at most
    500 records), the processes started, and a clock started first."""

    clock: Clock
    stream: Stream
    topics: infra.Topics
    settings: Settings
    procs: list[WorkerProcess] = field(default_factory=list)

    @classmethod
    async def create(
        cls,
        kafka_bootstrap: str,
        database_url: str,
        topic_factory: infra.TopicFactory,
        *,
        seed: int,
        events: int,
        partitions: int,
        tag: str = "",
        **settings_overrides: Any,
    ) -> ProcessCampaign:
        clock = Clock()
        stream = generate_stream(seed, events, tag=tag)
        topics = await make_topics(topic_factory, partitions)
        settings = settings_for(
            kafka_bootstrap, database_url, topics, max_batch_records=500, **settings_overrides
        )
        return cls(clock, stream, topics, settings)

    @contextlib.asynccontextmanager
    async def publishing(
        self, kafka_bootstrap: str, seconds: float
    ) -> AsyncIterator[tuple[Publisher, asyncio.Task[None]]]:
        """The stream published over about `seconds` (the task); on the way out, publishing
        stops and every process still alive is killed."""
        async with Publisher(kafka_bootstrap, topic_map(self.topics)) as publisher:
            producing = asyncio.create_task(paced_publish(publisher, self.stream.records, seconds))
            try:
                yield publisher, producing
            finally:
                if not producing.done():
                    producing.cancel()
                for p in self.procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait(30)

    async def judge_tables(
        self,
        database_url: str,
        publisher: Publisher,
        fresh_database: Callable[[], Awaitable[str]],
    ) -> tuple[int, dict[str, Any]]:
        """The committed offsets account for every record produced, and the tables equal the
        reference built from the stream's distinct valid events: (offsets sum, table figures)."""
        committed = await check_offsets(database_url, self.topics.group_id, publisher)
        reference_url = await fresh_database()
        assert await build_reference(reference_url, items_of(self.stream.events)) == []
        return committed, await compare_with_reference(database_url, reference_url)

    def figures(self, publisher: Publisher) -> dict[str, Any]:
        """The figures every campaign reports first: the scale and what was produced."""
        return {
            "scale": SCALE,
            "produced": publisher.produced,
            "distinct_valid": len(self.stream.events),
            "duplicates": self.stream.duplicates,
            "malformed": self.stream.malformed,
        }
