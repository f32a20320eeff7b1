"""Retention and time partitions (docs/contract.md §7, worker/retention.py, sql/005).

- Any instant of years 1-9999 stores (the seeds' instants, 0001-01-01, 9999-12-31), and a row
  in far_future never blocks creating the next month's partition: it moves into it.
- A database populated before partitioning (migrations 001-004) keeps every row through 005.
- Events spread over 400 days, a 90-day horizon: `worker retention apply --execute` drops the
  partitions past it (gone from the catalogue; no row deleted from the partitions that stay),
  the remaining rows equal the reference model's, and `worker offsets reset --to-earliest
  --execute` under a running worker changes no table and counts the expired records.
- Sessions are deleted while inserts go on, in chunks that commit one by one; a pass cut
  short between the sessions and the drop is finished by the next, and a replay in between
  stores nothing (defect 7 of issue 25).
- Interview data over 300 days, a 90-day interview horizon: the rows older than it (by
  `last_event_at`, the reference model's ages) are deleted and a replay from offset 0 under a
  worker with the horizon changes no table; the worker sweeps them once a day, the command at
  once.

The reference model's retention rules are exercised by tests/test_model_properties.py too
(hypothesis streams, a drop, a replay from offset 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from support.e2e import (
    committed_offsets,
    running_worker,
    settings_for,
    snapshot_diff,
    table_snapshot,
    wait_for,
    wait_for_offsets,
    worker_env,
)
from support.infra import Topics
from support.offsets import produce_to, run_offsets_cli
from support.reference_model import Model, database_ages, database_tables, diff_tables
from support.storage import (
    PROCTORING_TOPIC,
    apply,
    db,  # noqa: F401  (fixture)
    decode_ok,
    snapshot,
)

from worker import retention
from worker.config import Settings
from worker.decode import interview_decoder, proctoring_decoder
from worker.dev.seeds import proctoring_samples, system_check_example
from worker.handlers.base import Item
from worker.horizon import Horizon, Span
from worker.migrate import load_migrations, migrate

pytestmark = pytest.mark.integration

UTC = dt.UTC
FIRST = dt.datetime(1, 1, 1, tzinfo=UTC)
LAST = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
GRACE = dt.timedelta(hours=1)  # the model's statement of retention.GRACE


def event(
    exam: str, kind: str, at: dt.datetime, candidate: str = "cand", check_at: Any = None
) -> bytes:
    body: dict[str, Any] = {
        "examId": exam,
        "candidateId": candidate,
        "type": kind,
        "createdAt": at.isoformat(),
    }
    if kind in ("FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED", "PERIODIC_SNAPSHOT"):
        body["mediaUrl"] = f"https://m.example/{exam}/{at.timestamp()}.jpg"
    if kind == "SYSTEM_CHECK_COMPLETED":
        stamp = (check_at or at - dt.timedelta(minutes=1)).isoformat()
        body["systemCheck"] = {"success": True, "timestamp": stamp, "data": []}
    return json.dumps(body).encode()


def items_of(bodies: Sequence[bytes], partition: int = 0) -> list[Item]:
    return [
        Item(decode_ok(proctoring_decoder, b), PROCTORING_TOPIC, partition, n)
        for n, b in enumerate(bodies)
    ]


async def partition_of(conn: asyncpg.Connection, table: str, column: str) -> dict[Any, str]:
    rows = await conn.fetch(f"SELECT {column} AS at, tableoid::regclass::text AS p FROM {table}")
    return {r["at"]: r["p"] for r in rows}


# -- any instant stores; far_future never blocks the next month ----------------------------------


async def test_seed_and_edge_instants_store_and_far_future_moves_into_new_months(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    now = dt.datetime.now(UTC)
    # The first month maintenance will have to create when the clock moves on two months.
    soon = retention.add_months(retention.month_floor(now), retention.AHEAD_MONTHS) + dt.timedelta(
        days=3, hours=2
    )
    check = json.loads(system_check_example())
    bodies = [
        *proctoring_samples(),
        event("edge", "STARTED", FIRST),
        event("edge", "END_PROCTORING", LAST),
        event("edge", "SYSTEM_CHECK_COMPLETED", LAST, check_at=FIRST),
        event("edge", "TAB_NOT_FOCUS", soon),
        event("edge", "SYSTEM_CHECK_COMPLETED", soon, check_at=soon),
    ]
    seeded = dict(json.loads(proctoring_samples()[0]), type="SYSTEM_CHECK_COMPLETED")
    bodies.append(json.dumps({**seeded, "systemCheck": check}).encode())
    items = items_of(bodies)
    for batch in (items[:5], items[5:]):
        await apply(db, batch)
    expected = Model().apply_all(items).tables()
    diff = diff_tables(expected, await database_tables(db))
    assert not diff, diff
    where = await partition_of(db, "proctoring_events", "created_at")
    assert where[FIRST] == "proctoring_events_far_past"
    assert where[LAST] == "proctoring_events_far_future"
    assert where[soon] == "proctoring_events_far_future"

    # Two months later: the month of `soon` is created out of far_future, and its rows move.
    later = now + dt.timedelta(days=62)
    done = await retention.apply_locked(db, None, wait=True, now=later)
    assert done is not None and all(t.ahead for t in done.tables), done
    month = f"p{retention.month_floor(soon):%Y%m}"
    where = await partition_of(db, "proctoring_events", "created_at")
    assert where[soon] == f"proctoring_events_{month}"
    assert where[LAST] == "proctoring_events_far_future"
    checks = await partition_of(db, "system_checks", "checked_at")
    assert checks[soon] == f"system_checks_{month}" and checks[FIRST] == "system_checks_far_past"
    diff = diff_tables(expected, await database_tables(db))
    assert not diff, f"rows changed when partitions were created:\n{diff}"
    # Still storable afterwards, on both sides of the new bounds.
    extra = items_of([event("edge2", "TAB_NOT_FOCUS", t) for t in (FIRST, soon, LAST)], 1)
    await apply(db, extra)
    expected = Model().apply_all([*items, *extra]).tables()
    assert not diff_tables(expected, await database_tables(db))


# -- a pre-partitioning database upgrades without loss ---------------------------------------------


async def test_migration_keeps_every_row_of_a_populated_database(database_url: str) -> None:
    now = dt.datetime.now(UTC).replace(microsecond=0)
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, [m for m in load_migrations() if m.version <= 4])
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_partitioned_table "
            "WHERE partrelid = 'proctoring_events'::regclass"
        )
        bodies = [
            event(f"e{n % 5}", kind, now - dt.timedelta(days=n * 7, minutes=n))
            for n in range(110)  # two years, weekly
            for kind in ("TAB_NOT_FOCUS", "SYSTEM_CHECK_COMPLETED")
        ]
        bodies += [event("edge", "STARTED", FIRST), event("edge", "END_PROCTORING", LAST)]
        bodies.append(event("edge", "SYSTEM_CHECK_COMPLETED", now, check_at=FIRST))
        # This release's system-check insert reads retention_state (created by 005): a
        # stand-in for this connection while it writes rows as a release before 005 did.
        await conn.execute(
            "CREATE TEMP VIEW retention_state AS SELECT NULL::timestamptz AS expired_before"
        )
        await apply(conn, items_of(bodies))
        await conn.execute("DROP VIEW pg_temp.retention_state")
        before = await snapshot(conn)
        assert len(before["proctoring_events"]) == len(bodies)
        assert await migrate(conn) == [m.version for m in load_migrations() if m.version > 4]
        after = await snapshot(conn)
        assert after == before
        for table in ("proctoring_events", "system_checks"):
            parts = await retention.partitions(conn, table, rows=True)
            # Months laid out from the oldest row of the last ten years, not one big far_past.
            past = next(p for p in parts if p.kind == retention.FAR_PAST)
            oldest = now - dt.timedelta(days=109 * 7, minutes=110)  # the oldest check
            assert past.hi == retention.month_floor(oldest)
            assert past.rows == 1, parts
            assert sum(p.rows or 0 for p in parts) == len(before[table])
    finally:
        await conn.close()


# -- 400 days, a 90-day horizon, a drop and a replay ---------------------------------------------


def spread(now: dt.datetime) -> list[tuple[int, bytes]]:
    """(partition, record) over 400 days: sessions wholly old, wholly recent and mixed ones
    with flags on both sides of the horizon; no instant within a day of it."""
    out: list[tuple[int, bytes]] = []
    kinds = ("STARTED", "TAB_NOT_FOCUS", "FACE_ABSENCE", "SYSTEM_CHECK_COMPLETED", "END_PROCTORING")
    for n, age in enumerate(d for d in range(0, 400, 3) if abs(d - 90) > 1):
        at = now - dt.timedelta(days=age, hours=7)
        exam = "old" if age > 150 else "recent" if age < 40 else f"mixed{n % 3}"
        out.append((n % 4, event(exam, kinds[n % len(kinds)], at, candidate=f"c{n % 2}")))
        if age % 2:
            out.append((n % 4, event("mixed0", "EXIT_FULLSCREEN", at, candidate="c0")))
    return out


async def retention_cli(settings: Settings, days: dict[str, int], *args: str) -> str:
    """`worker retention ARGS` with the horizons `days` ({setting name: days})."""
    env = worker_env(settings, {Settings.env_name(k): str(v) for k, v in days.items()})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "retention",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out.decode()}\n{err.decode()}"
    return out.decode()


async def catalogue(database_url: str) -> dict[str, int]:
    """Every partition of the two tables and the rows it holds."""
    conn = await asyncpg.connect(database_url)
    try:
        return {
            p.name: p.rows or 0
            for table, _ in retention.TABLES
            for p in await retention.partitions(conn, table, rows=True)
        }
    finally:
        await conn.close()


async def deleted_rows(database_url: str, names: Sequence[str]) -> int:
    """Rows ever deleted from these partitions (statistics, flushed by the sessions' ends)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return await conn.fetchval(
            "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables WHERE relname = ANY($1)",
            list(names),
        )
    finally:
        await conn.close()


async def test_horizon_drops_partitions_and_a_replay_changes_nothing(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    now = dt.datetime.now(UTC)
    records = spread(now)
    await produce_to(
        kafka_bootstrap,
        topics.proctoring,
        {p: [(None, v, None) for q, v in records if q == p] for p in range(4)},
    )
    end = {(topics.proctoring, p): sum(1 for q, _ in records if q == p) for p in range(4)}
    # The stream in an order the partitions allow, for the model.
    items = [
        Item(decode_ok(proctoring_decoder, v), topics.proctoring, p, n)
        for p in range(4)
        for n, v in enumerate(v for q, v in records if q == p)
    ]
    model = Model().apply_all(items)

    # 1. Kept forever: everything stores.
    keep = settings_for(kafka_bootstrap, database_url, topics)
    async with running_worker(keep):
        await wait_for_offsets(database_url, topics.group_id, end)
    assert not diff_tables(model.tables(), await _tables(database_url))
    before = await catalogue(database_url)

    # 2. A 90-day horizon, applied by the operator command.
    printed = await retention_cli(keep, {"proctoring_retention_days": 90}, "apply", "--execute")
    month = retention.month_floor(now - dt.timedelta(days=90) - GRACE)
    model.drop_before(month)
    after = await catalogue(database_url)
    dropped = sorted(set(before) - set(after))
    assert dropped, f"nothing dropped:\n{printed}"
    assert all(f"drop {name}" in printed for name in dropped), printed
    assert before[f"proctoring_events_{retention.FAR_PAST}"] > 0  # 310 days of rows went
    conn = await asyncpg.connect(database_url)
    try:
        gone = await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname = ANY($1)", dropped)
        assert gone == 0, "dropped partitions still in the catalogue"
        assert await conn.fetchval("SELECT expired_before FROM retention_state") == month
    finally:
        await conn.close()
    assert await deleted_rows(database_url, list(after)) == 0, "rows were DELETEd"
    tables = await _tables(database_url)
    diff = diff_tables(model.tables(), tables)
    assert not diff, f"after the drop:\n{diff}"
    assert tables["proctoring_sessions"] and all(
        s["last_event_at"] >= month for s in tables["proctoring_sessions"].values()
    )
    assert ("old", "c0") not in tables["proctoring_sessions"]
    assert sum(after.values()) == len(tables["proctoring_events"]) + len(tables["system_checks"])

    # 3. A replay from offset 0 under a running worker with the horizon: no table changes.
    replay = Model(90, dt.datetime.now(UTC))
    replay.expired_before = month
    replay.apply_all(items)
    assert replay.expired[topics.proctoring] < len(items)
    horizon = settings_for(kafka_bootstrap, database_url, topics, proctoring_retention_days=90)
    await replay_from_zero(horizon, topics.proctoring, end, replay.expired[topics.proctoring])
    assert not diff_tables(model.tables(), await _tables(database_url))


async def replay_from_zero(
    s: Settings, topic: str, end: dict[tuple[str, int], int], expected_expired: int
) -> None:
    """`worker offsets reset --to-earliest` under a worker with settings `s`: every table is
    unchanged, `expected_expired` records of `topic` are counted as expired, none is
    dead-lettered."""
    assert expected_expired > 0
    snap = await table_snapshot(s.database_url, offsets=False)
    async with running_worker(s) as worker:
        await wait_for_offsets(s.database_url, s.group_id, end)
        result = await run_offsets_cli(s, "reset", "--to-earliest", "--execute")
        assert result.code == 0, result
        assert all(v == 0 for v in (await committed_offsets(s.database_url, s.group_id)).values())

        def expired() -> float:
            return (
                worker.metrics.registry.get_sample_value(
                    "worker_records_expired_total", {"topic": topic}
                )
                or 0.0
            )

        async def replayed() -> bool:
            return expired() >= expected_expired

        await wait_for(replayed, 60, "the replay's expired records counted")
        await wait_for_offsets(s.database_url, s.group_id, end)
        assert expired() == expected_expired
        assert worker.stats["dead_lettered"] == 0
    changed = snapshot_diff(snap, await table_snapshot(s.database_url, offsets=False))
    assert changed == "identical", f"the replay changed tables:\n{changed}"


async def _tables(database_url: str) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await database_tables(conn)
    finally:
        await conn.close()


async def exams(conn: asyncpg.Connection) -> set[str]:
    return {r["exam_id"] for r in await conn.fetch("SELECT exam_id FROM proctoring_sessions")}


async def test_sessions_go_in_bounded_batches_and_a_pass_cut_short_is_finished_by_the_next(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect 7 of issue 25, the steps: the sessions are deleted in chunks that commit one by
    one (a chunk waiting for a locked session leaves the earlier chunks' deletes visible);
    then the drop fails (a reader holds the partition past the lock timeout), as a process
    dying between the two steps would leave it (the older months, dropped one at a time, are
    gone and recorded). A replay in between stores nothing, even through a worker with no
    horizon at all; the next pass drops and records the rest."""
    monkeypatch.setattr(retention, "SWEEP_ROWS", 2)
    monkeypatch.setattr(retention, "DROP_ATTEMPTS", 3)
    now = dt.datetime.now(UTC)
    # A first pass with a long horizon leaves month partitions down to 300 days ago.
    await retention.apply_locked(db, 300, wait=True, now=now)
    old = now - dt.timedelta(days=200)
    bodies = [event(f"old{n}", "STARTED", old + dt.timedelta(minutes=n)) for n in range(5)]
    olds = items_of(bodies)
    await apply(db, [*olds, *items_of([event("recent", "STARTED", now - dt.timedelta(days=1))])])
    month = f"proctoring_events_p{retention.month_floor(old):%Y%m}"
    sessions, partition, applier = [await asyncpg.connect(database_url) for _ in range(3)]
    chunk = sessions.transaction()
    await chunk.start()
    await sessions.execute("SELECT 1 FROM proctoring_sessions WHERE exam_id = 'old2' FOR UPDATE")
    reading = partition.transaction()
    await reading.start()
    await partition.execute(f'SELECT count(*) FROM "{month}"')
    applying = asyncio.create_task(retention.apply_locked(applier, 90, wait=True, now=now))
    try:
        await wait_waiting(db, "proctoring_sessions")
        assert await exams(db) == {"old2", "old3", "old4", "recent"}, "one chunk at a time"
        await chunk.rollback()
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(applying, 30)
        assert await exams(db) == {"recent"}
        # The months before the held one were dropped (one at a time), it and later ones not.
        assert await retention.read_expired_before(db) == retention.month_floor(old)
        assert await db.fetchval("SELECT to_regclass($1)::text", month) == month
        # Between the steps: the sessions' records are past the horizon, and their events are
        # still stored, so not even a replay that sifts nothing brings a session back.
        kept, gone = Horizon(Span(90)).sift(olds, now=now)
        assert (kept, gone) == ([], olds)
        await apply(db, olds)
        assert await exams(db) == {"recent"}
        await reading.rollback()
        done = await retention.apply_locked(applier, 90, wait=True, now=now)
    finally:
        for conn in (sessions, partition, applier):
            conn.terminate()
    assert done is not None and month in {p.name for t in done.tables for p in t.drop}
    assert await db.fetchval("SELECT to_regclass($1)", month) is None
    assert await retention.read_expired_before(db) == retention.month_floor(
        now - dt.timedelta(days=90) - GRACE
    )
    assert await exams(db) == {"recent"}


# -- interview data: a 90-day horizon, deletes and a replay -------------------------------------


def interview_spread(now: dt.datetime) -> list[tuple[int, bytes, int]]:
    """(partition, record, Kafka timestamp in ms) of candidates' journeys 3 to 300 days old,
    each record's timestamp its own time; plus a report whose recording came 195 days after
    it (kept whole), an applicant dated 2999 by a clock far ahead of its timestamp (aged by the
    timestamp), and a recording of a report never created (aged by its timestamp)."""
    out: list[tuple[int, bytes, int]] = []

    def add(partition: int, event: str, at: dt.datetime, **data: Any) -> None:
        body = json.dumps({"event": event, "data": data}).encode()
        out.append((partition, body, int(at.timestamp() * 1000)))

    for n, age in enumerate((3, 20, 60, 130, 200, 300)):
        at = now - dt.timedelta(days=age, hours=5)
        p, cand, stamp = n % 2, f"cand-{age}", at.strftime("%Y-%m-%d %H:%M:%S")
        add(
            p,
            "applicant.created",
            at,
            micro1_job_application_id=f"a-{age}",
            candidate_id=cand,
            candidate_name="Ann",
            date_modified=stamp,
        )
        add(
            p,
            "interview.started",
            at,
            interview_id=f"i-{age}",
            candidate_id=cand,
            date_started=stamp,
        )
        add(
            p,
            "interview_report.created",
            at,
            report_id=f"r-{age}",
            interview_id=f"i-{age}",
            candidate_id=cand,
            date_modified=stamp,
            interview_transcript=[{"content": "hi"}],
            proctoring_violations=[{"type": "tab_switch", "value": "2"}],
        )
        add(
            p,
            "interview_recording.completed",
            at + dt.timedelta(hours=1),
            report_id=f"r-{age}",
            candidate_id=cand,
            interview_recording_url=f"https://v/{age}",
        )
    old, late = now - dt.timedelta(days=200), now - dt.timedelta(days=5)
    add(
        0,
        "interview_report.created",
        old,
        report_id="r-late",
        interview_id="i-late",
        candidate_id="cand-late",
        date_modified=old.strftime("%Y-%m-%d %H:%M:%S"),
    )
    add(
        0,
        "interview_recording.completed",
        late,
        report_id="r-late",
        candidate_id="cand-late",
        interview_recording_url="https://v/late",
    )
    add(
        1,
        "applicant.updated",
        old,
        micro1_job_application_id="a-ahead",
        candidate_id="cand-ahead",
        date_modified="2999-01-01 00:00:00",
    )
    add(
        1,
        "proctoring_score.completed",
        old,
        report_id="r-orphan",
        candidate_id="cand-x",
        proctoring_score=50,
    )
    return out


async def ages(database_url: str) -> dict[str, dict[str, dt.datetime]]:
    conn = await asyncpg.connect(database_url)
    try:
        return await database_ages(conn)
    finally:
        await conn.close()


async def test_interview_horizon_deletes_old_rows_and_a_replay_changes_nothing(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    """Interview data stored without a horizon; `worker retention apply --execute` with a
    90-day interview horizon deletes the rows whose latest record is older (the reference
    model's `drop_interviews`), and a replay from offset 0 under a worker with the horizon
    stores nothing, counts the old records as expired and dead-letters none."""
    now = dt.datetime.now(UTC)
    records = interview_spread(now)
    await produce_to(
        kafka_bootstrap,
        topics.interview,
        {p: [(None, v, ts) for q, v, ts in records if q == p] for p in range(2)},
    )
    end = {(topics.interview, p): sum(1 for q, *_ in records if q == p) for p in range(2)}
    items, timestamps = [], {}
    for p in range(2):
        mine = [(v, ts) for q, v, ts in records if q == p]
        for n, (v, ts) in enumerate(mine):
            items.append(Item(decode_ok(interview_decoder, v), topics.interview, p, n))
            timestamps[(topics.interview, p, n)] = ts
    model = Model().apply_all(items, timestamps)

    keep = settings_for(kafka_bootstrap, database_url, topics)
    async with running_worker(keep):
        await wait_for_offsets(database_url, topics.group_id, end)
    assert not diff_tables(model.tables(), await _tables(database_url))
    assert await ages(database_url) == model.stamps, "last_event_at is not the model's"

    printed = await retention_cli(keep, {"interview_retention_days": 90}, "apply", "--execute")
    model.drop_interviews(now - dt.timedelta(days=90) - GRACE)
    tables = await _tables(database_url)
    diff = diff_tables(model.tables(), tables)
    assert not diff, f"after the deletes:\n{diff}\n{printed}"
    assert set(tables["interview_reports"]) == {("r-3",), ("r-20",), ("r-60",), ("r-late",)}
    assert not {k for k in tables["proctoring_violations"] if k[0] in ("r-130", "r-300")}
    assert set(tables["applicants"]) == {("a-3",), ("a-20",), ("a-60",)}, printed
    assert "interview_reports: delete 4 rows" in printed, printed
    assert await ages(database_url) == model.stamps

    replay = Model(None, dt.datetime.now(UTC), 90)
    replay.interview_expired_before = model.interview_expired_before
    replay.apply_all(items, timestamps)
    assert replay.expired[topics.interview] < len(items)
    horizon = settings_for(kafka_bootstrap, database_url, topics, interview_retention_days=90)
    await replay_from_zero(horizon, topics.interview, end, replay.expired[topics.interview])
    assert await ages(database_url) == model.stamps, "the replay changed last_event_at"


async def test_maintenance_runs_on_one_replica_at_a_time(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    other = await asyncpg.connect(database_url)
    try:
        await db.execute("SELECT pg_advisory_lock($1)", retention.LOCK_ID)
        assert await retention.apply_locked(other, 90, wait=False) is None
        await db.execute("SELECT pg_advisory_unlock($1)", retention.LOCK_ID)
        assert await retention.apply_locked(other, 90, wait=False) is not None
    finally:
        await other.close()


# -- defect 7 (issue 25): sessions are deleted while ingest goes on ------------------------------


async def wait_waiting(conn: asyncpg.Connection, fragment: str, timeout: float = 10.0) -> None:
    """Until a backend running a statement containing `fragment` waits for a lock."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND strpos(query, $1) > 0 AND pid <> pg_backend_pid()",
        fragment,
    ):
        assert asyncio.get_running_loop().time() < deadline, f"no {fragment!r} waited for a lock"
        await asyncio.sleep(0.01)


async def test_inserts_go_on_while_retention_deletes_sessions(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    """Retention deletes the sessions of dropped months; one of them is locked by a
    transaction (as an in-flight batch or a reader holding it would), so the delete waits.
    While it waits, an insert into proctoring_events must not: deleting sessions must not
    happen under the partitions' ACCESS EXCLUSIVE lock."""
    now = dt.datetime.now(UTC)
    old = now - dt.timedelta(days=200)
    bodies = [event(f"old{n}", "STARTED", old + dt.timedelta(minutes=n)) for n in range(5)]
    await apply(db, items_of([*bodies, event("recent", "STARTED", now - dt.timedelta(days=1))]))
    holder = await asyncpg.connect(database_url)
    applier = await asyncpg.connect(database_url)
    writer = await asyncpg.connect(database_url)
    holding = holder.transaction()
    await holding.start()
    await holder.execute("SELECT 1 FROM proctoring_sessions WHERE exam_id = 'old2' FOR UPDATE")
    applying = asyncio.create_task(retention.apply_locked(applier, 90, wait=True, now=now))
    try:
        await wait_waiting(db, "proctoring_sessions")
        await writer.execute("SET lock_timeout = '1s'")
        try:
            await apply(writer, items_of([event("live", "TAB_NOT_FOCUS", now)], 1))
        except asyncpg.LockNotAvailableError as exc:
            pytest.fail(
                f"an insert into proctoring_events waited while sessions were deleted: {exc}"
            )
        await holding.rollback()
        await asyncio.wait_for(applying, 30)
    finally:
        if not applying.done():
            await holding.rollback()
        with contextlib.suppress(Exception):
            await applying
        for conn in (holder, applier, writer):
            await conn.close()
    sessions = {r["exam_id"] for r in await db.fetch("SELECT exam_id FROM proctoring_sessions")}
    assert sessions == {"recent", "live"}
    assert await retention.read_expired_before(db) == retention.month_floor(
        now - dt.timedelta(days=90) - GRACE
    )


async def test_a_session_made_current_while_the_sweep_waits_is_kept_under_repeatable_read(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    """The database's `default_transaction_isolation` is REPEATABLE READ. A batch holds an old
    session and makes it current (a late event of it); the sweep deleting old sessions waits
    for it. Once the batch commits, the sweep must re-check the row and keep it, as at READ
    COMMITTED, not fail the pass on a serialization error (retention sets its isolation, as
    the batches and the erasure do: docs/contract.md §7)."""
    name = await db.fetchval("SELECT current_database()")
    await db.execute(
        f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
    )
    now = dt.datetime.now(UTC)
    old = now - dt.timedelta(days=200)
    await apply(db, items_of([event(f"old{n}", "STARTED", old) for n in range(3)]))
    batch = await asyncpg.connect(database_url)
    applier = await asyncpg.connect(database_url)
    try:
        late = batch.transaction(isolation="read_committed")
        await late.start()
        await batch.execute(
            "UPDATE proctoring_sessions SET last_event_at = $1 WHERE exam_id = 'old1'", now
        )
        applying = asyncio.create_task(retention.apply_locked(applier, 90, wait=True, now=now))
        await wait_waiting(db, "proctoring_sessions")
        await late.commit()
        try:
            await asyncio.wait_for(applying, 30)
        except asyncpg.SerializationError as exc:
            pytest.fail(f"the retention pass failed on the batch's update: {exc}")
    finally:
        for conn in (batch, applier):
            await conn.close()
    sessions = {r["exam_id"] for r in await db.fetch("SELECT exam_id FROM proctoring_sessions")}
    assert sessions == {"old1"}, f"sessions left: {sessions}"


async def test_interview_rows_are_swept_once_a_day_by_the_worker_and_at_once_by_the_command(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    """A sweep scans the interview tables: `worker run`'s passes make one when the bound has
    moved a day (`INTERVIEW_SWEEP_EVERY`) since the last; `apply --execute` at once. A row
    without an age goes by `updated_at`."""
    now = dt.datetime.now(UTC)
    day = retention.INTERVIEW_SWEEP_EVERY
    every = {"interview_days": 30, "interview_every": day}
    await retention.apply_locked(db, None, wait=True, now=now, **every)
    old = now - dt.timedelta(days=100)
    await db.execute(
        "INSERT INTO applicants (job_application_id, candidate_id, status, last_event_at, "
        "updated_at) VALUES ('aged', 'c', 'created', $1, now()), ('unaged', 'c', 'created', "
        "NULL, $1), ('young', 'c', 'created', $2, now())",
        old,
        now,
    )

    async def left() -> set[str]:
        return {r[0] for r in await db.fetch("SELECT job_application_id FROM applicants")}

    done = await retention.apply_locked(db, None, wait=True, now=now + day / 2, **every)
    assert (
        done is not None
        and done.interview.rows == {}
        and await left()
        == {
            "aged",
            "unaged",
            "young",
        }
    )
    done = await retention.apply_locked(db, None, wait=True, now=now + day, **every)
    assert done is not None and done.interview.rows["applicants"] == 2
    assert await left() == {"young"}
    assert (await retention.read_removed(db)).interview == retention.drop_bound(30, now + day)
    await db.execute(
        "INSERT INTO applicants (job_application_id, candidate_id, status, last_event_at) "
        "VALUES ('aged', 'c', 'created', $1)",
        old,
    )
    done = await retention.apply_locked(db, None, wait=True, interview_days=30)
    assert done is not None and done.interview.rows["applicants"] == 1


async def test_a_sweep_walks_the_primary_key_once(
    db: asyncpg.Connection,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each chunk of a sweep starts after the greatest key of the one before (all key columns
    compared): every session is looked at once, and only the old ones go."""
    now = dt.datetime.now(UTC)
    keys = [(e, c) for e in ("a", "b", "c") for c in ("x", "y", "z")]
    await db.executemany(
        "INSERT INTO proctoring_sessions (exam_id, candidate_id, last_event_at) "
        "VALUES ($1, $2, $3)",
        [(e, c, now - dt.timedelta(days=200 if c == "y" else 1)) for e, c in keys],
    )
    monkeypatch.setattr(retention, "SWEEP_ROWS", 2)
    chunks: list[tuple[int, tuple[str, str]]] = []

    class Watched:
        """`db`, noting what each chunk looked at and where the next one starts."""

        def transaction(self, **options: Any) -> Any:
            return db.transaction(**options)

        async def execute(self, *args: Any) -> str:
            return await db.execute(*args)

        async def fetchrow(self, *args: Any) -> Any:
            row = await db.fetchrow(*args)
            chunks.append((row["scanned"], (row["exam_id"], row["candidate_id"])))
            return row

    bound = now - dt.timedelta(days=90)
    columns = ("exam_id", "candidate_id")
    older = retention._SESSION_OLDER
    deleted = await retention._sweep(Watched(), "proctoring_sessions", columns, older, bound)
    assert deleted == 3
    starts = [("a", "y"), ("b", "x"), ("b", "z"), ("c", "y"), ("c", "z")]
    assert chunks == [(2, k) for k in starts[:-1]] + [(1, starts[-1])]
    left = await db.fetch("SELECT exam_id, candidate_id FROM proctoring_sessions ORDER BY 1, 2")
    assert [tuple(r) for r in left] == [k for k in keys if k[1] != "y"]
