"""Exact interleavings of fetch, seek, fence, revoke, reassignment, commit and shutdown, played
on the real Worker with a scripted Kafka (tests/support/scripted_kafka.py) and a REAL PostgreSQL.

A slow commit is a real one: the test holds a PostgreSQL lock (a `SELECT ... FOR UPDATE` of a
partition's consumer_offsets row, an UPDATE as a new owner would make, or `LOCK TABLE`), so
the worker's compare-and-set waits until the test commits or rolls back.

Every record of a partition has its own primary key in proctoring_events (the event time is
derived from its offset), so `kafka_offset` tells which records were applied. A record applied
twice is invisible there (ON CONFLICT DO NOTHING): repeats show instead as dead letters sent
twice and as consumer_offsets moving backwards (a poller watches it). Assertions are on the
database and on what the scripted producer received, never on the worker's counters; each
test collects every violation it sees and reports them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaTimeoutError, TopicAuthorizationFailedError
from support import infra
from support.e2e import settings_for
from support.pg_proxy import PgProxy
from support.scripted_kafka import (
    RunningWorker,
    ScriptedBroker,
    ScriptedClients,
    ScriptedConsumer,
    ScriptedProducer,
    start_worker,
)

from worker import consumer as consumer_module
from worker import offsets as offsets_module
from worker import ownership as ownership_module
from worker import pauses as pauses_module
from worker.config import Settings
from worker.migrate import migrate_url
from worker.tools.forget import Bounds, count_rows, erase

pytestmark = pytest.mark.integration

PROCTORING = "scripted.proctoring"
P0, P1, P2 = (TopicPartition(PROCTORING, p) for p in range(3))
BAD = b"{not json"
BASE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def settings(database_url: str, **overrides: Any) -> Settings:
    topics = infra.Topics(
        proctoring=PROCTORING,
        interview="scripted.interview",
        dlq="scripted.dlq",
        group_id=infra.unique_name("g_"),
    )
    tuned: dict[str, Any] = {
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
        "fetch_wait_ms": 20,
        "db_lanes": 2,
        "db_pool_size": 4,
        "shutdown_timeout_s": 10.0,
    }
    tuned.update(overrides)
    return settings_for("scripted:9092", database_url, topics, **tuned)


def event(tp: TopicPartition, offset: int) -> bytes:
    """A valid proctoring event whose primary key is (partition, offset)."""
    created = BASE + dt.timedelta(seconds=offset)
    return json.dumps(
        {
            "examId": f"exam-{tp.partition}",
            "candidateId": "cand",
            "type": "TAB_NOT_FOCUS",
            "createdAt": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "description": f"record {offset}",
        }
    ).encode()


def fill(
    consumer: ScriptedConsumer, tp: TopicPartition, count: int, bad: Iterable[int] = ()
) -> range:
    """Append `count` records to `tp`; those at offsets in `bad` are malformed (dead letters)."""
    malformed = set(bad)
    start = consumer.broker.end(tp)
    for offset in range(start, start + count):
        value = BAD if offset in malformed else event(tp, offset)
        consumer.append(tp, value, key=f"exam-{tp.partition}:cand".encode())
    return range(start, start + count)


def spans(offsets: Iterable[int]) -> str:
    """Offsets as compact ranges: "3, 10-19"."""
    out: list[str] = []
    for _, group in itertools.groupby(enumerate(sorted(offsets)), lambda p: p[1] - p[0]):
        run = [o for _, o in group]
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ", ".join(out)


def dead_letters_of(sent: Any) -> tuple[int, int]:
    """A dead letter's original (partition, offset)."""
    partition, offset = sent.header("dlq.original.partition"), sent.header("dlq.original.offset")
    assert partition is not None and offset is not None, sent.headers
    return int(partition), int(offset)


def dead_letters(producer: ScriptedProducer) -> Counter[tuple[int, int]]:
    """Acknowledged dead letters by original (partition, offset)."""
    return Counter(dead_letters_of(s) for s in producer.acked)


# -- the database side ------------------------------------------------------------------------


class Db:
    """The test's own look at the worker's database, and the locks it holds."""

    def __init__(self, url: str, group_id: str) -> None:
        self.url = url
        self.group_id = group_id
        self.conn: asyncpg.Connection | None = None
        self._others: list[asyncpg.Connection] = []

    async def __aenter__(self) -> Db:
        self.conn = await asyncpg.connect(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in [*self._others, self.conn]:
            if conn is not None:
                conn.terminate()

    async def connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.url)
        self._others.append(conn)
        return conn

    def _c(self) -> asyncpg.Connection:
        assert self.conn is not None
        return self.conn

    async def offsets(self) -> dict[TopicPartition, int]:
        rows = await self._c().fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            self.group_id,
        )
        return {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def rows(self, tp: TopicPartition) -> Counter[int]:
        rows = await self._c().fetch(
            "SELECT kafka_offset FROM proctoring_events "
            "WHERE kafka_topic = $1 AND kafka_partition = $2",
            tp.topic,
            tp.partition,
        )
        return Counter(r["kafka_offset"] for r in rows)

    async def wait_offsets(
        self, expected: dict[TopicPartition, int], run: RunningWorker, timeout: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            run.check_alive()
            stored = await self.offsets()
            if all(stored.get(tp) == n for tp, n in expected.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"offsets {expected} not reached; stored: {stored}")
            await asyncio.sleep(0.02)

    async def lock_waiters(self) -> list[int]:
        """Backends of this database waiting for a lock (the worker's blocked commits)."""
        rows = await self._c().fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return [r["pid"] for r in rows]

    async def wait_lock_waiters(self, n: int, timeout: float = 10.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(pids := await self.lock_waiters()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} commits blocked on the test's locks never happened")
            await asyncio.sleep(0.01)
        return pids

    async def wait_statement_waiting(self, fragment: str, timeout: float = 10.0) -> None:
        """Until a backend of this database running a statement that contains `fragment` is
        waiting for a lock."""
        deadline = time.monotonic() + timeout
        while not await self._c().fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND strpos(query, $1) > 0",
            fragment,
        ):
            if time.monotonic() > deadline:
                raise AssertionError(f"no statement with {fragment!r} waited for a lock")
            await asyncio.sleep(0.01)

    async def terminate(self, pids: list[int]) -> None:
        await self._c().execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", pids)

    async def lock_row(self, tp: TopicPartition) -> tuple[asyncpg.Connection, Any]:
        """Open a transaction holding the row lock of `tp`'s consumer_offsets row."""
        conn = await self.connect()
        tx = conn.transaction()
        await tx.start()
        found = await conn.fetchval(
            "SELECT next_offset FROM consumer_offsets "
            "WHERE group_id = $1 AND topic = $2 AND partition = $3 FOR UPDATE",
            self.group_id,
            tp.topic,
            tp.partition,
        )
        assert found is not None, f"no consumer_offsets row for {tp} to lock"
        return conn, tx

    async def move(self, conn: asyncpg.Connection, tp: TopicPartition, offset: int) -> None:
        """As a new owner that applied the records up to `offset` would (in `conn`'s
        transaction)."""
        await conn.execute(
            "UPDATE consumer_offsets SET next_offset = $4, updated_at = now() "
            "WHERE group_id = $1 AND topic = $2 AND partition = $3",
            self.group_id,
            tp.topic,
            tp.partition,
            offset,
        )


class OffsetWatch:
    """Polls consumer_offsets while the scenario runs: next_offset must never move back."""

    def __init__(self, url: str, group_id: str) -> None:
        self.url = url
        self.group_id = group_id
        self.seen: dict[TopicPartition, list[int]] = {}
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT topic, partition, next_offset FROM consumer_offsets "
                    "WHERE group_id = $1",
                    self.group_id,
                )
                for r in rows:
                    seq = self.seen.setdefault(TopicPartition(r["topic"], r["partition"]), [])
                    if not seq or seq[-1] != r["next_offset"]:
                        seq.append(r["next_offset"])
                await asyncio.sleep(0.003)
        finally:
            conn.terminate()

    async def __aenter__(self) -> OffsetWatch:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    def backwards(self) -> list[str]:
        return [
            f"consumer_offsets.next_offset of {tp} moved backwards: {seq}"
            for tp, seq in sorted(self.seen.items())
            if any(b < a for a, b in itertools.pairwise(seq))
        ]


@contextlib.asynccontextmanager
async def scenario(
    database_url: str, s: Settings, clients: ScriptedClients
) -> AsyncIterator[tuple[RunningWorker, Db, OffsetWatch]]:
    # The worker stops last: the test's connections (and the locks they hold) are gone by then.
    async with (
        start_worker(s, clients) as run,
        Db(database_url, s.group_id) as db,
        OffsetWatch(database_url, s.group_id) as watch,
    ):
        yield run, db, watch


async def owned(worker: Any) -> tuple[int | None, set[TopicPartition] | None]:
    """What the worker reports as owned: readiness()'s `partitions_owned`, and the set of
    partitions where a view of them exists (a public one first, then the known internals)."""
    _, detail = await worker.readiness()
    count = detail.get("partitions_owned")
    view: set[TopicPartition] | None = None
    for name in ("owned_partitions", "owned", "partitions", "_partitions"):
        obj = getattr(worker, name, None)
        if obj is None:
            continue
        obj = obj() if callable(obj) and not hasattr(obj, "consuming") else obj
        if hasattr(obj, "consuming") and callable(obj.consuming):
            view = {state.tp for state in obj.consuming()}
        elif hasattr(obj, "stored_offsets"):
            view = set(obj.stored_offsets())
        elif isinstance(obj, set | frozenset | dict | list):
            view = {tp for tp in obj if isinstance(tp, TopicPartition)}
        else:
            continue
        break
    if view is None and isinstance(getattr(worker, "_positions", None), dict):
        view = set(worker._positions)
    return count, view


def check_rows(
    problems: list[str],
    counts: Counter[int],
    tp: TopicPartition,
    present: Iterable[int] = (),
    absent: Iterable[int] = (),
    what: str = "",
) -> None:
    missing = [o for o in present if counts[o] != 1]
    there = [o for o in absent if counts[o]]
    if missing:
        problems.append(f"{tp}: records not stored exactly once: {spans(missing)}")
    if there:
        problems.append(f"{tp}: records stored that must not be{what}: {spans(there)}")


def where(exc: BaseException) -> str:
    """The innermost frame of `exc` in the worker's code, as "file:line: source"."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/worker/" in f.filename]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.rsplit('/worker/', 1)[1]}:{f.lineno}: {f.line}"


async def accounted(run: RunningWorker, consumed: int, timeout: float = 5.0) -> dict[str, int]:
    """The worker's counts once they cover `consumed` records: a batch is counted just after
    the commit that stores its offsets, so waiting for the offsets alone can read them early."""
    deadline = time.monotonic() + timeout
    while run.worker.stats.get("consumed", 0) < consumed and time.monotonic() < deadline:
        run.check_alive()
        await asyncio.sleep(0.01)
    return dict(run.worker.stats)


def check_common(problems: list[str], run: RunningWorker, watch: OffsetWatch | None) -> None:
    exc = run.failure()
    if exc is not None:
        problems.append(f"the worker exited with {exc!r} at worker/{where(exc)}")
    if run.consumer.listener_errors:
        problems.append(f"the rebalance listener raised: {run.consumer.listener_errors!r}")
    if watch is not None:
        problems.extend(watch.backwards())


# -- a. fence during decode -------------------------------------------------------------------

# Records of the other partition in the fetch that is being decoded while the fence lands:
# the decode yields every 500 records, so this many give the fence ~40 turns of the loop.
DECODED_RECORDS = 20_000


@pytest.mark.parametrize("decoded_first", ["other partition", "fenced partition"])
async def test_a_fence_during_decode_continues_from_the_new_owners_offset(
    database_url: str, decoded_first: str
) -> None:
    """P1's batch [10, 110) is blocked in its compare-and-set by the test's row lock. A new
    owner stores P1 at 300 (having applied [10, 300)) inside the test's transaction. The next
    fetch returns P0's 20 000 records and P1's [110, 400), in that order (or P1's first);
    the test commits right away, so the fence, the re-read and the seek to 300 happen while
    that fetch is being decoded. Nothing of P1 below 300 may be stored after the fence,
    nothing from 300 skipped, and the offsets end at the log ends."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2, max_batch_records=50_000, max_batch_bytes=64 << 20)
    clients = ScriptedClients(s)
    c = clients.scripted_consumer
    fill(c, P0, 10)
    fill(c, P1, 10)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 10, P1: 10}, run)

        owner, tx = await db.lock_row(P1)
        fill(c, P1, 100)  # [10, 110): its commit blocks on the row lock
        await db.wait_lock_waiters(1)
        await db.move(owner, P1, 300)
        await c.wait_waiting()
        # Appended while the worker waits for data: one fetch returns them all, in this order.
        if decoded_first == "other partition":
            fill(c, P0, DECODED_RECORDS)
            fill(c, P1, 290, bad={150, 350})
        else:
            fill(c, P1, 290, bad={150, 350})
            fill(c, P0, DECODED_RECORDS)
        await tx.commit()  # the fence lands now, during the decode of that fetch
        await db.wait_offsets({P0: 10 + DECODED_RECORDS, P1: 400}, run)
        await asyncio.sleep(0.2)  # a late commit would show now

        problems: list[str] = []
        p0, p1 = await db.rows(P0), await db.rows(P1)
        check_rows(problems, p0, P0, present=range(10 + DECODED_RECORDS))
        check_rows(problems, p1, P1, present=range(10), absent=range(10, 300), what=" (below 300)")
        check_rows(problems, p1, P1, present=[o for o in range(300, 400) if o != 350])
        letters = dead_letters(run.producer)
        if letters != {(1, 350): 1}:
            problems.append(
                f"dead letters by (partition, offset): {dict(letters)}, expected {{(1, 350): 1}}"
            )
        stored = await db.offsets()
        if stored != {P0: 10 + DECODED_RECORDS, P1: 400}:
            problems.append(f"consumer_offsets: {stored}")
        check_common(problems, run, watch)
        fences = [i for i, (tp, o) in enumerate(c.seeks) if tp == P1 and o == 300]
        if not fences:
            problems.append(f"the worker never continued P1 from 300; seeks: {c.seeks}")
        assert not problems, "\n".join(problems)


# -- b. revoke during commit ------------------------------------------------------------------


@pytest.mark.parametrize("hold_s", [0.2, 11.5], ids=["shorter-than-any-wait", "longer-than-10s"])
async def test_b_revoke_during_commit(database_url: str, hold_s: float) -> None:
    """Two commits are in flight when the group revokes everything: P0's (lane 0) blocked in
    its compare-and-set by the test's row lock, P1's (lane 1) waiting for the broker's
    acknowledgement of a dead letter (the producer holds it). Both are released after
    `hold_s` (0.2 s: before the worker stops waiting for its commits; 11.5 s: after the 10 s
    the worker waits at most), then the group assigns only P2. The worker must keep running,
    own only P2, and each in-flight commit must have stored its rows and offset together or
    neither."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2)
    clients = ScriptedClients(s, partitions=3)
    c, p = clients.scripted_consumer, clients.scripted_producer
    fill(c, P0, 5)
    fill(c, P1, 5)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 5, P1: 5}, run)

        _, tx = await db.lock_row(P0)
        p.hold_sends()
        fill(c, P0, 10)  # [5, 15): blocked on the row lock
        fill(c, P1, 10, bad={8})  # [5, 15): blocked on the dead letter's acknowledgement
        await db.wait_lock_waiters(1)
        await p.wait_held(1)

        revoking = asyncio.create_task(c.revoke())
        await asyncio.sleep(hold_s)
        await tx.rollback()
        p.release_sends()
        await asyncio.wait_for(revoking, 30)
        await c.assign({P2})
        fill(c, P2, 5)

        problems: list[str] = []
        try:
            await db.wait_offsets({P2: 5}, run)
        except AssertionError as exc:
            problems.append(f"P2 was not consumed after the rebalance: {exc}")
        await asyncio.sleep(0.3)  # let any late commit land

        count, view = await owned(run.worker)
        if count != 1:
            problems.append(f"readiness reports {count} partitions owned, expected 1 (P2)")
        if view is not None and view != {P2}:
            problems.append(f"the worker's view of owned partitions: {sorted(view)}, expected [P2]")
        stored = await db.offsets()
        for tp, bad in ((P0, set()), (P1, {8})):
            rows = await db.rows(tp)
            batch = [o for o in range(5, 15) if o not in bad]
            got = [o for o in batch if rows[o] == 1]
            if stored.get(tp) == 15 and len(got) == len(batch):
                continue
            if stored.get(tp) == 5 and not got:
                continue
            problems.append(
                f"{tp}: in-flight commit half done: next_offset {stored.get(tp)}, "
                f"rows of [5, 15) stored: {spans(got) or 'none'}"
            )
        if stored.get(P1) == 15 and dead_letters(p)[(1, 8)] < 1:
            problems.append("P1 moved past offset 8 without its dead letter acknowledged")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- c. reassignment to the same worker mid-commit --------------------------------------------


async def test_c_reassignment_to_the_same_worker_mid_commit(database_url: str) -> None:
    """P0's batch [5, 15) with two malformed records (7, 12) has had its dead letters
    acknowledged and is blocked in its compare-and-set; P1's batch is blocked too. The group
    revokes both partitions and gives them back to this worker while both commits are still
    blocked. P1's commit is released first (so the worker is free to position the reassigned
    partitions while P0's still waits), then P0's. No dead letter may be sent twice, no
    record stored twice, next_offset never moves backwards, and the offsets reach the ends."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2)
    clients = ScriptedClients(s)
    c, p = clients.scripted_consumer, clients.scripted_producer
    fill(c, P0, 5)
    fill(c, P1, 5)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 5, P1: 5}, run)

        _, tx0 = await db.lock_row(P0)
        _, tx1 = await db.lock_row(P1)
        fill(c, P0, 10, bad={7, 12})
        fill(c, P1, 10)
        await db.wait_lock_waiters(2)
        await p.until(lambda: dead_letters(p) == {(0, 7): 1, (0, 12): 1}, 5.0, "letters")

        started = time.monotonic()
        await asyncio.wait_for(c.revoke(), 30)  # the worker may wait for its commits here
        revoke_s = time.monotonic() - started
        seeks_before = len(c.seeks)
        await c.assign({P0, P1})
        await tx1.rollback()
        await db.wait_offsets({P1: 15}, run)
        # Whatever the worker does with the reassigned P0 while its old commit still waits.
        with contextlib.suppress(AssertionError):
            await c.wait_seek(P0, timeout=1.0, after=seeks_before)
        await asyncio.sleep(0.2)
        await tx0.rollback()
        await db.wait_offsets({P0: 15, P1: 15}, run)
        fill(c, P0, 5)
        fill(c, P1, 5)
        await db.wait_offsets({P0: 20, P1: 20}, run)
        await asyncio.sleep(0.2)

        problems: list[str] = []
        letters = dead_letters(p)
        if letters != {(0, 7): 1, (0, 12): 1}:
            problems.append(f"dead letters by (partition, offset): {dict(letters)}")
        check_rows(problems, await db.rows(P0), P0, [o for o in range(20) if o not in (7, 12)])
        check_rows(problems, await db.rows(P1), P1, range(20))
        check_common(problems, run, watch)
        count, _ = await owned(run.worker)
        if count != 2:
            problems.append(f"readiness reports {count} partitions owned, expected 2")
        assert not problems, "\n".join(problems) + f"\n(the revoke took {revoke_s:.1f}s)"


# -- d. seek while a fetch is in flight -------------------------------------------------------


@pytest.mark.parametrize("in_flight", ["waiting fetch", "drain of another partition"])
async def test_d_seek_while_a_fetch_is_in_flight(database_url: str, in_flight: str) -> None:
    """P0's batch [10, 20) is blocked in its compare-and-set; the worker's next fetch is in
    flight (held) with P0's records from 20 on when a new owner stores P0 at 30: the worker
    is fenced and seeks P0 to 30 before the fetch returns. None of the records fetched from
    the old position may be stored.

    "waiting fetch": the held call is the worker's wait for data, which took P0's record 20.
    "drain of another partition": the held call is the worker's getmany of P1 within the same
    fetch, after P0's records [20, 40) were already returned to it (aiokafka 0.14's getmany
    with buffered data never suspends, so this one is latent with it; the decode's yields,
    scenario a, open the same window for real)."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2)
    clients = ScriptedClients(s)
    c = clients.scripted_consumer
    fill(c, P0, 10)
    fill(c, P1, 10)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 10, P1: 10}, run)

        owner, tx = await db.lock_row(P0)
        fill(c, P0, 10)  # [10, 20): blocked on the row lock
        await db.wait_lock_waiters(1)
        await c.wait_waiting()
        if in_flight == "waiting fetch":
            c.hold_fetches()
            fill(c, P0, 20)
        else:
            c.hold_fetches(P1)
            fill(c, P0, 20)
            fill(c, P1, 10)
        held = await c.wait_held()
        await db.move(owner, P0, 30)
        await tx.commit()
        await c.wait_seek(P0, 30)
        c.release_fetches()
        await db.wait_offsets({P0: 40, P1: 20 if in_flight != "waiting fetch" else 10}, run)
        await asyncio.sleep(0.2)

        problems: list[str] = []
        p0 = await db.rows(P0)
        check_rows(problems, p0, P0, present=range(10), absent=range(10, 30), what=" (below 30)")
        check_rows(problems, p0, P0, present=range(30, 40))
        if in_flight != "waiting fetch":
            check_rows(problems, await db.rows(P1), P1, present=range(20))
        stored = await db.offsets()
        if stored[P0] != 40:
            problems.append(f"consumer_offsets of P0: {stored[P0]}, expected 40")
        if dead_letters(run.producer):
            problems.append(f"dead letters: {dict(dead_letters(run.producer))}")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems) + f"\n(held call: {held})"


# -- e. shutdown during retry -----------------------------------------------------------------


@pytest.mark.parametrize("failure", ["backend terminated", "command timeout"])
async def test_e_shutdown_during_retry_then_restart(database_url: str, failure: str) -> None:
    """P0's batch fails transiently while the next batch of P0 waits behind it: its backend
    is terminated while the compare-and-set waits for the test's row lock, or every statement
    on consumer_offsets times out (the test holds LOCK TABLE ... ACCESS EXCLUSIVE; the batch
    is split down to one record first, as for any timeout). While the worker backs off,
    stop() is called. Nothing of the abandoned batch nor of the batches behind it may
    commit; a worker started again on the same database stores every record exactly once and
    the offsets reach the log end."""
    await migrate_url(database_url)
    if failure == "backend terminated":
        s = settings(
            database_url, db_lanes=1, max_batch_records=20, retry_initial_s=1.0, retry_max_s=1.0
        )
        batch = 60
    else:
        s = settings(
            database_url,
            db_lanes=1,
            max_batch_records=2,
            db_command_timeout_s=1.0,
            retry_initial_s=1.0,
            retry_max_s=1.0,
        )
        batch = 10
    clients = ScriptedClients(s)
    c = clients.scripted_consumer
    fill(c, P0, 10)
    problems: list[str] = []
    async with Db(database_url, s.group_id) as db:
        async with start_worker(s, clients) as run:
            await c.assign({P0})
            await db.wait_offsets({P0: 10}, run)
            pauses_before = len(c.pauses)
            locker = await db.connect()
            tx = locker.transaction()
            await tx.start()
            if failure == "backend terminated":
                await locker.fetchval(
                    "SELECT next_offset FROM consumer_offsets WHERE group_id = $1 "
                    "AND topic = $2 AND partition = $3 FOR UPDATE",
                    s.group_id,
                    P0.topic,
                    P0.partition,
                )
                fill(c, P0, batch)  # [10, 30) blocks; [30, 50) is fetched behind it
                pids = await db.wait_lock_waiters(1)
                await c.wait_delivered(P0, 50)
                await db.terminate(pids)
            else:
                await locker.execute("LOCK TABLE consumer_offsets IN ACCESS EXCLUSIVE MODE")
                fill(c, P0, batch)  # [10, 12) times out, is split, [10] times out; [12, 14) behind
            # The worker pauses every partition when it starts backing off.
            await c.until(
                lambda: any(P0 in ps for ps in c.pauses[pauses_before:]), 15.0, "the back-off"
            )
            delivered = c.delivered_end(P0)
            run.worker.stop()
            await tx.rollback()
            exc = await run.stop()
            if exc is not None:
                problems.append(f"the worker exited with {exc!r}")
        stored = await db.offsets()
        if stored[P0] != 10:
            problems.append(f"after the stop, P0's next_offset is {stored[P0]}, expected 10")
        rows = await db.rows(P0)
        check_rows(problems, rows, P0, present=range(10))
        check_rows(
            problems, rows, P0, absent=range(10, 10 + batch), what=f" (fetched to {delivered})"
        )

        # Restart on the same database and the same log.
        again = ScriptedClients(s, broker=clients.broker)
        async with start_worker(s, again) as run2:
            await again.scripted_consumer.assign({P0})
            await db.wait_offsets({P0: 10 + batch}, run2)
            await asyncio.sleep(0.2)
            check_rows(problems, await db.rows(P0), P0, present=range(10 + batch))
            check_common(problems, run2, None)
    assert not problems, "\n".join(problems)


# -- the fake itself: the aiokafka guarantees the scenarios rely on ---------------------------


async def test_scripted_consumer_keeps_aiokafkas_fetch_guarantees() -> None:
    c = ScriptedConsumer(broker=ScriptedBroker({"t": 2}))
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    heard: list[tuple[str, set[TopicPartition]]] = []

    class Listener:
        async def on_partitions_revoked(self, tps: set[TopicPartition]) -> None:
            await asyncio.sleep(0.05)  # a revoke waits for the listener
            heard.append(("revoked", tps))

        async def on_partitions_assigned(self, tps: set[TopicPartition]) -> None:
            heard.append(("assigned", tps))

    c.subscribe(["t"], listener=Listener())
    # Before the first assignment getmany waits for it, whatever its timeout.
    early = asyncio.create_task(c.getmany(timeout_ms=0))
    await asyncio.sleep(0.02)
    assert not early.done()
    for i in range(3):
        c.append(b, b"b%d" % i)
        c.append(a, b"a%d" % i)
    await c.assign({a, b})
    first = await early
    # Partitions in the order their data arrived, records in offset order, positions moved.
    assert [(tp, [r.offset for r in rs]) for tp, rs in first.items()] == [
        (b, [0, 1, 2]),
        (a, [0, 1, 2]),
    ]
    assert (await c.position(a), await c.position(b)) == (3, 3)
    assert await c.getmany(timeout_ms=10) == {}
    # A paused partition returns nothing; max_records is honoured.
    c.append(a, b"a3")
    c.append(b, b"b3")
    c.pause(b)
    assert {tp: [r.offset for r in rs] for tp, rs in (await c.getmany()).items()} == {a: [3]}
    c.resume(b)
    # A fetch in flight whose partition is seeked returns nothing for it, the rest as usual.
    c.append(a, b"a4")
    c.hold_fetches()
    inflight = asyncio.create_task(c.getmany(timeout_ms=1000))
    held = await c.wait_held()
    c.seek(a, 1)
    c.release_fetches()
    assert {tp: [r.offset for r in rs] for tp, rs in (await inflight).items()} == {b: [3]}
    assert held.dropped == {a: (4, 5)}
    assert [r.offset for r in (await c.getmany(a))[a]] == [1, 2, 3, 4]
    # A revoke awaits the listener; getmany waits until the new assignment.
    waiting = asyncio.create_task(c.getmany(timeout_ms=0))
    await c.revoke()
    assert heard[-1] == ("revoked", {a, b})
    await asyncio.sleep(0.02)
    assert not waiting.done()
    await c.commit({a: 2})
    await c.assign({a})
    assert heard[-1] == ("assigned", {a})
    assert await c.position(a) == 2  # fresh state at the committed offset
    assert [r.offset for r in (await waiting)[a]] == [2, 3, 4]
    with pytest.raises(IllegalStateError):
        c.seek(b, 0)
    with pytest.raises(AssertionError):
        c.highwater(b)


async def test_scripted_producer_acknowledges_fails_or_holds_sends() -> None:
    p = ScriptedProducer(broker=ScriptedBroker({"dlq": 1}))
    assert (await (await p.send("dlq", value=b"v", key=b"k"))).offset == 0
    p.fail_sends(1)
    with pytest.raises(KafkaTimeoutError):
        await (await p.send("dlq", value=b"x"))
    p.hold_sends()
    pending = await p.send("dlq", value=b"y", headers=[("h", b"1")])
    await p.wait_held(1)
    assert not pending.done()
    p.release_sends()
    assert (await pending).offset == 1
    assert [(s.value, s.outcome) for s in p.sent] == [
        (b"v", "acked"),
        (b"x", "failed"),
        (b"y", "acked"),
    ]


async def test_f_stop_while_joining_the_group(database_url: str) -> None:
    """SIGTERM before the group has assigned anything: aiokafka's getmany waits for the
    assignment whatever its timeout, so a worker waiting inside it must still stop at once
    (campaign 7 saw members forced out after shutdown_timeout_s + 5)."""
    await migrate_url(database_url)
    s = settings(database_url, shutdown_timeout_s=20.0)
    clients = ScriptedClients(s)
    async with start_worker(s, clients) as run:
        await run.consumer.wait_inside()  # in getmany, nothing assigned
        started = time.monotonic()
        failure = await run.stop(timeout=10.0)
        assert failure is None, failure
        assert time.monotonic() - started < 5.0


# -- g. records polled while a lane backs off -------------------------------------------------


async def test_g_records_polled_while_a_lane_backs_off_are_read_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P0's commit outlasts a rebalance's wait for it (a row lock), so the reassigned P0 is
    positioned only once it ends; P1 is positioned first and its new batch waits for its dead
    letter's acknowledgement. When P0's old commit ends the loop positions P0, but that read
    of consumer_offsets is held (the test's ACCESS EXCLUSIVE lock, queued behind P0's commit).
    Meanwhile P1's dead letter is refused and its lane backs off with every partition paused,
    polling. When the read returns, P0 must stay paused with the rest until the back-off ends;
    whatever a poll returns must be read again, never skipped: every record of P0 stored once
    and its offset at the log end."""
    monkeypatch.setattr(ownership_module, "REVOKE_WAIT_S", 0.3)
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2, max_batch_records=5)
    clients = ScriptedClients(s)
    c, p = clients.scripted_consumer, clients.scripted_producer
    fill(c, P0, 5)
    fill(c, P1, 5)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 5, P1: 5}, run)

        _, tx0 = await db.lock_row(P0)
        p.hold_sends()
        fill(c, P0, 5)  # [5, 10): lane 0's commit waits on the row lock
        fill(c, P1, 5, bad={7})  # [5, 10): lane 1 waits for its dead letter's acknowledgement
        await db.wait_lock_waiters(1)
        await p.wait_held(1)
        await asyncio.wait_for(c.revoke(), 10)  # gives up waiting after 0.3 s: both retire
        await c.assign({P0, P1})  # each is positioned once its old commit ends
        p.fail_held()  # P1's old commit ends (its batch is no longer ours): P1 positioned at 5
        await c.until(lambda: P1 in run.worker.owned(), 5.0, "P1 positioned")
        await p.wait_held(1)  # P1's new batch [5, 10) waits for its dead letter

        locker = await db.connect()
        ltx = locker.transaction()
        await ltx.start()
        locking = asyncio.create_task(
            locker.execute("LOCK TABLE consumer_offsets IN ACCESS EXCLUSIVE MODE")
        )
        await db.wait_statement_waiting("LOCK TABLE")  # queued behind lane 0's commit
        fill(c, P0, 10)  # [10, 20): read once P0 is positioned
        await tx0.rollback()  # P0's old commit stores [5, 10) and ends
        await locking
        # P0's positioning reads its consumer_offsets row: held.
        await db.wait_statement_waiting("(topic, partition) IN")
        p.fail_sends()
        p.fail_held()  # lane 1 backs off, every partition paused, polling
        p.release_sends()
        await c.until(lambda: run.worker.retrying, 5.0, "lane 1 backing off")
        await ltx.rollback()  # P0's positioning ends
        await asyncio.sleep(1.5)  # polls of the back-off
        fill(c, P0, 5)  # [20, 25)
        p.stop_failing()
        await db.wait_offsets({P1: 10}, run)
        await asyncio.sleep(0.5)
        fill(c, P0, 5)  # [25, 30): a batch after the back-off must not span a hole
        problems: list[str] = []
        try:
            await db.wait_offsets({P0: 30}, run)
        except AssertionError as exc:
            problems.append(str(exc))
        await asyncio.sleep(0.2)
        check_rows(problems, await db.rows(P0), P0, present=range(30))
        check_rows(problems, await db.rows(P1), P1, present=[o for o in range(10) if o != 7])
        if dead_letters(p) != {(1, 7): 1}:
            problems.append(f"dead letters by (partition, offset): {dict(dead_letters(p))}")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- h, i. a stale high watermark: a reset past a stuck partition, a fenced member ------------


async def test_h_a_reset_past_a_stuck_partition_is_not_undone(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P0 is stuck on an unreadable batch at 7 (paused, so its cached high watermark stops at
    10) while records keep arriving; the operator resets P0 to the log end (15), as the README
    advises. The worker follows the reset and must stay there: the log end it compares the
    stored offset with is the broker's, not the stale high watermark, so no rewind to 0, no
    dead letter sent again, no offset moved back, and what comes after 15 is stored."""
    monkeypatch.setattr(consumer_module, "CHECK_INTERVAL_S", 0.1)
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    fill(c, P0, 10, bad={3})
    c.broker.unreadable[P0] = {7}
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0})
        await db.wait_offsets({P0: 7}, run)
        await c.until(lambda: run.worker._reader.stuck(), 10.0, "P0 stuck at 7")
        fill(c, P0, 5)  # [10, 15) while P0 is paused
        # What `worker offsets reset --to-latest --execute` writes.
        await offsets_module.reset(await db.connect(), s.group_id, {P0: 15})
        await asyncio.sleep(1.0)  # the worker follows the reset, checks for lost logs
        fill(c, P0, 5)  # [15, 20)
        problems: list[str] = []
        try:
            await db.wait_offsets({P0: 20}, run, timeout=30.0)
        except AssertionError as exc:
            problems.append(str(exc))
        await asyncio.sleep(0.3)
        rows = await db.rows(P0)
        check_rows(problems, rows, P0, present=[o for o in range(7) if o != 3])
        check_rows(problems, rows, P0, present=range(15, 20))
        check_rows(problems, rows, P0, absent=range(7, 15), what=" (skipped by the reset)")
        if dead_letters(run.producer) != {(0, 3): 1}:
            problems.append(f"dead letters: {dict(dead_letters(run.producer))}")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


async def test_i_a_fenced_member_cannot_move_the_new_owners_offset_back(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P1's lane backs off (its dead letter refused) with every partition paused, so P0's
    cached high watermark stays at 15 while a new owner stores P0 up to 30. P0's own batch
    [10, 15), waiting on the row lock meanwhile, is fenced and continues from 30, still paused.
    The stale high watermark must not pass for a lost log: no rewind to 0, consumer_offsets
    never moves below 30, and P0 continues from there once the back-off ends."""
    monkeypatch.setattr(consumer_module, "CHECK_INTERVAL_S", 0.05)
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2, max_batch_records=5)
    clients = ScriptedClients(s)
    c, p = clients.scripted_consumer, clients.scripted_producer
    fill(c, P0, 10)
    fill(c, P1, 10)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 10, P1: 10}, run)

        owner, tx0 = await db.lock_row(P0)
        p.hold_sends()
        fill(c, P1, 5, bad={12})  # [10, 15): lane 1 waits for its dead letter's acknowledgement
        await p.wait_held(1)
        fill(c, P0, 5)  # [10, 15): lane 0's commit waits on the row lock
        await db.wait_lock_waiters(1)
        p.fail_sends()
        p.fail_held()  # lane 1 backs off: every partition paused
        p.release_sends()
        await c.until(lambda: run.worker.retrying, 5.0, "the back-off")
        fill(c, P0, 15)  # [15, 30): stored by the new owner
        await db.move(owner, P0, 30)
        await tx0.commit()  # lane 0 is fenced and continues from 30
        await asyncio.sleep(1.0)  # lost-log checks while P0 is still paused
        p.stop_failing()
        fill(c, P0, 5)  # [30, 35)
        problems: list[str] = []
        try:
            await db.wait_offsets({P0: 35, P1: 15}, run)
        except AssertionError as exc:
            problems.append(str(exc))
        await asyncio.sleep(0.5)
        rows = await db.rows(P0)
        check_rows(problems, rows, P0, present=range(30, 35))
        check_rows(problems, rows, P0, absent=range(10, 30), what=" (the new owner's)")
        check_rows(problems, await db.rows(P1), P1, present=[o for o in range(15) if o != 12])
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- j. a statement over PostgreSQL's message limit -------------------------------------------


async def message_limit(database_url: str) -> tuple[PgProxy, str]:
    """A started proxy to the test database that closes a connection on any message over
    16 KiB (tests/support/pg_proxy.py), and the URL that goes through it."""
    parts = urlsplit(database_url)
    proxy = PgProxy(upstream_port=parts.port or 5432, max_message=16 << 10)
    await proxy.start()
    host = parts.netloc.rsplit(":", 1)[0]
    return proxy, urlunsplit(parts._replace(netloc=f"{host}:{proxy.port}", query="sslmode=disable"))


async def test_j_a_statement_over_the_message_limit_is_split(database_url: str) -> None:
    """The server answers a protocol message over its limit by closing the connection without
    a word (PostgreSQL at 1 GB; tests/support/pg_proxy.py at 16 KiB). The database still answers, so
    the batch must be split until its statements fit, not retried whole forever: every record
    stored once, nothing dead-lettered."""
    await migrate_url(database_url)
    proxy, via_proxy = await message_limit(database_url)
    s = settings(via_proxy, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    for offset in range(40):  # ~1.5 KB each: one COPY of them all is over 16 KiB
        created = BASE + dt.timedelta(seconds=offset)
        value = {
            "examId": "exam-0",
            "candidateId": "cand",
            "type": "TAB_NOT_FOCUS",
            "createdAt": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "description": f"record {offset} " + "x" * 1500,
        }
        c.append(P0, json.dumps(value).encode(), key=b"exam-0:cand")
    try:
        async with scenario(database_url, s, clients) as (run, db, watch):
            await c.assign({P0})
            problems: list[str] = []
            try:
                await db.wait_offsets({P0: 40}, run, timeout=30.0)
            except AssertionError as exc:
                problems.append(f"{exc} (connections cut for their size: {proxy.cut})")
            check_rows(problems, await db.rows(P0), P0, present=range(40))
            if not proxy.cut:
                problems.append("no statement was over the limit: the test proves nothing")
            if dead_letters(run.producer):
                problems.append(f"dead letters: {dict(dead_letters(run.producer))}")
            check_common(problems, run, watch)
            assert not problems, "\n".join(problems)
    finally:
        await proxy.close()


# -- k, l. a batch and an erasure of the same candidate ---------------------------------------

I0 = TopicPartition("scripted.interview", 0)
ERASED = "cand-erased"


def applicant_of(candidate: str, application: str) -> bytes:
    return json.dumps(
        {
            "event": "applicant.created",
            "data": {
                "micro1_job_application_id": application,
                "candidate_id": candidate,
                "candidate_name": "Someone",
                "micro1_job_id": "job-1",
                "job_name": "Engineer",
                "date_modified": "2025-01-01 10:00:00",
            },
        }
    ).encode()


async def rows_naming(db: Db, candidate: str) -> dict[str, int]:
    """Rows naming `candidate`, per table that has any."""
    counts = await count_rows(db._c(), candidate)
    return {table: n for table, n in counts.items() if n}


def ends_now(broker: ScriptedBroker) -> Any:
    async def read() -> dict[str, dict[str, int]]:
        ends: dict[str, dict[str, int]] = {}
        for tp in broker.logs:
            ends.setdefault(tp.topic, {})[str(tp.partition)] = broker.end(tp)
        return ends

    return read


async def test_k_an_erasure_waits_for_the_batch_in_flight_and_deletes_its_rows(
    database_url: str,
) -> None:
    """A batch storing an applicant of the candidate has passed the ledger's check and waits
    (the test holds `jobs`, which only the batch writes) when `worker forget` starts. The
    erasure must wait for that batch and then delete what it stored: no row names the
    candidate afterwards, and the batch's offset is committed."""
    await erasure_meets_a_batch_in_flight(database_url)


async def erasure_meets_a_batch_in_flight(database_url: str) -> None:
    """test_k's scenario, on whatever default isolation the database has."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, I0})
        locker = await db.connect()
        ltx = locker.transaction(isolation="read_committed")
        await ltx.start()
        await locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        c.append(I0, applicant_of(ERASED, "app-1"))
        await db.wait_statement_waiting("jobs")  # the batch, past the ledger's check
        forgetting = asyncio.create_task(
            erase(await db.connect(), ERASED, ends_now(clients.broker))
        )
        problems: list[str] = []
        try:
            await db.wait_statement_waiting("erasure", timeout=3.0)
        except AssertionError:
            problems.append("the erasure did not wait for the batch in flight")
        await ltx.rollback()
        deleted = (await asyncio.wait_for(forgetting, 10)).deleted
        await db.wait_offsets({I0: 1}, run)
        left = await rows_naming(db, ERASED)
        if left:
            problems.append(f"rows naming the erased candidate remain: {left}")
        if deleted.get("applicants") != 1:
            problems.append(f"the erasure deleted {deleted}, not the batch's applicant")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


async def test_l_a_batch_that_meets_an_erasure_in_progress_stores_nothing_of_the_candidate(
    database_url: str,
) -> None:
    """A record of the candidate is in the log (the worker's fetch of it is held) when
    `worker forget` reads the log ends; the erasure then holds the ledger's lock (its first
    delete waits on a table the test holds) when the batch with that record reaches the
    ledger's check. The batch must wait for the erasure there, then see the new entry: the
    record is kept out and counted, its offset commits, and a record of the candidate
    produced after the erasure is stored."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, I0})
        c.hold_fetches(I0)
        c.append(I0, applicant_of(ERASED, "app-1"))
        await c.wait_held()
        locker = await db.connect()
        ltx = locker.transaction()
        await ltx.start()
        await locker.execute("LOCK TABLE proctoring_violations IN ACCESS EXCLUSIVE MODE")
        forgetting = asyncio.create_task(
            erase(await db.connect(), ERASED, ends_now(clients.broker))
        )
        await db.wait_statement_waiting("proctoring_violations")  # holding the ledger's lock
        c.release_fetches()
        problems: list[str] = []
        try:
            await db.wait_statement_waiting("erasure_lock FOR SHARE", timeout=3.0)
        except AssertionError:
            problems.append("the batch did not wait for the erasure at the ledger's check")
        await ltx.rollback()
        await asyncio.wait_for(forgetting, 10)
        await db.wait_offsets({I0: 1}, run)
        left = await rows_naming(db, ERASED)
        if left:
            problems.append(f"rows naming the erased candidate remain: {left}")
        erased = (await accounted(run, 1)).get("erased", 0)
        if erased != 1:
            problems.append(f"records counted as erased: {erased}, expected 1")
        c.append(I0, applicant_of(ERASED, "app-2"))  # produced after the erasure: stored
        await db.wait_offsets({I0: 2}, run)
        if await rows_naming(db, ERASED) != {"applicants": 1, "candidates": 1}:
            problems.append(f"after a new record: {await rows_naming(db, ERASED)}")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- m. a consumer error in the middle of a fetch (issue 24) ----------------------------------


async def test_m_a_record_returned_before_a_consumer_error_is_stored_not_skipped(
    database_url: str,
) -> None:
    """Right after P0 is positioned, the fetch's wait returns its first record and the drain
    that follows fails with a consumer-level error (another topic's authorization failure,
    a coordinator error from check_errors()). That record was returned by the consumer: it
    must be stored, not passed over as a gap in the log."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0})
        await c.until(lambda: P0 in run.worker.owned(), 5.0, "P0 positioned")
        calls = len(c.fetches)
        await c.wait_fetches(calls + 1)
        await c.wait_waiting()  # the wait for data, after the positioning
        c.fail_after_return(TopicAuthorizationFailedError())
        fill(c, P0, 10)
        problems: list[str] = []
        try:
            await db.wait_offsets({P0: 10}, run)
        except AssertionError as exc:
            problems.append(str(exc))
        await asyncio.sleep(0.2)
        check_rows(problems, await db.rows(P0), P0, present=range(10))
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- n, o. an operator's pause while a lane backs off, and one a batch meets in its commit ----


async def test_n_a_pause_is_followed_while_a_lane_backs_off(database_url: str) -> None:
    """P1's lane backs off (its dead letter refused) with every partition held. The operator
    pauses P1 to unblock the others, as the README advises: within the 5 s the contract
    promises, P0's new records must be stored while P1 stores nothing and sends no dead
    letter; once resumed (and the broker takes dead letters again), P1 is stored from where
    it was, its dead letter once."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2)
    clients = ScriptedClients(s)
    c, p = clients.scripted_consumer, clients.scripted_producer
    fill(c, P0, 5)
    fill(c, P1, 5)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 5, P1: 5}, run)
        p.fail_sends()
        fill(c, P1, 5, bad={7})  # [5, 10): its dead letter is refused, the lane backs off
        await c.until(lambda: run.worker.retrying, 5.0, "lane 1 backing off")
        operator = await db.connect()
        await pauses_module.pause(operator, s.group_id, {P1})
        fill(c, P0, 5)  # [5, 10)
        problems: list[str] = []
        try:
            await db.wait_offsets({P0: 10}, run, timeout=6.0)
        except AssertionError as exc:
            problems.append(f"the pause did not unblock P0 within 6 s: {exc}")
        check_rows(problems, await db.rows(P1), P1, absent=range(5, 10), what=" (paused)")
        if any(s.outcome == "acked" for s in p.sent):
            problems.append("a dead letter of the paused partition was sent")
        p.stop_failing()
        await pauses_module.resume(operator, s.group_id, {P1})
        try:
            await db.wait_offsets({P0: 10, P1: 10}, run)
        except AssertionError as exc:
            problems.append(f"after the resume: {exc}")
        check_rows(problems, await db.rows(P0), P0, present=range(10))
        check_rows(problems, await db.rows(P1), P1, present=[o for o in range(10) if o != 7])
        if dead_letters(p) != {(1, 7): 1}:
            problems.append(f"dead letters by (partition, offset): {dict(dead_letters(p))}")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


async def test_o_a_batch_claimed_before_a_pause_stores_nothing_of_the_paused_partition(
    database_url: str,
) -> None:
    """P1's batch [5, 10) has been fetched and waits for its dead letter's acknowledgement
    when the operator pauses P1; the acknowledgement comes at once, long before the workers'
    periodic read of the pauses. The pause is read in the batch's own transaction: nothing of
    P1 is stored and its offset stays; after the resume its records are read again and
    stored once (the dead letter may repeat, never be lost)."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2)
    clients = ScriptedClients(s)
    c, p = clients.scripted_consumer, clients.scripted_producer
    fill(c, P0, 5)
    fill(c, P1, 5)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 5, P1: 5}, run)
        p.hold_sends()
        fill(c, P1, 5, bad={7})  # [5, 10): waits for its dead letter's acknowledgement
        await p.wait_held(1)
        operator = await db.connect()
        await pauses_module.pause(operator, s.group_id, {P1})
        p.release_sends()
        await asyncio.sleep(0.5)
        problems: list[str] = []
        check_rows(problems, await db.rows(P1), P1, absent=range(5, 10), what=" (paused)")
        if (await db.offsets()).get(P1) != 5:
            problems.append(f"P1's offset moved while paused: {await db.offsets()}")
        await pauses_module.resume(operator, s.group_id, {P1})
        try:
            await db.wait_offsets({P1: 10}, run)
        except AssertionError as exc:
            problems.append(f"after the resume: {exc}")
        check_rows(problems, await db.rows(P1), P1, present=[o for o in range(10) if o != 7])
        if dead_letters(p)[(1, 7)] < 1:
            problems.append("P1's dead letter was lost")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- p. a lost log whose partition is revoked while its end is read ----------------------------


async def test_p_a_partition_revoked_while_its_log_end_is_read_is_left_alone(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """P0's log is lost (recreated shorter than the stored offset), which usually comes with a
    rebalance. The worker asks the broker for the log end, and the group revokes P0 while
    the answer is on its way: the worker must not seek a partition it no longer owns (aiokafka
    raises IllegalStateError), and must go on with P1."""
    monkeypatch.setattr(consumer_module, "CHECK_INTERVAL_S", 0.05)
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s)
    c = clients.scripted_consumer
    fill(c, P0, 10)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1})
        await db.wait_offsets({P0: 10}, run)
        clients.scripted_reader.hold()
        c.broker.logs[P0] = []  # the topic was recreated: three records, below the stored 10
        fill(c, P0, 3)
        await clients.scripted_reader.wait_reading()
        await c.revoke()
        await c.assign({P1})
        clients.scripted_reader.release()
        fill(c, P1, 5)
        problems: list[str] = []
        try:
            await db.wait_offsets({P1: 5}, run)
        except AssertionError as exc:
            problems.append(str(exc))
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- q. one record over the server's message limit --------------------------------------------


async def test_q_a_single_record_over_the_message_limit_is_dead_lettered(
    database_url: str,
) -> None:
    """One record of P0 alone is over the server's message limit (tests/support/pg_proxy.py at
    16 KiB, as PostgreSQL at 1 GB): no split can help. It must be dead-lettered as
    rejected_by_database with the error attached, and neither P0's later records nor P1 may
    be held behind it."""
    await migrate_url(database_url)
    proxy, via_proxy = await message_limit(database_url)
    s = settings(via_proxy, db_lanes=1)
    clients = ScriptedClients(s)
    c = clients.scripted_consumer
    huge = json.loads(event(P0, 0))
    huge["description"] = "x" * (20 << 10)
    c.append(P0, json.dumps(huge).encode(), key=b"exam-0:cand")
    fill(c, P0, 2)
    fill(c, P1, 3)
    try:
        async with scenario(database_url, s, clients) as (run, db, watch):
            await c.assign({P0, P1})
            problems: list[str] = []
            try:
                await db.wait_offsets({P0: 3, P1: 3}, run, timeout=30.0)
            except AssertionError as exc:
                problems.append(f"{exc} (connections cut for their size: {proxy.cut})")
            check_rows(problems, await db.rows(P0), P0, present=[1, 2], absent=[0])
            check_rows(problems, await db.rows(P1), P1, present=range(3))
            sent = run.producer.acked
            letters = [s.header("dlq.reason") for s in sent if dead_letters_of(s) == (0, 0)]
            if letters != ["rejected_by_database"] or len(sent) != 1:
                problems.append(
                    "expected one dead letter, rejected_by_database, of P0 offset 0; got "
                    f"{[(dead_letters_of(s), s.header('dlq.reason')) for s in sent]}"
                )
            elif not sent[0].header("dlq.error"):
                problems.append("the dead letter carries no error")
            check_common(problems, run, watch)
            assert not problems, "\n".join(problems)
    finally:
        await proxy.close()


# -- r. transaction markers -------------------------------------------------------------------


async def test_r_transaction_markers_cost_no_seek(database_url: str) -> None:
    """A transactional producer's commit marker follows every transaction: offsets that hold
    no record. Whether a fetch ends right after a marker or right before one, the records
    after it continue what was claimed (the consumer returned nothing in between): no seek
    back, and the stored offset reaches the log end, marker included."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    records: list[int] = []

    def transaction(n: int) -> None:
        records.extend(fill(c, P0, n))
        c.broker.append_marker(P0)

    for _ in range(5):
        transaction(3)

    async def stored(db: Db, run: RunningWorker) -> None:
        """Until every record so far is stored (the offset may stop at a marker)."""
        deadline = time.monotonic() + 20
        while set(records) - set(await db.rows(P0)):
            run.check_alive()
            assert time.monotonic() < deadline, (
                f"not stored: {set(records) - set(await db.rows(P0))}"
            )
            await asyncio.sleep(0.02)

    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0})
        problems: list[str] = []
        try:
            await stored(db, run)
            for _ in range(5):  # the marker arrives after the fetch of its records
                records.extend(fill(c, P0, 3))
                await stored(db, run)
                c.broker.append_marker(P0)
                transaction(2)
                await stored(db, run)
            await db.wait_offsets({P0: c.broker.end(P0)}, run, timeout=5.0)
        except AssertionError as exc:
            problems.append(str(exc))
        check_rows(problems, await db.rows(P0), P0, present=records)
        seeks = [o for tp, o in c.seeks if tp == P0]
        if seeks != [0]:
            problems.append(f"P0 was sought {seeks}: only its positioning (0) was expected")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- s. readiness follows the commits, not SELECT 1 -------------------------------------------


async def test_s_readiness_turns_unready_when_commits_fail_although_select_1_answers(
    database_url: str,
) -> None:
    """The worker's connections end up on a server that answers but refuses writes (a standby
    during a failover, here the database made read-only): SELECT 1 succeeds, every commit
    fails. Readiness must say so at once, not after WORKER_READY_MAX_RETRY_S, and come back
    once a commit succeeds."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    fill(c, P0, 3)
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0})
        await db.wait_offsets({P0: 3}, run)
        problems: list[str] = []
        if not (await run.worker.readiness())[0]:
            problems.append(f"not ready while healthy: {(await run.worker.readiness())[1]}")
        name = await db._c().fetchval("SELECT current_database()")
        await db._c().execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await db._c().execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        fill(c, P0, 3)
        await c.until(lambda: run.worker.retrying, 10.0, "commits failing")
        await asyncio.sleep(0.5)
        ready, detail = await run.worker.readiness()
        if ready:
            problems.append(f"ready while every commit fails: {detail}")
        await db._c().execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await db._c().execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        try:
            await db.wait_offsets({P0: 6}, run, timeout=30.0)
        except AssertionError as exc:
            problems.append(str(exc))
        if not (await run.worker.readiness())[0]:
            problems.append(f"not ready again after a commit: {(await run.worker.readiness())[1]}")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- t, u, v. an erasure against the isolation level, new batches, a dead letter in flight ----


async def test_t_an_erasure_under_repeatable_read_still_deletes_the_batch_it_waited_for(
    database_url: str,
) -> None:
    """test_k with the database's `default_transaction_isolation` set to REPEATABLE READ: the
    erasure must still delete what the batch it waited for stored, so it cannot rely on the
    default isolation level (its snapshot would predate that batch)."""
    admin = await asyncpg.connect(database_url)
    try:
        name = await admin.fetchval("SELECT current_database()")
        await admin.execute(
            f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
        )
    finally:
        await admin.close()
    await erasure_meets_a_batch_in_flight(database_url)


async def test_u_batches_arriving_while_an_erasure_waits_queue_behind_it(
    database_url: str,
) -> None:
    """Two lanes' batches have passed the ledger's check and wait (the test holds `jobs` and
    `proctoring_sessions`); `worker forget` then waits for them. Lane 0's batch commits and
    lane 0 takes its next batch: that one must queue behind the erasure, not overtake it,
    or a steady stream of batches, each holding the ledger's lock in share mode while
    another starts, starves the erasure for as long as the stream lasts."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=2)
    clients = ScriptedClients(s, partitions=2)
    c = clients.scripted_consumer
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, P1, I0})
        holds = []
        for table in ("jobs", "proctoring_sessions"):
            locker = await db.connect()
            tx = locker.transaction()
            await tx.start()
            await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            holds.append(tx)
        c.append(I0, applicant_of(ERASED, "app-1"))  # lane 0
        c.append(P1, event(P1, 0))  # lane 1, in the same fetch
        await db.wait_lock_waiters(2)  # both past the ledger's check
        forgetting = asyncio.create_task(
            erase(await db.connect(), ERASED, ends_now(clients.broker), Bounds(30.0))
        )
        await db.wait_lock_waiters(3)  # and the erasure, waiting for them
        problems: list[str] = []
        await holds[0].rollback()
        await db.wait_offsets({I0: 1}, run)
        c.append(I0, applicant_of("someone", "app-2"))  # lane 0's next batch
        try:
            await db.wait_lock_waiters(3, timeout=5.0)  # lane 1, the erasure, lane 0 behind
        except AssertionError:
            if (await db.offsets()).get(I0) == 2 and not forgetting.done():
                problems.append("a batch overtook the erasure waiting for the ledger's lock")
            else:
                activity = await db._c().fetch(
                    "SELECT left(query, 60) AS q, state, wait_event_type FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                problems.append(
                    f"lane 0's next batch neither waited nor committed: {await db.offsets()} "
                    f"{[tuple(r.values()) for r in activity]}"
                )
        await holds[1].rollback()
        await asyncio.wait_for(forgetting, 10)
        await db.wait_offsets({I0: 2, P1: 1}, run)
        check_rows(problems, await db.rows(P1), P1, present=[0])
        if await rows_naming(db, "someone") != {"applicants": 1, "candidates": 1}:
            problems.append(
                f"lane 0's next batch was not stored: {await rows_naming(db, 'someone')}"
            )
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


async def test_v_a_dead_letter_in_flight_holds_an_erasure_of_its_candidate_back(
    database_url: str,
) -> None:
    """A malformed record of the candidate is being dead-lettered: the worker screened it by
    the ledger (no erasure yet) and the broker has not acknowledged it (the test holds the
    send). `worker forget` of the candidate starts now. It must not commit before the letter
    is acknowledged: otherwise a copy of an erased candidate's record lands in the
    dead-letter topic after the erasure, unscreened and unnoticed."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    malformed = b'{"event": "applicant.created", "data": {"candidate_id": "' + ERASED.encode()
    async with scenario(database_url, s, clients) as (run, db, watch):
        await c.assign({P0, I0})
        run.producer.hold_sends()
        c.append(I0, malformed)
        await run.producer.wait_held(1)
        forgetting = asyncio.create_task(
            erase(await db.connect(), ERASED, ends_now(clients.broker))
        )
        problems: list[str] = []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(forgetting), 1.0)
        if forgetting.done():
            problems.append(
                "the erasure committed while a dead letter of its candidate was in flight"
            )
        run.producer.release_sends()
        await asyncio.wait_for(forgetting, 10)
        await db.wait_offsets({I0: 1}, run)
        if len(run.producer.acked) != 1:
            problems.append(f"dead letters acknowledged: {len(run.producer.acked)}, expected 1")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)
