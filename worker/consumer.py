"""The worker: Kafka batches in, one PostgreSQL transaction per batch out.

The path of a record, top to bottom (one module each):

1. `getmany` returns records of the partitions this worker owns and has positioned
   (worker/fetch.py, so that an unreadable batch stalls only its own partition), each return
   stamped with its partition's epoch and sequence and the consumer's position after it;
2. right after the fetch, under the same lock, each return becomes a claim on its partition
   (worker/partitions.py): records stamped before a seek, a fence or a revocation are stale,
   and a partition with a return nobody claimed is sought back to where its claims end
   (`Ownership.settle`); then each record is decoded into its struct or into a dead letter
   with a reason (worker/decode.py), into a batch (worker/batch.py) that grows while the
   commit lanes are busy;
3. a lane commits its share of the batch (worker/commit.py): dead letters first, then rows and
   offsets in one transaction, then Kafka's copy of the offsets.

This module keeps the lifecycle (start, run, stop), the loop and the commit lanes; the
rebalance callbacks and positioning are worker/ownership.py's. A transient failure pauses the
partitions (membership stays: the lane keeps polling), backs off and retries the same batch; a
batch failing for its size is split, and a lone record the database cannot take for its size
is dead-lettered (`rejected_by_database`). A partition an operator pauses stores nothing from
then on, even a batch fetched before (its transaction refuses it: worker/offsets.py). Only a
claim still current when its commit returns moves its partition's stored offset, so nothing a
revoked partition's late commit returns is applied. Shutdown finishes or abandons the batch in
hand (never half of it), leaves the group and closes connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import asyncpg
import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from worker.accounting import Progress, account
from worker.batch import Batch, BatchBudget, Part, halves
from worker.broker import require_topics
from worker.clients import Clients, KafkaPostgresClients
from worker.commit import Committer, Fenced, KafkaOffsets, Letters, Paused
from worker.config import Settings
from worker.decode import EventDecoder, interview_decoder, proctoring_decoder
from worker.dlq import (
    REASONS,
    REJECTED_BY_DATABASE,
    DeadLetter,
    DeadLetterPublisher,
    DecodeFailure,
    truncate,
)
from worker.erasure import Ledger
from worker.fetch import Fetched, PartitionReader
from worker.handlers.base import Item
from worker.logs import tp_names
from worker.metrics import (
    FreshnessCollector,
    HealthServer,
    LagCollector,
    Metrics,
    PausedCollector,
)
from worker.migrate import migrate
from worker.ownership import CHECK_INTERVAL_S, Ownership
from worker.partitions import Claim
from worker.retention import Maintenance
from worker.retry import (
    TRANSIENT,
    Backoff,
    describe,
    is_dropped_connection,
    is_oversized,
    is_size_error,
)
from worker.router import Prepared, PrepareError, prepare_parts, row_handler
from worker.tracing import BatchTracer

log = structlog.get_logger("worker")

# Item(...) runs the NamedTuple's Python-level __new__; this is the same tuple built in C
# (~0.25 us less per record, on a path that runs once per record).
_new_item = functools.partial(tuple.__new__, Item)

T = TypeVar("T")


class Worker:
    """Consumes the proctoring and interview topics until `stop()` is called."""

    def __init__(self, settings: Settings, clients: Clients | None = None) -> None:
        self.settings = settings
        self.clients = clients if clients is not None else KafkaPostgresClients(settings)
        self._decoders: dict[str, EventDecoder] = {
            settings.proctoring_topic: proctoring_decoder,
            settings.interview_topic: interview_decoder,
        }
        # Per topic, the handler that builds its rows while the records are decoded (None:
        # the topic's events go to several handlers, prepared from the items).
        self._row_handlers = {t: row_handler(d.structs) for t, d in self._decoders.items()}
        self._stop = asyncio.Event()
        self.metrics = Metrics()
        self._ownership = Ownership(
            settings, self.metrics, self._retrying_call, reader=self.clients.reader
        )
        self._partitions = self._ownership.partitions
        # One commit lane per database connection: partitions are split between lanes, and
        # each lane commits its share of a batch on its own connection, so PostgreSQL works on
        # up to `db_lanes` transactions at once while a partition's batches stay in order.
        self._lanes = settings.db_lanes
        self._commit_locks = [asyncio.Lock() for _ in range(self._lanes)]
        # getmany is called by the main loop and, while a batch retries, by the backoff.
        self._fetch_lock = asyncio.Lock()
        self._fetch_backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self._budget = BatchBudget(settings.max_batch_records, settings.max_batch_bytes)
        self._tracer = BatchTracer(settings.group_id, settings.database_url)
        self._reader = PartitionReader(
            self.metrics,
            stamp=self._ownership.stamp,
            dropped=self._ownership.reclaim.dropped,
            paused=lambda: {s.tp for s in self._partitions.paused()},
        )
        self._pool: asyncpg.Pool | None = None
        self._consumer: Any = None
        self._committer: Committer | None = None
        self._kafka_offsets = KafkaOffsets()
        self._retrying: set[int] = set()  # lanes retrying a transient failure
        # Lanes whose last commit attempt failed (readiness): from the failure itself, not
        # from the back-off that follows it.
        self._commit_failing: set[int] = set()
        self._background: list[asyncio.Task[None]] = []  # maintenance, operator pauses
        # When the current run of transient failures began (None: healthy); drives /readyz.
        self._failing_since: float | None = None
        self._db_check: tuple[float, bool] = (0.0, False)
        self.stats: dict[str, int] = dict.fromkeys(
            ("consumed", "stored", "dead_lettered", "erased", "batches"), 0
        )
        self.ready = asyncio.Event()
        self.metrics.registry.register(LagCollector(self._lag))
        self.metrics.registry.register(
            FreshnessCollector(
                self.metrics.freshness, lambda: ((tp.topic, tp.partition) for tp in self.owned())
            )
        )
        self.metrics.registry.register(PausedCollector(self._paused))
        self.metrics.zero(settings.topics, REASONS)
        self.health: HealthServer | None = None

    # -- read-only views -----------------------------------------------------------------

    def owned(self) -> Mapping[TopicPartition, int | None]:
        """The positioned partitions and their stored next offset (None: no row yet)."""
        return self._partitions.stored_offsets()

    @property
    def retrying(self) -> bool:
        """A lane is backing off from a transient failure."""
        return bool(self._retrying)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        s = self.settings
        log.info("worker starting", **s.describe())
        if s.metrics_port:
            self.health = HealthServer(
                self.metrics.registry, self.readiness, s.metrics_host, s.metrics_port
            )
            await self.health.start()
        try:
            await self._run()
        finally:
            if self.health is not None:
                await self.health.stop()

    async def _run(self) -> None:
        s = self.settings
        self._pool = await self._retrying_call("database", self.clients.database)
        if s.auto_migrate:
            await self._retrying_call("migrations", self._migrate)
        # The erasure ledger's key, read once: it signs dead letters and screens records.
        ledger = await self._retrying_call("database", functools.partial(Ledger.load, self._pool))
        producer = self.clients.producer()
        consumer = self._consumer = self.clients.consumer()
        dlq = DeadLetterPublisher(producer, s.dlq_topic, s.group_id, ledger.key)
        # Retention: what was dropped is known before the first batch; then maintained aside.
        retention = Maintenance(self._pool, s.proctoring_retention_days, s.interview_retention_days)
        await self._retrying_call("database", retention.load)
        maintenance = asyncio.create_task(retention.run(self._stop))
        self._committer = Committer(self._pool, dlq, s.group_id, ledger, retention.horizon)
        self._ownership.attach(self._pool, consumer)
        # Operator pauses are followed by a task of their own: the loop may sit for a long
        # time waiting on a lane that backs off, which is when a pause is needed most.
        pauses = asyncio.create_task(self._ownership.follow_pauses(self._stop))
        self._background = [maintenance, pauses]
        try:
            await self._retrying_call("kafka producer", producer.start)
            await self._retrying_call("kafka consumer", consumer.start)
            await self._check_topics(consumer)
            consumer.subscribe(list(s.topics), listener=self._ownership.listener())
            log.info("worker running", topics=list(s.topics), group_id=s.group_id)
            self.ready.set()
            await self._loop(consumer)
        finally:
            for task in self._background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._shutdown(consumer, producer)

    async def _shutdown(self, consumer: Any, producer: Any) -> None:
        log.info("worker stopping", **self.stats)
        timeout = self.settings.shutdown_timeout_s
        with contextlib.suppress(Exception):  # only logged when it fails (commit_kafka)
            await asyncio.wait_for(self._kafka_offsets.flush(), timeout)
        for name, closer in (("consumer", consumer.stop), ("producer", producer.stop)):
            try:
                await asyncio.wait_for(closer(), timeout)
            except Exception as exc:  # shutting down: report and carry on closing the rest
                log.warning("close failed", component=name, error=describe(exc))
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout)
            except Exception as exc:
                log.warning("close failed", component="database pool", error=describe(exc))
                self._pool.terminate()
        log.info("worker stopped", **self.stats)

    async def _check_topics(self, consumer: Any) -> None:
        """Refuse to start without the three topics: a missing dead-letter topic would
        otherwise surface at the first bad record, with every partition stuck behind it."""
        # Metadata for all topics: asking for these by name could auto-create them.
        existing = await self._retrying_call("kafka metadata", consumer.topics)
        s = self.settings
        require_topics(existing, s, (s.proctoring_topic, s.interview_topic, s.dlq_topic))

    async def _migrate(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await migrate(conn)

    async def _retrying_call(self, what: str, fn: Any) -> Any:
        """Call `fn` until it succeeds or the worker is stopped; log state changes only."""
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        while True:
            try:
                result = await fn()
            except TRANSIENT as exc:
                if backoff.attempt == 0:
                    log.warning(f"{what} unavailable, retrying", error=describe(exc))
                    self._failing_since = self._failing_since or time.monotonic()
                self.metrics.retries.labels(what).inc()
                delay = backoff.next_delay()
                if await self._sleep_or_stop(delay):
                    raise asyncio.CancelledError(f"stopped while waiting for {what}") from exc
                continue
            if backoff.attempt:
                log.info(f"{what} available again", attempts=backoff.attempt + 1)
                self._failing_since = None
            return result

    async def _unless_stopped(self, work: Awaitable[T], instead: T) -> T:
        """`work`, or `instead` as soon as stop() is called. A getmany waits for the group's
        assignment whatever its timeout: a worker stopped while joining must not wait too.
        What a cancelled fetch had taken is never committed, so it is read again next time."""
        if self._stop.is_set():
            return instead
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, KafkaError):
            await task
        return instead

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Sleep `delay` seconds; return True at once if stop() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return self._stop.is_set()

    # -- the loop ------------------------------------------------------------------------

    async def _loop(self, consumer: Any) -> None:
        """Fetch and decode the next batch while the previous ones commit.

        Each lane has at most one batch in flight (a partition's offsets must advance in
        order); the next batch grows while the lanes are busy, so batches are small when
        traffic is light (low latency) and large under load (few transactions)."""
        s = self.settings
        progress = Progress(self.stats)
        inflight: dict[int, asyncio.Task[None]] = {}
        next_check = time.monotonic()
        try:
            while not self._stop.is_set():
                progress.maybe_log()
                _reap_background(self._background)
                # A full collection only between batches (worker/reclaim.py).
                self._ownership.reclaim.collect_if_due(idle=not inflight)
                if time.monotonic() >= next_check:
                    await self._ownership.rewind_lost_logs()
                    await self._ownership.follow_moved_offsets()
                    next_check = time.monotonic() + CHECK_INTERVAL_S
                if self._retrying and inflight:
                    # A lane is backing off with every partition paused: nothing to fetch
                    # until it recovers (the lane keeps polling for group membership).
                    await asyncio.wait(inflight.values(), return_when=asyncio.FIRST_COMPLETED)
                    _reap(inflight)
                    continue
                await self._ownership.position_pending()
                batch: Batch = {}
                budget = self._budget.start()
                while not self._stop.is_set():
                    busy = bool(inflight) and not any(t.done() for t in inflight.values())
                    wait = min(s.fetch_wait_ms, 5) if busy else s.fetch_wait_ms
                    claimed = await self._fetch(consumer, wait, budget.room())
                    budget.add(*await self._prepare(claimed, batch))
                    if budget.full or not busy:
                        break
                for lane, share in self._split(batch).items():
                    # Rows encoded for COPY before waiting: this CPU work overlaps the
                    # lane's previous batch's time in PostgreSQL.
                    prepared: Prepared | None
                    try:
                        prepared = await prepare_parts(share[tp] for tp in sorted(share))
                    except PrepareError:
                        prepared = None  # prepared again at commit, bisecting to the record
                    previous = inflight.pop(lane, None)
                    if previous is not None:
                        await previous
                    if self._stop.is_set():
                        break  # never start a batch after stop: the one before may be abandoned
                    inflight[lane] = asyncio.create_task(
                        self._handle(consumer, share, prepared, lane)
                    )
                _reap(inflight)
        finally:
            for task in inflight.values():
                await task

    def _split(self, batch: Batch) -> dict[int, Batch]:
        lanes: dict[int, Batch] = {}
        for tp, part in batch.items():
            lanes.setdefault(tp.partition % self._lanes, {})[tp] = part
        return lanes

    async def _fetch(
        self, consumer: Any, timeout_ms: int, max_records: int
    ) -> list[tuple[Claim, list[Any]]]:
        """Fetch, and claim what was returned before anything else can fetch or seek: every
        return is claimed here or its partition is read again (`Ownership.settle`)."""
        async with self._fetch_lock:
            try:
                fetched = await self._unless_stopped(
                    self._reader.fetch(consumer, timeout_ms, max_records), Fetched()
                )
            except KafkaError as exc:
                self._ownership.settle()  # what it had returned is read again
                if self._fetch_backoff.attempt == 0:
                    log.warning("kafka fetch failed, retrying", error=describe(exc))
                self.metrics.retries.labels("kafka").inc()
                await self._sleep_or_stop(self._fetch_backoff.next_delay())
                return []
            claimed = self._claim(fetched)
            self._ownership.settle()
        if self._fetch_backoff.attempt:
            log.info("kafka fetch recovered")
            self._fetch_backoff.reset()
        return claimed

    def _claim(self, fetched: Fetched) -> list[tuple[Claim, list[Any]]]:
        """A claim for each return still current (not stamped before a seek, its partition
        still ours, no earlier return of it left unclaimed), with its records."""
        claimed: list[tuple[Claim, list[Any]]] = []
        for tp, stamp, records, position in fetched:
            state = self._partitions.get(tp)
            if state is None:
                continue
            claim, reset = state.claim(stamp, records, position)
            if claim is None:
                continue
            if reset:
                # Below where this generation had read: only the consumer's own reset to the
                # earliest offset does that, when the log was deleted and recreated. Those are
                # new records: process them (upserts are idempotent) and say so.
                log.warning(
                    "partition restarts below where it was read; the log was reset",
                    topic=tp.topic,
                    partition=tp.partition,
                    stored_offset=state.stored,
                    first_offset=claim.start,
                )
            claimed.append((claim, records))
        return claimed

    async def _prepare(
        self, claimed: list[tuple[Claim, list[Any]]], batch: Batch
    ) -> tuple[int, int]:
        """Decode each claim's records into `batch`; return how many records were added and
        their bytes (keys and values)."""
        added = nbytes = 0
        for claim, records in claimed:
            tp = claim.state.tp
            part = batch.get(tp)
            if part is None or not part.extend(claim):
                part = batch[tp] = Part(claim)
            nbytes += await self._decode(tp, records, part)
            added += len(records)
        return added, nbytes

    async def _decode(self, tp: TopicPartition, records: list[Any], part: Part) -> int:
        """Decode `records` into `part`'s items and dead letters, and where the topic has a
        row handler, each item's row beside it (one pass: the batch's preparation then starts
        from the rows); return the records' bytes."""
        decode = self._decoders[tp.topic].decode
        handler = part.row_handler = self._row_handlers[tp.topic]
        row = None if handler is None else handler.row
        topic, partition = tp.topic, tp.partition
        items, letters, rows = part.items, part.letters, part.rows
        size = 0
        for start in range(0, len(records), 500):
            if start:
                await asyncio.sleep(0)  # let in-flight commits take their next step
            for record in records[start : start + 500]:
                # record_size(), inlined: this loop runs once per record. -1 means null.
                k, v = record.serialized_key_size, record.serialized_value_size
                size += (k if k > 0 else 0) + (v if v > 0 else 0)
                result = decode(record.value)
                if type(result) is DecodeFailure:
                    letters.append(DeadLetter(record, result))
                    continue
                offset = record.offset
                items.append(_new_item((result, topic, partition, offset)))
                if row is not None:
                    try:
                        rows.append(row(result, topic, partition, offset))
                    except Exception:
                        # Rows one short: the part is prepared from its items, where the same
                        # failure is a PrepareError that isolates and dead-letters the record.
                        row = None
        part.records.extend(records)
        part.nbytes += size
        return size

    # -- a lane's batch ------------------------------------------------------------------

    async def _handle(
        self, consumer: Any, batch: Batch, prepared: Prepared | None, lane: int
    ) -> None:
        try:
            await self._handle_batch(consumer, batch, prepared, lane)
        finally:
            # However the batch ended (committed, fenced away, revoked, abandoned at stop),
            # this lane no longer holds the partitions paused, nor has a commit pending.
            self._commit_failing.discard(lane)
            if lane in self._retrying:
                self._retrying.discard(lane)
                if not self._retrying:
                    self._ownership.release()
                    self._failing_since = None

    async def _handle_batch(
        self, consumer: Any, batch: Batch, prepared: Prepared | None, lane: int
    ) -> None:
        started = time.perf_counter()
        started_ns = time.time_ns()
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        letters = Letters()
        records = sum(len(part.records) for part in batch.values())
        oversized = 0  # attempts of a lone record that failed for its size
        while True:
            # Only claims still current may commit: a partition revoked, re-positioned or
            # fenced since the fetch, or behind an abandoned batch, is not ours to commit.
            live = {tp for tp, part in batch.items() if part.claim.state.may_commit(part.claim)}
            if not live:
                return
            try:
                applied, transaction_ns = await self._commit(batch, live, prepared, letters, lane)
            except Fenced as fenced:
                await self._retrying_call(
                    "database", functools.partial(self._ownership.refence, fenced.partitions)
                )
                continue
            except Paused as paused:
                self._ownership.paused_by_operator(paused.partitions)
                continue
            except TRANSIENT as exc:
                self._commit_failing.add(lane)
                self.metrics.retries.labels(_dependency(exc)).inc()
                size = await self._failed_for_size(exc)
                parts = halves({tp: batch[tp] for tp in live}) if size else None
                if parts is None and size == "size":
                    oversized += 1
                    if oversized > 1 and _reject_lone_record(batch, live, letters, exc):
                        continue
                if parts is not None:
                    # Retrying the same batch would fail the same way: commit it in two
                    # parts, in order (the second one continues where the first ends).
                    log.warning(
                        "batch failed for its size or duration; splitting it",
                        error=describe(exc),
                        records=records,
                    )
                    for half in parts:
                        await self._handle_batch(consumer, half, None, lane)
                    return
                if backoff.attempt == 0:
                    log.warning("batch failed, retrying", error=describe(exc), records=records)
                    self._ownership.hold()
                    self._retrying.add(lane)
                    self._failing_since = self._failing_since or time.monotonic()
                if await self._wait_polling(consumer, backoff.next_delay()):
                    # The batches fetched behind this one continue from where it ends, which
                    # was never stored: their claims can no longer commit.
                    log.info("stopping: batch abandoned uncommitted", records=records)
                    return
                continue
            break
        self._commit_failing.discard(lane)
        if backoff.attempt:
            log.info("batch committed after retries", attempts=backoff.attempt + 1)
        if not self._retrying - {lane}:
            self._failing_since = None
        account(self.metrics, self.stats, batch, live, letters, time.perf_counter() - started)
        self._kafka_offsets.note(consumer, {tp: batch[tp].next_offset for tp in applied})
        self._tracer.committed(
            [(tp.topic, tp.partition, batch[tp].records) for tp in sorted(live)],
            started_ns,
            transaction_ns,
            time.time_ns(),
        )

    async def _failed_for_size(self, exc: BaseException) -> str | None:
        """Whether a smaller batch may succeed: "size" when the data itself was too large
        (over the server's message limit, out of memory), "duration" when a statement ran out
        of time; None otherwise. A connection dropped mid-statement is a size failure only
        while the database itself still answers (an outage is waited out whole instead)."""
        if is_oversized(exc):
            return "size"
        if is_size_error(exc):
            return "duration"
        if is_dropped_connection(exc) and await self._database_answers(fresh=True):
            return "size"
        return None

    async def _commit(
        self,
        batch: Batch,
        live: set[TopicPartition],
        prepared: Prepared | None,
        letters: Letters,
        lane: int,
    ) -> tuple[set[TopicPartition], tuple[int, int]]:
        """One commit attempt of the `live` partitions; the partitions whose stored offset it
        moved (a partition revoked meanwhile is committed in the database, not here), and
        when its transaction began and ended."""
        assert self._committer is not None
        states = [batch[tp].claim.state for tp in live]
        for state in states:
            state.commit_started()
        try:
            async with self._commit_locks[lane]:
                transaction_ns = await self._committer.commit(batch, live, prepared, letters)
        except BaseException:
            for state in states:
                state.commit_finished(None)
            raise
        applied = {tp for tp in live if batch[tp].claim.state.commit_finished(batch[tp].claim)}
        return applied, transaction_ns

    # -- health --------------------------------------------------------------------------

    def _lag(self) -> dict[tuple[str, int], int]:
        consumer = self._consumer
        if consumer is None:
            return {}
        lag: dict[tuple[str, int], int] = {}
        for tp, stored in self.owned().items():
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # partition revoked between the two reads
                continue
            if highwater is not None and stored is not None:
                lag[(tp.topic, tp.partition)] = max(0, highwater - stored)
        return lag

    def _paused(self) -> dict[tuple[str, int], bool]:
        """Every assigned partition: whether an operator holds it paused."""
        return {(s.tp.topic, s.tp.partition): s.paused for s in self._partitions}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = running; no commit lane retrying a failed commit (the last attempt of
        every batch in hand succeeded, or none is pending), which a database that answers
        SELECT 1 but refuses writes (a standby) fails at once; the database answers now;
        no other transient failure lasting too long; no partition stuck on a batch it cannot
        read."""
        started = self.ready.is_set() and not self._stop.is_set()
        database = await self._database_answers()
        failing_s = None if self._failing_since is None else time.monotonic() - self._failing_since
        stuck = failing_s is not None and failing_s > self.settings.ready_max_retry_s
        # Paused on a record batch that cannot be decoded (worker/fetch.py).
        unreadable = self._reader.stuck()
        detail = {
            "running": started,
            "database": database,
            "commits_failing": len(self._commit_failing),
            "failing_for_s": None if failing_s is None else round(failing_s, 1),
            "partitions_owned": len(self._partitions.consuming()),
            "partitions_pending": len(self._partitions.pending()) + len(self._partitions.waiting()),
            "partitions_stuck": tp_names(unreadable),
            # Paused on purpose (worker pause): reported, never a reason to be unready.
            "partitions_paused": tp_names(s.tp for s in self._partitions.paused()),
        }
        healthy = database and not self._commit_failing and not stuck and not unreadable
        return started and healthy, detail

    async def _database_answers(self, fresh: bool = False) -> bool:
        checked_at, ok = self._db_check
        if not fresh and time.monotonic() - checked_at < 1.0:
            return ok
        ok = False
        if self._pool is not None:
            try:
                async with asyncio.timeout(2):
                    async with self._pool.acquire() as conn:
                        ok = await conn.fetchval("SELECT 1") == 1
            except Exception:  # any failure means "not now"
                ok = False
        self._db_check = (time.monotonic(), ok)
        return ok

    async def _wait_polling(self, consumer: Any, delay: float) -> bool:
        """Back off for `delay` seconds while polling the paused consumer, so the group does
        not evict this member for exceeding max.poll.interval. True if stopping.

        Every partition is held paused, so a poll returns nothing; should one return records
        anyway, they are stamped and never claimed, and `settle()` reads their partition
        again from where its claims end: records a fetch returned are claimed or read again,
        never dropped."""
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stop.is_set():
                return True
            with contextlib.suppress(KafkaError):
                async with self._fetch_lock:
                    try:
                        await self._unless_stopped(self._poll(consumer, min(remaining, 1.0)), None)
                    finally:
                        self._ownership.settle()
            self._ownership.reclaim.collect_if_due()
        return self._stop.is_set()

    async def _poll(self, consumer: Any, timeout_s: float) -> None:
        """One getmany whose records nobody claims: each return is stamped as it comes."""
        polled = await consumer.getmany(timeout_ms=int(timeout_s * 1000))
        for tp, records in polled.items():
            if records:
                self._ownership.stamp(tp)


def _reject_lone_record(
    batch: Batch, live: set[TopicPartition], letters: Letters, exc: BaseException
) -> bool:
    """Dead-letter the one record left of a batch that keeps failing for its size (no split
    can help it); False if the batch is not down to one storable record."""
    if len(live) != 1:
        return False
    (tp,) = live
    part = batch[tp]
    items = letters.storable(part.items)
    if len(part.records) != 1 or len(items) != 1:
        return False
    message = truncate(
        "the database cannot take this record: its statement failed for its size "
        f"while the database still answered others ({describe(exc)})"
    )
    letters.reject(part, items[0], REJECTED_BY_DATABASE, message)
    return True


def _reap_background(tasks: list[asyncio.Task[None]]) -> None:
    """The tasks that run beside the loop until stop: one that ended raises its error here."""
    for task in tasks:
        if task.done():
            task.result()


def _reap(inflight: dict[int, asyncio.Task[None]]) -> None:
    """Forget finished lanes; a bug in a lane (its exception) stops the worker here."""
    for lane, task in list(inflight.items()):
        if task.done():
            del inflight[lane]
            task.result()


def _dependency(exc: BaseException) -> str:
    return "kafka" if isinstance(exc, KafkaError) else "database"
