"""Rows are born with their age (worker/horizon.py, docs/contract.md §7): the upsert that
creates an `interviews`, `applicants` or `interview_reports` row writes its `last_event_at`,
so `raise_ages` after the handlers has nothing to write for it (a second write of every new
row cost the mixed workload about a quarter of its rate). A row stored before is raised only
when a later record's age moves past its own. Every interview sample of the seed document, on
a real PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest
from support.event_builders import sample
from support.storage import db, interview_item  # noqa: F401  (db is a fixture)

from worker.dev.seeds import interview_samples
from worker.horizon import AGED_TABLES, Ages, age_of, raise_ages, row_ages
from worker.router import apply_batch

pytestmark = pytest.mark.integration

UTC = dt.UTC
AT = dt.datetime(2026, 12, 6, 12, tzinfo=UTC)
# Kafka timestamps: the samples without a time of their own are aged by them.
STAMP = int(dt.datetime(2026, 12, 1, 9, tzinfo=UTC).timestamp() * 1000)


async def stored_ages(conn: asyncpg.Connection, ages: Ages) -> Ages:
    found: Ages = {}
    for table in AGED_TABLES:
        if table.name not in ages:
            continue
        keys = sorted(ages.get(table.name, ()))
        rows = await conn.fetch(
            f"SELECT {table.key} AS key, last_event_at FROM {table.name}"
            f" WHERE {table.key} = ANY($1::text[])",
            keys,
        )
        found[table.name] = {r["key"]: r["last_event_at"] for r in rows}
    return found


async def updated(conn: asyncpg.Connection, ages: Ages) -> int:
    """How many rows `raise_ages` writes, counted in its own subtransaction."""
    before = await conn.fetchval("SELECT sum(n_tup_upd) FROM pg_stat_xact_user_tables")
    await raise_ages(conn, ages)
    after = await conn.fetchval("SELECT sum(n_tup_upd) FROM pg_stat_xact_user_tables")
    return int(after - before)


async def test_rows_a_batch_creates_are_born_with_their_age(db: asyncpg.Connection) -> None:  # noqa: F811
    items = [interview_item(body, offset) for offset, body in enumerate(interview_samples())]
    ages = row_ages(items, lambda _: STAMP)
    assert {t.name for t in AGED_TABLES} <= ages.keys(), f"samples touch only {set(ages)}"
    async with db.transaction():
        await apply_batch(db, items, AT, ages)
        assert await stored_ages(db, ages) == ages, "a row was created without its age"
        assert await updated(db, ages) == 0, "raise_ages wrote rows the batch created"

    # A later record of a row stored before moves its age to a later day: raised, once.
    later = dt.datetime(2026, 12, 20, 8, tzinfo=UTC)
    started = interview_item(sample(interview_samples()[0], date_started=f"{later:%F %T}"), 99)
    again = row_ages([started], lambda _: int(later.timestamp() * 1000))
    assert again == {"interviews": {started.event.data.interview_id: age_of(later)}}
    async with db.transaction():
        await apply_batch(db, [started], AT, again)
        assert await updated(db, again) == 1
    assert await stored_ages(db, again) == again
