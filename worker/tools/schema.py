"""JSON Schema (draft 2020-12) for producers, generated from the msgspec structs in `schemas/`.

`worker schema [--out DIR]` writes one schema per event type (`proctoring/FACE_ABSENCE.schema.json`,
`interview/interview.started.schema.json`, ...) and one per topic for the tagged union
(`proctoring.events.schema.json`, `interview.events.schema.json`).

The structs stay the single source of truth; a few types need help to say in JSON Schema what
the decoder (`worker.decode`) actually accepts, so the structs are mirrored with marker types
before `msgspec.json.schema_components` sees them:

- timestamps: the decoder takes every ISO 8601 form `datetime.fromisoformat` takes (`12:05Z`,
  `+02`, basic format, a space separator), far beyond RFC 3339, so `format: date-time` would
  reject the seed samples; a `pattern` states the grammar. That a timestamp without an offset
  means UTC is a meaning, not a shape: it is in `description`.
- scores: Decimals (exact as written) in the structs, numbers from 0 to 100 in the schema.
- `resume_score`: a decimal string or a JSON number, finite, below 1e12 in magnitude.
- `msgspec.Raw` blocks (transcript, evaluations) are stored verbatim as jsonb; the schema says
  array-or-null or object-or-null, exactly as the decoder checks them. msgspec cannot generate a
  schema for them at all (it fails on their `msgspec.Raw()` default), another reason for mirrors.
  A violation's `value` is raw too (a string or a number, kept as written).
- NUL (U+0000): PostgreSQL text and jsonb cannot hold it, the decoder dead-letters it. It is
  expressed as a `pattern` on every free-text string, and recursively inside the raw blocks.

Where the two differ, the schema is the stricter: a value valid against it decodes. The decoder
also tolerates decimal strings with spaces, `_`, an exponent or non-ASCII digits, scores as
decimal strings, and fromisoformat's exotic timestamps (a date alone, week dates, any separator
character, offsets with seconds), and the schema does not; producers should send plain forms.
Not-JSON, invalid UTF-8, empty values and absurd nesting are outside JSON Schema's reach: a
validator only ever sees a parsed document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import types
import typing
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
import msgspec.structs

from schemas.common import SCORE_MAX, SCORE_MIN, Score, tag_of
from schemas.interview import INTERVIEW_STRUCTS
from schemas.proctoring import PROCTORING_STRUCTS
from worker import __version__
from worker.config import Settings

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
# `.invalid` never resolves (RFC 2606): the `$id`s name the documents, they are not downloads.
DEFAULT_BASE_URI: Final = "https://event-worker.invalid/schema/"
DEFAULT_OUT_DIR: Final = "schema"

_DEFAULTS = Settings()
PROCTORING_TOPIC: Final = _DEFAULTS.proctoring_topic
INTERVIEW_TOPIC: Final = _DEFAULTS.interview_topic

# Regular expressions in the subset that ECMA-262 and Python's `re` agree on.
NO_NUL_PATTERN: Final = r"^[^\u0000]*$"


def _date(sep: str) -> str:
    """A real calendar date, Feb 29 in leap years only, its fields joined by `sep` (`-` for
    the extended format, nothing for the basic one); year 0000 is not one (Python agrees)."""
    return (
        rf"(?!0000)(?:[0-9]{{4}}{sep}(?:"
        rf"(?:0[13578]|1[02]){sep}(?:0[1-9]|[12][0-9]|3[01])"
        rf"|(?:0[469]|11){sep}(?:0[1-9]|[12][0-9]|30)"
        rf"|02{sep}(?:0[1-9]|1[0-9]|2[0-8]))"
        rf"|(?:[0-9]{{2}}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
        rf"{sep}02{sep}29)"
    )


_DATE = _date("-")
_HOUR = r"(?:[01][0-9]|2[0-3])"
_SIXTY = r"[0-5][0-9]"
# Hours, then optionally minutes, then optionally seconds and a fraction (`.` or `,`), all
# extended (`12:05:00`) or all basic (`120500`), as `datetime.fromisoformat` reads them.
_FRACTION = r"(?:[.,][0-9]+)?"
_TIME = (
    rf"(?:{_HOUR}(?::{_SIXTY}(?::{_SIXTY}{_FRACTION})?)?"
    rf"|{_HOUR}(?:{_SIXTY}(?:{_SIXTY}{_FRACTION})?)?)"
)
_OFFSET = rf"(?:Z|[+-]{_HOUR}(?::?{_SIXTY})?)"
# msgspec's RFC 3339 parser also takes a lower-case `z`, which fromisoformat does not.
_RFC3339_LOWER_Z = rf"{_DATE}[Tt ]{_HOUR}:{_SIXTY}:{_SIXTY}(?:\.[0-9]+)?z"
# `$(?!\n)`: Python's `$` also matches before a final newline, ECMA-262's does not; now neither.
_END = r"$(?!\n)"
TIMESTAMP_PATTERN: Final = (
    rf"^(?:(?:{_DATE}|{_date('')})[Tt ]{_TIME}{_OFFSET}?|{_RFC3339_LOWER_Z}){_END}"
)
DATE_PATTERN: Final = rf"^{_DATE}{_END}"
# At most 12 integer digits keeps |value| < 1e12, the bound `check_decimal` enforces.
DECIMAL_PATTERN: Final = rf"^[+-]?[0-9]{{1,12}}(?:\.[0-9]+)?{_END}"
_DECIMAL_BOUND: Final = 10**12

NUL_RULE: Final = (
    "Text must not contain the NUL character (U+0000, `\\u0000`): PostgreSQL cannot store it, "
    "so the worker dead-letters such a record as `schema_violation`. This schema expresses the "
    "rule as `pattern` on every free-text string and inside the raw JSON blocks."
)
UTC_RULE: Final = (
    "Timestamps are ISO 8601 date-times: extended (`2025-09-21T12:05:00Z`) or basic "
    "(`20250921T120500Z`) format, with or without seconds and a fraction (`.` or `,`), the date "
    "and time separated by `T` or a space (`2024-01-01 10:00:00`), and an optional offset `Z`, "
    "`+hh:mm`, `+hhmm` or `+hh`. The worker accepts every form Python's `datetime.fromisoformat` "
    "accepts, a few more exotic ones than this pattern. A timestamp without an offset means "
    "UTC: JSON Schema cannot express that meaning, the worker applies it."
)
WIRE_RULES: Final = (
    "One UTF-8 JSON document per Kafka record. Unknown extra fields are ignored. A record that "
    "is empty, not UTF-8 or not JSON never reaches schema validation: the worker dead-letters it "
    "as `empty_payload` or `invalid_json`."
)

RAW_BLOCK_KINDS: Final[dict[str, str]] = {
    "interview_transcript": "array",
    "technical_skills_evaluation": "array",
    "soft_skills_evaluation": "array",
    "custom_question_evaluation": "array",
    "coding_skills_evaluation": "object",
    "custom_exercise_evaluation": "object",
}
"""Every `msgspec.Raw` block of the structs and the JSON kind the decoder demands of it."""

RAW_SCALAR_FIELDS: Final = frozenset({"value"})
"""The `msgspec.Raw` fields that hold one string or number, kept raw to keep its exact text."""

_NUL_FREE_JSON: Final = "NulFreeJson"
_NUL_FREE_REF: Final = f"#/$defs/{_NUL_FREE_JSON}"


# Marker types: the mirrored structs carry these where JSON Schema needs a hand-written schema.
class _Timestamp:
    pass


class _Date:
    pass


class _Decimal:
    pass


class _Score:
    pass


class _RawScalar:
    pass


class _RawArray:
    pass


class _RawObject:
    pass


def _raw_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "description": f"Any JSON {kind} (or null or absent), stored verbatim as jsonb; "
        "strings and keys inside must not contain U+0000.",
        "type": [kind, "null"],
    }
    if kind == "array":
        schema["items"] = {"$ref": _NUL_FREE_REF}
    else:
        schema["propertyNames"] = {"pattern": NO_NUL_PATTERN}
        schema["additionalProperties"] = {"$ref": _NUL_FREE_REF}
    return schema


def _schema_hook(tp: type) -> dict[str, Any]:
    if tp is _Timestamp:
        return {"description": UTC_RULE, "type": "string", "pattern": TIMESTAMP_PATTERN}
    if tp is _Date:
        return {"type": "string", "format": "date", "pattern": DATE_PATTERN}
    if tp is _Decimal:
        return {
            "description": "A decimal number, as a JSON number or a decimal string "
            '(`"99.99"`); finite and below 1e12 in magnitude.',
            "anyOf": [
                {
                    "type": "number",
                    "exclusiveMinimum": -_DECIMAL_BOUND,
                    "exclusiveMaximum": _DECIMAL_BOUND,
                },
                {"type": "string", "pattern": DECIMAL_PATTERN},
            ],
        }
    if tp is _Score:
        return {
            "description": "Score from 0 to 100, stored exactly as written (`72.30` stays "
            "`72.30`).",
            "type": "number",
            "minimum": int(SCORE_MIN),
            "maximum": int(SCORE_MAX),
        }
    if tp is _RawScalar:
        return {
            "description": "A string, or a number stored as the text it is written with.",
            "type": ["string", "number", "null"],
            "pattern": NO_NUL_PATTERN,
        }
    if tp is _RawArray:
        return _raw_schema("array")
    if tp is _RawObject:
        return _raw_schema("object")
    raise NotImplementedError(f"no JSON Schema for {tp!r}")


# Mirroring ------------------------------------------------------------------------------------

_mirrors: dict[type[msgspec.Struct], type[msgspec.Struct]] = {}


def _rewrite(tp: Any, field: str) -> Any:
    """`tp` with the types JSON Schema needs help with replaced by marker types."""
    if tp is msgspec.Raw:
        if field in RAW_SCALAR_FIELDS:
            return _RawScalar
        kind = RAW_BLOCK_KINDS.get(field)
        if kind is None:
            raise RuntimeError(f"raw field `{field}`: add it to RAW_BLOCK_KINDS")
        return _RawArray if kind == "array" else _RawObject
    # Score and resume_score are both Decimals; only the score has a range.
    if tp == Score:
        return _Score
    # datetime is a subclass of date: compare identities, never issubclass.
    if tp is dt.datetime:
        return _Timestamp
    if tp is dt.date:
        return _Date
    if tp is Decimal:
        return _Decimal
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _mirror(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        base, *metadata = args
        base = _rewrite(base, field)
        if base in (_Timestamp, _Decimal):  # the hook's description supersedes the struct's
            metadata = [m for m in metadata if not isinstance(m, msgspec.Meta)]
        return Annotated[(base, *metadata)] if metadata else base
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_rewrite(arg, field) for arg in args)]  # noqa: UP007
    if origin is list:
        (item,) = args
        return list[_rewrite(item, field)]  # type: ignore[misc]
    return tp


def _own_doc(cls: type) -> str | None:
    for klass in cls.__mro__:
        if klass is msgspec.Struct or not issubclass(klass, msgspec.Struct):
            break
        doc = klass.__dict__.get("__doc__")
        if doc:
            return doc
    return None


def _mirror(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A look-alike struct (same name, tag, fields, defaults) built from schema-friendly types."""
    if cls in _mirrors:
        return _mirrors[cls]
    config = cls.__struct_config__
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    rename: dict[str, str] = {}
    for info in msgspec.structs.fields(cls):
        if info.encode_name != info.name:
            rename[info.name] = info.encode_name
        tp = _rewrite(info.type, info.name)
        if info.type is msgspec.Raw:
            fields.append((info.name, tp, None))  # absent and null both mean "no block"
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append((info.name, tp, msgspec.field(default_factory=info.default_factory)))
        elif info.default is not msgspec.NODEFAULT:
            fields.append((info.name, tp, info.default))
        else:
            fields.append((info.name, tp))
    mirror = msgspec.defstruct(
        cls.__name__,
        fields,
        module=cls.__module__,
        namespace={"__doc__": _own_doc(cls)},
        tag=config.tag,
        tag_field=config.tag_field,
        rename=rename or None,
        forbid_unknown_fields=config.forbid_unknown_fields,
        array_like=config.array_like,
        kw_only=True,
    )
    _mirrors[cls] = mirror
    return mirror


# Post-processing ------------------------------------------------------------------------------


def _forbid_nul(node: Any) -> None:
    """Add the no-NUL pattern to every free-text string schema (not enums, consts or patterns)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and not {"pattern", "enum", "const"} & node.keys():
            node["pattern"] = NO_NUL_PATTERN
        for value in node.values():
            _forbid_nul(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_nul(value)


def _nul_free_json() -> dict[str, Any]:
    return {
        "description": "Any JSON value whose strings and object keys contain no U+0000.",
        "pattern": NO_NUL_PATTERN,
        "items": {"$ref": _NUL_FREE_REF},
        "propertyNames": {"pattern": NO_NUL_PATTERN},
        "additionalProperties": {"$ref": _NUL_FREE_REF},
    }


def _describe_events(
    defs: dict[str, Any], structs: Iterable[type[msgspec.Struct]], topic: str
) -> None:
    for cls in structs:
        node = defs[cls.__name__]
        intro = f"The `{tag_of(cls)}` event of the `{topic}` topic."
        doc = node.get("description")
        node["description"] = f"{intro} {doc}" if doc else intro


def _document(
    root: dict[str, Any],
    defs: dict[str, Any],
    *,
    rel_path: str,
    title: str,
    description: str,
    base_uri: str,
) -> dict[str, Any]:
    defs = dict(defs)
    if _NUL_FREE_JSON in defs:
        raise RuntimeError(f"a struct is named {_NUL_FREE_JSON}")
    if _NUL_FREE_REF in json.dumps(defs):
        defs[_NUL_FREE_JSON] = _nul_free_json()
    doc: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": base_uri + rel_path,
        "$comment": f"Generated by `worker schema` (event-worker {__version__}) from the "
        "msgspec structs in schemas/; do not edit by hand.",
        "title": title,
        "description": " ".join((description, WIRE_RULES, UTC_RULE, NUL_RULE)),
    }
    doc.update(root)
    doc["$defs"] = defs
    _forbid_nul(doc)
    return doc


def _family(
    structs: tuple[type[msgspec.Struct], ...],
    *,
    topic: str,
    folder: str,
    tag_field: str,
    summary: str,
    base_uri: str,
) -> dict[str, dict[str, Any]]:
    mirrors = [_mirror(cls) for cls in structs]
    union = typing.Union[tuple(mirrors)]  # noqa: UP007
    documents: dict[str, dict[str, Any]] = {}

    ((root,), defs) = msgspec.json.schema_components([union], schema_hook=_schema_hook)
    _describe_events(defs, structs, topic)
    tags = [tag_of(cls) for cls in structs]
    # The union alone is `anyOf` + msgspec's OpenAPI `discriminator`; the explicit object type
    # and tag enum make a validator's message name the problem (unknown tag, not an object).
    root = {
        "type": "object",
        "required": [tag_field],
        "properties": {tag_field: {"enum": tags}},
        **root,
    }
    rel = f"{topic}.schema.json"
    documents[rel] = _document(
        root,
        defs,
        rel_path=rel,
        title=f"{topic}: {summary}",
        description=f"A record value of the `{topic}` topic: one of {len(tags)} events, "
        f"chosen by `{tag_field}`.",
        base_uri=base_uri,
    )

    for cls, mirror in zip(structs, mirrors, strict=True):
        ((root,), defs) = msgspec.json.schema_components([mirror], schema_hook=_schema_hook)
        _describe_events(defs, [cls], topic)
        tag = tag_of(cls)
        rel = f"{folder}/{tag}.schema.json"
        documents[rel] = _document(
            root,
            defs,
            rel_path=rel,
            title=tag,
            description=f"A `{tag}` record value of the `{topic}` topic ({summary}).",
            base_uri=base_uri,
        )
    return documents


def build_schemas(base_uri: str = DEFAULT_BASE_URI) -> dict[str, dict[str, Any]]:
    """Every schema document, keyed by its path relative to the output directory."""
    if not base_uri.endswith("/"):
        base_uri += "/"
    documents = _family(
        PROCTORING_STRUCTS,
        topic=PROCTORING_TOPIC,
        folder="proctoring",
        tag_field="type",
        summary="Proctorme proctoring widget events",
        base_uri=base_uri,
    )
    documents.update(
        _family(
            INTERVIEW_STRUCTS,
            topic=INTERVIEW_TOPIC,
            folder="interview",
            tag_field="event",
            summary="micro1 AI-recruiter interview and applicant events",
            base_uri=base_uri,
        )
    )
    return documents


def export_schemas(out_dir: Path, base_uri: str = DEFAULT_BASE_URI) -> list[Path]:
    """Write every schema under `out_dir`; returns the written paths in a stable order."""
    written: list[Path] = []
    for rel, document in build_schemas(base_uri).items():
        path = Path(out_dir, *rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
        written.append(path)
    return written


def run_schema_command(out_dir: str = DEFAULT_OUT_DIR) -> int:
    """`worker schema [--out DIR]`: write the schemas and print their paths.

    Returns 0, or 1 (with one line on stderr) when the directory cannot be written.
    """
    try:
        paths = export_schemas(Path(out_dir))
    except OSError as exc:
        print(f"worker schema: cannot write to {out_dir}: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def add_parser(subparsers: Any) -> None:
    """Register `schema` on the CLI's subparsers."""
    schema = subparsers.add_parser(
        "schema", help="write JSON Schemas of the wire contract for producers"
    )
    schema.add_argument(
        "--out", default=DEFAULT_OUT_DIR, help="output directory (default: schema/)"
    )


def run(args: argparse.Namespace, _settings: Settings | None = None) -> int:
    """`worker schema`: needs no configuration, so a producer can run it without the worker's
    environment (the command table calls it with no settings)."""
    return run_schema_command(args.out)


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.tools.schema [--out DIR]`, the same as `worker schema`."""
    parser = argparse.ArgumentParser(
        prog="worker schema", description="Write JSON Schemas of the wire contract for producers."
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT_DIR, help=f"output directory (default: {DEFAULT_OUT_DIR}/)"
    )
    args = parser.parse_args(argv)
    return run_schema_command(args.out)


if __name__ == "__main__":
    sys.exit(main())
