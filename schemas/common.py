"""Field types shared by both event families.

The constraints live in the types so that one `msgspec` decode both parses and validates: a
record that decodes is a record every handler can store.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated

import msgspec

# Vendor IDs are opaque text; all we can demand is that they exist. The upper bound keeps a
# hostile producer from making the primary-key indexes carry megabyte entries.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=512, description="Opaque identifier")]

# Free text and URLs: bounded so one record cannot exceed what a btree or a log line can bear.
Text = Annotated[str, msgspec.Meta(max_length=65_536)]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=8_192)]

# Scores are percentages in the micro1 events (`85`); a wider value is a producer bug.
Score = Annotated[float, msgspec.Meta(ge=0, le=100, description="Score from 0 to 100")]

# msgspec parses RFC 3339 and also `2024-01-01 10:00:00` (space separator, no offset), which is
# exactly the micro1 format; naive values are UTC by contract and are made aware in __post_init__.
Timestamp = Annotated[
    dt.datetime,
    msgspec.Meta(description="ISO 8601 timestamp; `Z` or an offset; no offset means UTC"),
]

# PostgreSQL's numeric has no NaN-free guarantee from msgspec's Decimal decoding, which also
# accepts "NaN" and "Infinity"; those are rejected by `check_decimal`.
DecimalValue = Annotated[Decimal, msgspec.Meta(description="Decimal number or decimal string")]

_MAX_DECIMAL = Decimal("1e12")


def utc(value: dt.datetime) -> dt.datetime:
    """Return `value` in UTC; naive input is UTC by contract.

    An instant whose UTC date falls outside years 1-9999 (say 9999-12-31T23:59:59-14:00) is
    refused: PostgreSQL would store it, but no Python client could read the row back."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(
            f"timestamp {value.isoformat()} is out of range: in UTC it falls outside years 1-9999"
        ) from None


def utc_or_none(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else utc(value)


def check_decimal(value: Decimal | None, field: str) -> None:
    """Reject NaN, infinities and magnitudes no sane score has (they would overflow a column)."""
    if value is None:
        return
    if not value.is_finite():
        raise ValueError(f"`{field}` must be a finite number, got {value}")
    if abs(value) >= _MAX_DECIMAL:
        raise ValueError(f"`{field}` is out of range: {value}")


def tag_of(obj: msgspec.Struct | type[msgspec.Struct]) -> str:
    """The wire tag (`type` or `event`) of a tagged struct or struct class."""
    cls = obj if isinstance(obj, type) else type(obj)
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} is not a tagged struct")
    return tag
