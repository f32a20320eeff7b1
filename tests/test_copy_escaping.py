"""Proctoring events travel to PostgreSQL as COPY text: every character a producer may send in
a text field must come back exactly, and `\\N` text must not turn into NULL."""

from __future__ import annotations

import datetime as dt
import json

import asyncpg
import pytest
from support.storage import db  # noqa: F401

from worker.decode import proctoring_decoder
from worker.handlers.base import Item
from worker.router import apply_batch

AWKWARD = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\\\N and \\t literally",
    "",
    "ünïcödé ✓ 😀 中文",
    "quote \" and ' and , and ;",
    "trailing backslash\\",
    "\u2028 line separator and \u00a0 nbsp",
]


@pytest.mark.parametrize("text", AWKWARD)
async def test_text_fields_survive_copy(db: asyncpg.Connection, text: str) -> None:  # noqa: F811
    created = dt.datetime(2025, 9, 21, 12, 0, 0, 654321, tzinfo=dt.UTC)
    value = json.dumps(
        {
            "examId": f"exam {text}",
            "candidateId": f"cand {text}",
            "type": "FACE_ABSENCE",
            "description": text,
            "mediaUrl": f"https://m.example/{text}",
            "createdAt": created.isoformat(),
        }
    ).encode()
    event = proctoring_decoder.decode(value)
    async with db.transaction():
        await apply_batch(db, [Item(event, "topic\twith tab", 2, 41)])
    row = await db.fetchrow("SELECT * FROM proctoring_events")
    assert row["exam_id"] == f"exam {text}"
    assert row["candidate_id"] == f"cand {text}"
    assert row["description"] == text
    assert row["media_url"] == f"https://m.example/{text}"
    assert row["created_at"] == created
    assert row["kafka_topic"] == "topic\twith tab"
    assert (row["kafka_partition"], row["kafka_offset"]) == (2, 41)
    session = await db.fetchrow("SELECT * FROM proctoring_sessions")
    assert session["exam_id"] == f"exam {text}"
    assert session["flag_count"] == 1


@pytest.mark.parametrize(
    "created",
    [
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "2024-02-29T12:34:56.000001+05:30",
    ],
)
async def test_timestamps_survive_copy_exactly(db: asyncpg.Connection, created: str) -> None:  # noqa: F811
    value = json.dumps(
        {"examId": "e", "candidateId": "c", "type": "TAB_NOT_FOCUS", "createdAt": created}
    ).encode()
    event = proctoring_decoder.decode(value)
    async with db.transaction():
        await apply_batch(db, [Item(event, "t", 0, 0)])
    stored = await db.fetchval("SELECT created_at FROM proctoring_events")
    expected = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    assert stored == expected
