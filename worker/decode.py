"""Bytes to structs: one msgspec decode per record, and a precise reason when it fails.

The reasons are the dead-letter reasons of docs/contract.md §6, declared in worker/dlq.py. Only the
failure path does extra work (decoding again when msgspec refused a timestamp the contract
accepts, classifying the error, hunting a NUL); the happy path is a single C-level decode.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec
import msgspec.structs
import structlog

from schemas.common import parse_timestamp
from schemas.interview import EVENT_NAMES, INTERVIEW_STRUCTS, InterviewUnion
from schemas.proctoring import EVENT_TYPES, PROCTORING_STRUCTS, ProctoringUnion
from worker.dlq import (
    EMPTY_PAYLOAD,
    INVALID_JSON,
    SCHEMA_VIOLATION,
    UNKNOWN_EVENT_TYPE,
    DecodeFailure,
    truncate,
)


class _TagProbe(msgspec.Struct):
    """Reads only the tag, to tell an unknown event type from a malformed known one."""

    type: Any = None
    event: Any = None


_probe = msgspec.json.Decoder(_TagProbe)
log = structlog.get_logger("worker.decode")
_NUL_ESCAPE: Final = b"\\u0000"
# How msgspec says its RFC 3339 parser refused a string for a datetime field.
_RFC3339_REFUSED: Final = "Invalid RFC3339 encoded datetime"


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


def _mentions(tp: Any, wanted: Callable[[Any], bool]) -> bool:
    """Whether `wanted` holds for `tp` or for a type inside its Annotated, union or list."""
    if wanted(tp):
        return True
    return any(_mentions(arg, wanted) for arg in typing.get_args(tp))


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


# (attribute name, wire name) of the fields the slow path visits in one struct class.
_Fields = tuple[tuple[str, str], ...]


class _Lenient:
    """The slow path, for records msgspec refused because of a timestamp that docs/contract.md §3
    accepts all the same (`12:05Z`, `+02`, basic format: whatever `datetime.fromisoformat` takes).

    Each struct has a twin with the same fields, tag, defaults and constraints, except that its
    timestamps are `str`, so one C-level decode still validates everything else. The timestamps
    are then parsed by `parse_timestamp`, and `msgspec.convert` builds the real structs from the
    twins: their __post_init__ runs as on the fast path, so UTC conversion and the year 1-9999
    rule are the same code on both paths, and handlers see the same classes.
    """

    def __init__(self, structs: tuple[type[msgspec.Struct], ...]) -> None:
        self._twins: dict[type, type] = {}
        self._real: dict[type, type] = {}
        self._stamps: dict[type, _Fields] = {}
        self._nested: dict[type, _Fields] = {}
        union = typing.Union[tuple(self._twin(cls) for cls in structs)]  # noqa: UP007
        self._decoder = msgspec.json.Decoder(union)

    def decode(self, value: bytes) -> msgspec.Struct:
        twin = self._decoder.decode(value)
        self._parse_timestamps(twin, "$")
        return msgspec.convert(twin, self._real[type(twin)], from_attributes=True)

    def _parse_timestamps(self, twin: Any, path: str) -> None:
        for attr, name in self._stamps[type(twin)]:
            text = getattr(twin, attr)
            if text is None:
                continue
            try:
                setattr(twin, attr, parse_timestamp(text))
            except ValueError as exc:
                raise msgspec.ValidationError(f"{exc} - at `{path}.{name}`") from None
        for attr, name in self._nested[type(twin)]:
            child = getattr(twin, attr)
            if isinstance(child, list):
                for i, item in enumerate(child):
                    self._parse_timestamps(item, f"{path}.{name}[{i}]")
            elif child is not None:
                self._parse_timestamps(child, f"{path}.{name}")

    def _visits(self, tp: Any) -> bool:
        """Whether a value of type `tp` may hold structs with timestamps to parse."""
        return _mentions(tp, lambda t: _is_struct(t) and self._walked(self._twin(t)))

    def _walked(self, twin: type) -> bool:
        return bool(self._stamps[twin] or self._nested[twin])

    def _twin(self, cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
        if cls in self._twins:
            return self._twins[cls]
        config = cls.__struct_config__
        fields: list[tuple[str, Any, Any]] = []
        rename: dict[str, str] = {}
        stamps: list[tuple[str, str]] = []
        nested: list[tuple[str, str]] = []
        for info in msgspec.structs.fields(cls):
            if info.encode_name != info.name:
                rename[info.name] = info.encode_name
            if _mentions(info.type, lambda t: t is dt.datetime):
                stamps.append((info.name, info.encode_name))
            elif self._visits(info.type):
                nested.append((info.name, info.encode_name))
            if info.default_factory is not msgspec.NODEFAULT:
                default: Any = msgspec.field(default_factory=info.default_factory)
            else:
                default = info.default
            fields.append((info.name, self._rewrite(info.type), default))
        twin = msgspec.defstruct(
            cls.__name__,
            [(n, t) if d is msgspec.NODEFAULT else (n, t, d) for n, t, d in fields],
            module=cls.__module__,
            tag=config.tag,
            tag_field=config.tag_field,
            rename=rename or None,
            forbid_unknown_fields=config.forbid_unknown_fields,
            kw_only=True,
            gc=False,
        )
        self._twins[cls], self._real[twin] = twin, cls
        self._stamps[twin], self._nested[twin] = tuple(stamps), tuple(nested)
        return twin

    def _rewrite(self, tp: Any) -> Any:
        """`tp` with datetime replaced by str and structs by their twins."""
        if tp is dt.datetime:
            return str
        if _is_struct(tp):
            return self._twin(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            return Annotated[(self._rewrite(args[0]), *args[1:])]
        if origin in (typing.Union, types.UnionType):
            return typing.Union[tuple(self._rewrite(arg) for arg in args)]  # noqa: UP007
        if origin is list:
            return list[self._rewrite(args[0])]  # type: ignore[misc]
        return tp


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
        self._lenient = _Lenient(structs)
        self._tag_field = tag_field
        self._known = frozenset(known_tags)
        self._known_list = ", ".join(sorted(known_tags))
        self.structs = structs

    def decode(self, value: bytes | None) -> msgspec.Struct | DecodeFailure:
        if not value:
            return DecodeFailure(EMPTY_PAYLOAD, "record value is empty")
        try:
            try:
                event = self._decoder.decode(value)
            except msgspec.ValidationError as exc:
                # msgspec reports the first error only: if that is not a refused timestamp,
                # the record is invalid whatever its timestamps look like.
                if not str(exc).startswith(_RFC3339_REFUSED):
                    raise
                event = self._decode_lenient(value)
        except msgspec.ValidationError as exc:
            return self._classify(value, exc)
        except msgspec.DecodeError as exc:
            # Only whitespace is no JSON either: said as empty, and checked only here, off the
            # path of every record (isspace() scans without copying, unlike strip()).
            if value.isspace():
                return DecodeFailure(EMPTY_PAYLOAD, "record value is empty")
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

    def _decode_lenient(self, value: bytes) -> msgspec.Struct:
        return self._lenient.decode(value)

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
