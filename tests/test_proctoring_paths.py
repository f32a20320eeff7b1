"""The two ways proctoring events reach their table (worker/handlers/proctoring.py): a direct
binary COPY when every event of the batch is new, the staged `ON CONFLICT` insert otherwise.
Whichever way a batch goes, the tables must equal the reference model's; these tests also
check which way was taken, since a wrong choice is correct but slow, or fast but wrong."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import asyncpg
import pytest
from support.event_builders import encode, proctoring
from support.reference_model import database_tables, diff_tables, model_tables
from support.storage import apply, db, proctoring_item  # noqa: F401

from schemas import proctoring as pr
from worker.handlers.base import Item
from worker.handlers.proctoring import ProctoringHandler
from worker.router import (
    ROUTES,
    apply_batch,
    prepare_batch,
    prepare_batch_cooperatively,
    prepare_parts,
    write_batch,
)

PROCTORING_TABLES = ("proctoring_events", "proctoring_sessions", "system_checks")
HANDLER = ROUTES[pr.PROCTORING_STRUCTS[0]]
assert isinstance(HANDLER, ProctoringHandler)

CHECK = {
    "success": True,
    "timestamp": "2025-09-21T11:59:00Z",
    "data": [{"name": "webcam", "status": "success", "finished": True}],
}


@pytest.fixture(autouse=True)
def direct_first() -> Iterator[None]:
    """Every test starts as a fresh worker does, and leaves the shared handler that way."""
    HANDLER.direct = True
    yield
    HANDLER.direct = True


def event(n: int, type_: str = "TAB_NOT_FOCUS", candidate: str = "cand-1", **extra: object) -> Item:
    at = dt.datetime(2025, 9, 21, 12, tzinfo=dt.UTC) + dt.timedelta(seconds=n)
    value = proctoring(type=type_, candidateId=candidate, createdAt=at.isoformat(), **extra)
    return proctoring_item(encode(value), offset=n)


def session_stream(first: int, count: int) -> list[Item]:
    """Events `first`.. of two sessions: a start, flags, an end, a system check."""
    items: list[Item] = []
    for n in range(first, first + count):
        candidate = f"cand-{n % 2}"
        kind = ("STARTED", "FACE_ABSENCE", "TAB_NOT_FOCUS", "PERIODIC_SNAPSHOT", "END_PROCTORING")[
            n % 5
        ]
        extra: dict[str, object] = {}
        if kind in ("FACE_ABSENCE", "PERIODIC_SNAPSHOT"):
            extra["mediaUrl"] = f"https://media.example/{n}.jpg"
        items.append(event(n, kind, candidate, **extra))
    items.append(event(first + count, "SYSTEM_CHECK_COMPLETED", "cand-0", systemCheck=CHECK))
    return [Item(i.event, i.topic, i.partition, o) for o, i in enumerate(items, first)]


async def matches_model(conn: asyncpg.Connection, delivered: Sequence[Item]) -> None:
    expected = {t: v for t, v in model_tables(delivered).items() if t in PROCTORING_TABLES}
    diff = diff_tables(expected, await database_tables(conn, PROCTORING_TABLES))
    assert not diff, f"tables differ from the reference model:\n{diff}"


async def test_new_events_go_direct(db: asyncpg.Connection) -> None:  # noqa: F811
    first, second = session_stream(0, 20), session_stream(100, 20)
    await apply(db, first)
    await apply(db, second)
    assert HANDLER.direct
    await matches_model(db, first + second)


async def test_a_duplicate_inside_a_batch_is_dropped_before_the_copy(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    """The first delivery of an event wins, its offset included; the batch still goes direct
    (had the duplicate reached the COPY, it would have failed over to the staged way)."""
    items = session_stream(0, 10)
    again = [Item(i.event, i.topic, i.partition, 50 + k) for k, i in enumerate(items[2:5])]
    batch = items[:5] + again + items[5:]
    await apply(db, batch)
    assert HANDLER.direct
    await matches_model(db, batch)
    offsets = await db.fetch("SELECT kafka_offset FROM proctoring_events ORDER BY kafka_offset")
    assert [r[0] for r in offsets] == [i.offset for i in items]


async def test_a_duplicate_across_slices_of_one_batch(db: asyncpg.Connection) -> None:  # noqa: F811
    """The worker prepares a batch in slices and combines them; an event repeated in a later
    slice must not reach the COPY either, nor count twice in the session."""
    items = session_stream(0, 12)
    batch = items + [Item(i.event, i.topic, i.partition, 90 + k) for k, i in enumerate(items)]
    prepared = await prepare_batch_cooperatively(batch, slice_size=5)
    async with db.transaction():
        await write_batch(db, prepared)
    assert HANDLER.direct
    await matches_model(db, batch)


async def test_stored_events_send_a_batch_the_staged_way_until_one_is_clean(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    stored, fresh, later = session_stream(0, 20), session_stream(200, 20), session_stream(400, 9)
    await apply(db, stored)
    # A replay of some stored events mixed with new ones: the COPY meets them, nothing of it
    # stays, and the staged insert stores the new ones once.
    replayed = stored[5:15] + fresh
    await apply(db, replayed)
    assert not HANDLER.direct
    await matches_model(db, stored + replayed)
    # Still staged: this batch repeats stored events too.
    await apply(db, stored[:3] + later[:4])
    assert not HANDLER.direct
    # A staged batch with nothing stored before: the next one goes direct again.
    await apply(db, later[4:])
    assert HANDLER.direct
    await matches_model(db, stored + replayed + stored[:3] + later)


async def test_the_first_and_last_instants_are_stored_as_instants(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    """asyncpg's binary encoder would store them as -infinity and infinity; such a batch
    goes the staged way, where they travel as numbers."""
    items = [
        proctoring_item(encode(proctoring(createdAt="0001-01-01T00:00:00Z")), offset=0),
        proctoring_item(encode(proctoring(createdAt="9999-12-31T23:59:59.999999Z")), offset=1),
        event(2),
    ]
    await apply(db, items)
    await matches_model(db, items)
    stored = await db.fetch("SELECT created_at::text FROM proctoring_events ORDER BY created_at")
    assert [r[0] for r in stored] == [
        "0001-01-01 00:00:00+00",
        "2025-09-21 12:00:02+00",
        "9999-12-31 23:59:59.999999+00",
    ]
    session = await db.fetchrow("SELECT last_event_at::text, flag_count FROM proctoring_sessions")
    assert tuple(session) == ("9999-12-31 23:59:59.999999+00", 3)


async def test_another_writer_storing_the_same_event_meanwhile(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    """Scripted: writer A stores event K and holds its transaction open; writer B's direct
    COPY of K and L waits on A's row; A commits; B's COPY fails on K, and B stores L the staged
    way. K counts once in the session."""
    k, other = event(1, "EXIT_FULLSCREEN"), event(2, "TAB_NOT_FOCUS")
    a = await asyncpg.connect(database_url)
    try:
        tx = a.transaction()
        await tx.start()
        await apply_batch(a, [k])
        b_done = asyncio.create_task(apply(db, [k, other]))
        # B is waiting on A's uncommitted row, not failing and not finishing.
        for _ in range(100):
            waiting = await a.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting == 1, "writer B never waited on writer A's row"
        assert not b_done.done()
        await tx.commit()
        await asyncio.wait_for(b_done, 30)
    finally:
        await a.close()
    assert not HANDLER.direct
    await matches_model(db, [k, k, other])


async def test_rows_built_while_decoding_prepare_as_the_items_do() -> None:
    """`prepare_parts` from the rows the worker builds beside each item (worker/consumer.py
    `_decode`) gives what `prepare_batch` gives from the items; a part whose rows are one short
    (a row failed to build) is prepared from its items."""
    items = session_stream(0, 12)
    items += [Item(i.event, i.topic, i.partition, 90 + k) for k, i in enumerate(items[:3])]
    whole = SimpleNamespace(items=items, rows=[HANDLER.row(*i) for i in items], row_handler=HANDLER)
    short = SimpleNamespace(items=items, rows=whole.rows[:-1], row_handler=HANDLER)
    expected = prepare_batch(items)
    for part in (whole, short):
        ((handler, got),) = await prepare_parts([part])
        ((_, want),) = expected
        assert handler is HANDLER
        assert got.rows == want.rows
        assert set(got.keys) == set(want.keys)
        assert got.checks == want.checks
        assert {k: vars_of(s) for k, s in got.sessions.items()} == {
            k: vars_of(s) for k, s in want.sessions.items()
        }


def vars_of(session: object) -> tuple[object, ...]:
    return tuple(getattr(session, name) for name in ("events", "flags", "last", "started", "ended"))


async def test_unguarded_a_stored_duplicate_loses_the_transaction_then_goes_staged(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    """Without a savepoint (the Committer's first attempt), the direct COPY meeting a stored
    event raises and leaves the handler staged; the guarded retry stores the rest."""
    stored, fresh = session_stream(0, 10), session_stream(300, 10)
    await apply(db, stored)
    batch = stored[3:6] + fresh
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.transaction():
            await write_batch(db, prepare_batch(batch), guarded=False)
    assert not HANDLER.direct
    async with db.transaction():
        await write_batch(db, prepare_batch(batch))
    await matches_model(db, stored + fresh)
