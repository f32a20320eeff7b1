"""Proctorme widget events (seed `000_9bc4ef1cc485ee9a.txt`), one JSON object per Kafka record.

Every event carries the common fields; `type` is the tag msgspec uses to pick the struct, so a
single decode call yields the right class and routing is a dictionary lookup on that class.
"""

from __future__ import annotations

from datetime import UTC
from typing import Literal

import msgspec

from schemas.common import Id, Text, Timestamp, Url, tag_of, utc

EVENT_TYPES: tuple[str, ...] = (
    "STARTED",
    "END_PROCTORING",
    "SET_CONFIG",
    "FULLSCREEN_CHANGE",
    "EXIT_FULLSCREEN",
    "TAB_FOCUS_CHANGE",
    "TAB_NOT_FOCUS",
    "FACE_ABSENCE",
    "MULTIPLE_FACE",
    "SOUND_DETECTED",
    "PERIODIC_SNAPSHOT",
    "SYSTEM_CHECK_STARTED",
    "SYSTEM_CHECK_COMPLETED",
)

# The events a proctor counts against a candidate (docs/contract.md §4,
# proctoring_sessions.flag_count).
FLAG_TYPES: frozenset[str] = frozenset(
    {"EXIT_FULLSCREEN", "TAB_NOT_FOCUS", "FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED"}
)


class ProctoringEvent(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    """FlagData: the common fields every proctoring event carries."""

    examId: Id
    candidateId: Id
    createdAt: Timestamp
    description: Text = ""

    def __post_init__(self) -> None:
        # Runs once per record: the call to utc() only when there is something to convert.
        if self.createdAt.tzinfo is not UTC:
            self.createdAt = utc(self.createdAt, "createdAt")

    @property
    def media_url(self) -> str | None:
        return None


class FlagDataWithFile(ProctoringEvent, kw_only=True):
    """A flag with a media file: a browser `File` cannot cross Kafka, so it arrives as a URL."""

    mediaUrl: Url

    @property
    def media_url(self) -> str | None:
        return self.mediaUrl


class SystemCheckItem(msgspec.Struct):
    name: Literal["internetSpeed", "webcam", "microphone", "browser"]
    status: Literal["success", "failed", "default"]
    finished: bool


class SystemCheck(msgspec.Struct):
    success: bool
    timestamp: Timestamp
    # Unbounded like every list of the contract; four checks are what the widget runs.
    data: list[SystemCheckItem]

    def __post_init__(self) -> None:
        self.timestamp = utc(self.timestamp, "timestamp")


class Started(ProctoringEvent, kw_only=True, tag="STARTED"):
    pass


class EndProctoring(ProctoringEvent, kw_only=True, tag="END_PROCTORING"):
    pass


class SetConfig(ProctoringEvent, kw_only=True, tag="SET_CONFIG"):
    pass


class FullscreenChange(ProctoringEvent, kw_only=True, tag="FULLSCREEN_CHANGE"):
    pass


class ExitFullscreen(ProctoringEvent, kw_only=True, tag="EXIT_FULLSCREEN"):
    pass


class TabFocusChange(ProctoringEvent, kw_only=True, tag="TAB_FOCUS_CHANGE"):
    pass


class TabNotFocus(ProctoringEvent, kw_only=True, tag="TAB_NOT_FOCUS"):
    pass


class FaceAbsence(FlagDataWithFile, kw_only=True, tag="FACE_ABSENCE"):
    pass


class MultipleFace(FlagDataWithFile, kw_only=True, tag="MULTIPLE_FACE"):
    pass


class SoundDetected(FlagDataWithFile, kw_only=True, tag="SOUND_DETECTED"):
    pass


class PeriodicSnapshot(FlagDataWithFile, kw_only=True, tag="PERIODIC_SNAPSHOT"):
    pass


class SystemCheckStarted(ProctoringEvent, kw_only=True, tag="SYSTEM_CHECK_STARTED"):
    pass


class SystemCheckCompleted(ProctoringEvent, kw_only=True, tag="SYSTEM_CHECK_COMPLETED"):
    systemCheck: SystemCheck


ProctoringUnion = (
    Started
    | EndProctoring
    | SetConfig
    | FullscreenChange
    | ExitFullscreen
    | TabFocusChange
    | TabNotFocus
    | FaceAbsence
    | MultipleFace
    | SoundDetected
    | PeriodicSnapshot
    | SystemCheckStarted
    | SystemCheckCompleted
)

PROCTORING_STRUCTS: tuple[type[ProctoringEvent], ...] = ProctoringUnion.__args__  # type: ignore[attr-defined]


def _check_registry() -> None:
    tags = sorted(tag_of(cls) for cls in PROCTORING_STRUCTS)
    if tags != sorted(EVENT_TYPES):
        raise RuntimeError(f"proctoring structs {tags} do not match EVENT_TYPES")


_check_registry()
