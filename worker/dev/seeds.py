"""The seed documents' sample bodies, read from the files as written.

The seeds (`schemas/seeds/`, verbatim copies of the source documents) are what producers were
given; their samples are published by `worker dev` and are test cases.
"""

from __future__ import annotations

import re
from importlib import resources

PROCTORING_SEED = "000_9bc4ef1cc485ee9a.txt"
INTERVIEW_SEED = "003_ef4b1b5b648529a0.txt"

_JSON_BLOCK = re.compile(r"```json[^\n]*\n(.*?)```", re.S)


def seed_text(name: str) -> str:
    return resources.files("schemas").joinpath("seeds", name).read_text(encoding="utf-8")


def json_blocks(name: str) -> list[str]:
    """Every ```json block of a seed document, exactly as written (indentation included)."""
    return _JSON_BLOCK.findall(seed_text(name))


def interview_samples() -> list[bytes]:
    """The nine sample request bodies of the micro1 seed, in document order."""
    return [block.encode("utf-8") for block in json_blocks(INTERVIEW_SEED)]


def system_check_example() -> bytes:
    """The SystemCheck example payload of the Proctorme seed (a `systemCheck` value)."""
    (block,) = json_blocks(PROCTORING_SEED)
    return block.encode("utf-8")


def proctoring_samples(exam_id: str = "exam-demo", candidate_id: str = "cand-demo") -> list[bytes]:
    """One realistic event of each of the 13 Proctorme types, for one exam session.

    The seed defines the types but gives no full event; these follow docs/contract.md §3 (media
    flags carry `mediaUrl`; SYSTEM_CHECK_COMPLETED carries the seed's SystemCheck example
    verbatim).
    """
    import json

    system_check = json.loads(system_check_example())
    base = {"examId": exam_id, "candidateId": candidate_id}
    media = "https://media.example.com/" + exam_id + "/" + candidate_id
    events: list[dict[str, object]] = [
        {
            "type": "SYSTEM_CHECK_STARTED",
            "createdAt": "2025-09-21T11:59:30Z",
            "description": "System check started",
        },
        {
            "type": "SYSTEM_CHECK_COMPLETED",
            "createdAt": "2025-09-21T12:00:00Z",
            "description": "System check completed",
            "systemCheck": system_check,
        },
        {
            "type": "SET_CONFIG",
            "createdAt": "2025-09-21T12:00:05Z",
            "description": "Proctoring configuration applied",
        },
        {"type": "STARTED", "createdAt": "2025-09-21T12:00:10Z", "description": "Exam started"},
        {
            "type": "FULLSCREEN_CHANGE",
            "createdAt": "2025-09-21T12:00:11Z",
            "description": "Entered fullscreen",
        },
        {
            "type": "PERIODIC_SNAPSHOT",
            "createdAt": "2025-09-21T12:05:00Z",
            "description": "Periodic webcam snapshot",
            "mediaUrl": media + "/snap-0001.jpg",
        },
        {
            "type": "TAB_FOCUS_CHANGE",
            "createdAt": "2025-09-21T12:07:12Z",
            "description": "Tab focus changed",
        },
        {
            "type": "TAB_NOT_FOCUS",
            "createdAt": "2025-09-21T12:07:13Z",
            "description": "Candidate switched to another tab",
        },
        {
            "type": "EXIT_FULLSCREEN",
            "createdAt": "2025-09-21T12:09:40+00:00",
            "description": "Candidate exited fullscreen",
        },
        {
            "type": "FACE_ABSENCE",
            "createdAt": "2025-09-21T12:11:02.250Z",
            "description": "No face detected for 10 seconds",
            "mediaUrl": media + "/face-0001.jpg",
        },
        {
            "type": "MULTIPLE_FACE",
            "createdAt": "2025-09-21T12:13:45Z",
            "description": "2 faces detected",
            "mediaUrl": media + "/faces-0001.jpg",
        },
        {
            "type": "SOUND_DETECTED",
            "createdAt": "2025-09-21T12:15:30Z",
            "description": "Voice detected",
            "mediaUrl": media + "/sound-0001.webm",
        },
        {
            "type": "END_PROCTORING",
            "createdAt": "2025-09-21T12:45:00Z",
            "description": "Exam submitted",
        },
    ]
    return [json.dumps({**base, **event}).encode("utf-8") for event in events]
