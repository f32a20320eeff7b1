"""Bytes to structs: one msgspec decode per record, and a precise reason when it fails.

The reasons are the dead-letter reasons of CONTRACT §6. Only the failure path does extra work
(classifying the error, hunting a NUL); the happy path is a single C-level decode.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
import structlog

from schemas.interview import EVENT_NAMES, INTERVIEW_STRUCTS, InterviewUnion
from schemas.proctoring import EVENT_TYPES, PROCTORING_STRUCTS, ProctoringUnion

INVALID_JSON: Final = "invalid_json"
SCHEMA_VIOLATION: Final = "schema_violation"
UNKNOWN_EVENT_TYPE: Final = "unknown_event_type"
EMPTY_PAYLOAD: Final = "empty_payload"
REJECTED_BY_DATABASE: Final = "rejected_by_database"

MAX_ERROR_BYTES: Final = 1024


class DecodeFailure(msgspec.Struct, frozen=True):
    """Why a record can never be stored."""

    reason: str
    message: str


class _TagProbe(msgspec.Struct):
    """Reads only the tag, to tell an unknown event type from a malformed known one."""

    type: Any = None
    event: Any = None


_probe = msgspec.json.Decoder(_TagProbe)
log = structlog.get_logger("worker.decode")
_NUL_ESCAPE: Final = b"\\u0000"


def truncate(message: str, limit: int = MAX_ERROR_BYTES) -> str:
    """Cut `message` to at most `limit` UTF-8 bytes without splitting a character."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return message
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."


def _contains_nul(value: Any) -> bool:
    # Iterative: a hostile document may nest as deep as the parser allows.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _nul_field(event: msgspec.Struct) -> str | None:
    """The first stored field that holds a NUL (PostgreSQL text and jsonb cannot hold one)."""
    stack: list[tuple[str, Any]] = [("$", event)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, msgspec.Raw):
            # An absent block is an empty Raw, which is not JSON at all.
            if len(value) and _contains_nul(msgspec.json.decode(value)):
                return path
        elif isinstance(value, msgspec.Struct):
            for name in value.__struct_fields__:
                stack.append((f"{path}.{name}", getattr(value, name)))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str) and "\x00" in value:
            return path
    return None


def _unexpected(exc: Exception) -> DecodeFailure:
    log.error("unexpected decoding error", error=f"{type(exc).__name__}: {exc}")
    return DecodeFailure(
        SCHEMA_VIOLATION, truncate(f"record could not be decoded: {type(exc).__name__}: {exc}")
    )


class EventDecoder:
    """Decodes one topic's records into its family's tagged union."""

    def __init__(
        self,
        union: Any,
        tag_field: str,
        known_tags: tuple[str, ...],
        structs: tuple[type[msgspec.Struct], ...],
    ) -> None:
        self._decoder = msgspec.json.Decoder(union)
        self._tag_field = tag_field
        self._known = frozenset(known_tags)
        self._known_list = ", ".join(sorted(known_tags))
        self.structs = structs

    def decode(self, value: bytes | None) -> msgspec.Struct | DecodeFailure:
        if value is None or not value.strip():
            return DecodeFailure(EMPTY_PAYLOAD, "record value is empty")
        try:
            event = self._decoder.decode(value)
        except msgspec.ValidationError as exc:
            return self._classify(value, exc)
        except msgspec.DecodeError as exc:
            return DecodeFailure(INVALID_JSON, truncate(f"not valid JSON: {exc}"))
        except UnicodeDecodeError as exc:
            return DecodeFailure(
                INVALID_JSON, truncate(f"not valid UTF-8: {exc.reason} at byte {exc.start}")
            )
        except RecursionError:
            return DecodeFailure(INVALID_JSON, "JSON nested too deeply for the parser")
        except Exception as exc:
            # A struct hook failing in a way we did not foresee. The record goes to the
            # dead-letter topic (replayable once fixed) instead of crashing the worker on
            # every restart at the same offset.
            return _unexpected(exc)
        if _NUL_ESCAPE in value:
            try:
                path = _nul_field(event)
            except Exception as exc:
                return _unexpected(exc)
            if path is not None:
                return DecodeFailure(
                    SCHEMA_VIOLATION, f"text contains a NUL character (\\u0000) at `{path}`"
                )
        return event

    def _classify(self, value: bytes, exc: msgspec.ValidationError) -> DecodeFailure:
        """A typed decode failed. msgspec validates while it parses, so a document that is
        both ill-typed early and malformed later reports the type error: check the syntax and
        the encoding first, then whether the tag is one we know."""
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as err:
            return DecodeFailure(INVALID_JSON, f"not valid UTF-8: {err.reason} at byte {err.start}")
        try:
            probe = _probe.decode(value)
        except msgspec.ValidationError:
            probe = None  # well-formed, but not an object: a schema violation
        except msgspec.DecodeError as err:
            return DecodeFailure(INVALID_JSON, truncate(f"not valid JSON: {err}"))
        except RecursionError:
            return DecodeFailure(INVALID_JSON, "JSON nested too deeply for the parser")
        if probe is not None:
            tag = getattr(probe, self._tag_field)
            if isinstance(tag, str) and tag not in self._known:
                return DecodeFailure(
                    UNKNOWN_EVENT_TYPE,
                    truncate(f"unknown {self._tag_field} {tag!r}; known: {self._known_list}"),
                )
        return DecodeFailure(SCHEMA_VIOLATION, truncate(str(exc)))


proctoring_decoder = EventDecoder(ProctoringUnion, "type", EVENT_TYPES, PROCTORING_STRUCTS)
interview_decoder = EventDecoder(InterviewUnion, "event", EVENT_NAMES, INTERVIEW_STRUCTS)
