"""Field types shared by both event families.

The constraints live in the types so that one `msgspec` decode both parses and validates: a
record that decodes is a record every handler can store.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Final

import msgspec

# Vendor IDs are opaque text; all we can demand is that they exist. The upper bound keeps a
# hostile producer from making the primary-key indexes carry megabyte entries.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=512, description="Opaque identifier")]

# Free text and URLs have no bound of their own (docs/contract.md §3): whatever the broker
# carries is stored. The broker's record size limit is the only limit.
Text = str
Url = Annotated[str, msgspec.Meta(min_length=1)]

# A Decimal decoded from the JSON number's own digits, so `85` stays `85` and `72.30` stays
# `72.30` all the way into the numeric column. msgspec cannot put ge/le on a Decimal, so the
# 0-100 range is checked by `check_score` in the structs' __post_init__.
Score = Annotated[
    Decimal, msgspec.Meta(description="Score from 0 to 100, stored exactly as written")
]

# msgspec's C parser takes RFC 3339 and `2024-01-01 10:00:00` (space, no offset, the micro1
# format). The contract accepts more (`12:05Z`, `+02`, basic format...): a record msgspec
# refuses for its timestamp is decoded again by worker.decode with `parse_timestamp`. Naive
# values are UTC by contract and are made aware by `utc` in __post_init__, on both paths.
Timestamp = Annotated[
    dt.datetime,
    msgspec.Meta(description="ISO 8601 timestamp; `Z` or an offset; no offset means UTC"),
]

# PostgreSQL's numeric has no NaN-free guarantee from msgspec's Decimal decoding, which also
# accepts "NaN" and "Infinity"; those are rejected by `check_decimal`.
DecimalValue = Annotated[Decimal, msgspec.Meta(description="Decimal number or decimal string")]

SCORE_MIN: Final = Decimal(0)
SCORE_MAX: Final = Decimal(100)
_MAX_DECIMAL = Decimal("1e12")


def parse_timestamp(text: str) -> dt.datetime:
    """A timestamp in any form `datetime.fromisoformat` accepts (docs/contract.md §3); naive if the
    text has no offset. `utc` still has to be applied, as for msgspec's own datetimes."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        reason = str(exc)
        # fromisoformat's generic message repeats the whole text: say it once, shortened.
        shown = repr(text) if len(text) <= 64 else repr(text[:64]) + "..."
        detail = "" if reason.startswith("Invalid isoformat string") else f": {reason}"
        raise ValueError(f"Invalid ISO 8601 timestamp {shown}{detail}") from None


def utc(value: dt.datetime, field: str = "timestamp") -> dt.datetime:
    """Return `value` in UTC; naive input is UTC by contract.

    An instant whose UTC date falls outside years 1-9999 (say 9999-12-31T23:59:59-14:00) is
    refused: PostgreSQL would store it, but no Python client could read the row back."""
    tz = value.tzinfo
    if tz is dt.UTC:
        return value  # as msgspec decodes `Z` and `+00:00`: already the instant in UTC
    if tz is None:
        return value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(
            f"`{field}` {value.isoformat()} is out of range: in UTC it falls outside years 1-9999"
        ) from None


def utc_or_none(value: dt.datetime | None, field: str = "timestamp") -> dt.datetime | None:
    return None if value is None else utc(value, field)


def check_score(value: Decimal | None, field: str) -> None:
    """Scores are percentages in the micro1 events; anything else is a producer bug."""
    if value is None:
        return
    # is_finite first: ordering a NaN raises InvalidOperation instead of answering.
    if not value.is_finite() or not SCORE_MIN <= value <= SCORE_MAX:
        raise ValueError(f"`{field}` must be a number from 0 to 100, got {value}")


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
