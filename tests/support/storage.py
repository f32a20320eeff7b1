"""Helpers for the storage tests: a migrated connection, decoding to items, table snapshots.

Test modules import the `db` fixture from here (`from support.storage import db`), the same
way conftest.py imports `support.infra`: pytest puts tests/ (it has no __init__.py) on sys.path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest

from worker.decode import EventDecoder, interview_decoder, proctoring_decoder
from worker.dlq import DecodeFailure
from worker.handlers.base import Item
from worker.migrate import CONTENT_TABLES, migrate
from worker.router import apply_batch

PROCTORING_TOPIC = "proctoring.events"
INTERVIEW_TOPIC = "interview.events"

VOLATILE_COLUMNS: frozenset[str] = frozenset({"updated_at", "ingested_at"})
KAFKA_COLUMNS: frozenset[str] = frozenset({"kafka_topic", "kafka_partition", "kafka_offset"})

Snapshot = dict[str, list[tuple[Any, ...]]]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh database with every migration applied."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        yield conn
    finally:
        await conn.close()


def decode_ok(decoder: EventDecoder, value: bytes) -> msgspec.Struct:
    """Decode `value`, failing the test with the decoder's reason if it does not decode."""
    event = decoder.decode(value)
    assert not isinstance(event, DecodeFailure), f"{value[:200]!r} did not decode: {event}"
    return event


def proctoring_item(value: bytes, offset: int = 0, partition: int = 0) -> Item:
    return Item(decode_ok(proctoring_decoder, value), PROCTORING_TOPIC, partition, offset)


def interview_item(value: bytes, offset: int = 0, partition: int = 0) -> Item:
    return Item(decode_ok(interview_decoder, value), INTERVIEW_TOPIC, partition, offset)


async def apply(conn: asyncpg.Connection, items: Sequence[Item]) -> None:
    """Apply one batch in its own transaction, as the consumer does."""
    async with conn.transaction():
        await apply_batch(conn, items)


async def apply_each(conn: asyncpg.Connection, items: Iterable[Item]) -> None:
    """Apply items one batch (and one transaction) per item."""
    for item in items:
        await apply(conn, [item])


async def table_columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT column_name FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = $1
        ORDER BY ordinal_position
        """,
        table,
    )
    return [r["column_name"] for r in rows]


async def snapshot(
    conn: asyncpg.Connection,
    tables: Sequence[str] = CONTENT_TABLES,
    exclude: dict[str, frozenset[str]] | None = None,
) -> Snapshot:
    """Every row of `tables` as sorted tuples, without volatile (and any `exclude`d) columns.

    jsonb comes back as PostgreSQL's canonical text, so equal documents compare equal.
    """
    exclude = exclude or {}
    result: Snapshot = {}
    for table in tables:
        skip = VOLATILE_COLUMNS | exclude.get(table, frozenset())
        cols = [c for c in await table_columns(conn, table) if c not in skip]
        assert cols, f"table {table} has no columns (is the schema migrated?)"
        col_list = ", ".join(f'"{c}"' for c in cols)
        order = ", ".join(str(i + 1) for i in range(len(cols)))
        rows = await conn.fetch(f"SELECT {col_list} FROM {table} ORDER BY {order}")
        result[table] = [tuple(r) for r in rows]
    return result


async def truncate_all(conn: asyncpg.Connection) -> None:
    await conn.execute(f"TRUNCATE {', '.join(CONTENT_TABLES)}, consumer_offsets")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)


# The timestamp notations the contract allows, for generators of test events.
NOTATIONS = ("Z", "millis", "+05:30", "naive_T", "naive_space")


def notate(moment: dt.datetime, notation: str) -> str:
    if notation == "Z":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if notation == "millis":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    if notation == "+05:30":
        shifted = moment + dt.timedelta(hours=5, minutes=30)
        return shifted.strftime("%Y-%m-%dT%H:%M:%S+05:30")
    if notation == "naive_T":
        return moment.strftime("%Y-%m-%dT%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")
