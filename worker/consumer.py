"""The worker: Kafka batches in, one PostgreSQL transaction per batch out.

A batch's path, top to bottom:

1. `getmany` returns records of the partitions this worker owns and has positioned;
2. each record is decoded into its struct, or into a dead letter with a reason;
3. in ONE transaction: the offsets of the batch's partitions are compare-and-set (fencing a
   worker that lost its partition), the handlers write the events (a record the database
   rejects is isolated by bisection and becomes a dead letter), and the dead letters are
   published and acknowledged by the broker;
4. the transaction commits; then the offsets are also committed to Kafka for lag tools.

A transient failure anywhere in 3 rolls back, pauses the partitions (membership stays: the
loop keeps polling), backs off, and retries the same batch. Shutdown finishes or abandons the
batch in hand (never half of it), leaves the group and closes connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from schemas.common import tag_of
from worker import offsets
from worker.batching import BatchBudget
from worker.config import ConfigError, Settings
from worker.decode import (
    REJECTED_BY_DATABASE,
    SCHEMA_VIOLATION,
    DecodeFailure,
    EventDecoder,
    interview_decoder,
    proctoring_decoder,
    truncate,
)
from worker.dlq import DeadLetter, DeadLetterPublisher
from worker.fetch import PartitionReader
from worker.handlers.base import Item
from worker.metrics import HealthServer, LagCollector, Metrics
from worker.migrate import migrate
from worker.retry import Backoff, describe, is_record_error, is_size_error
from worker.router import (
    Prepared,
    PrepareError,
    prepare_batch,
    prepare_batch_cooperatively,
    write_batch,
)

log = structlog.get_logger("worker")

# Errors that say "the world is broken, try again", as opposed to a bug in this program.
TRANSIENT = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A connection whose query was cancelled mid-flight (a client timeout during an outage)
    # refuses the next command with this; the pool replaces it.
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
    KafkaError,
)


class _Rejected(Exception):
    """The database rejected records of a batch: roll back, dead-letter them, store the rest."""

    def __init__(self, found: list[tuple[Item, str, str]]) -> None:
        super().__init__(f"{len(found)} records rejected")
        self.found = found


class _Fenced(Exception):
    def __init__(self, partitions: set[TopicPartition]) -> None:
        super().__init__(f"offsets moved by another worker: {sorted(partitions)}")
        self.partitions = partitions


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker._on_assigned(set(assigned))


class Worker:
    """Consumes the proctoring and interview topics until `stop()` is called."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._decoders: dict[str, EventDecoder] = {
            settings.proctoring_topic: proctoring_decoder,
            settings.interview_topic: interview_decoder,
        }
        self._stop = asyncio.Event()
        # Where each owned partition's next batch must start, as stored in consumer_offsets
        # (None: no row yet). Only partitions in this map are processed.
        self._positions: dict[TopicPartition, int | None] = {}
        # Assigned but not yet positioned from the database; paused until they are.
        self._pending: set[TopicPartition] = set()
        # One commit lane per database connection: partitions are split between lanes, and
        # each lane commits its share of a batch on its own connection, so PostgreSQL works on
        # up to `db_lanes` transactions at once while a partition's batches stay in order.
        self._lanes = settings.db_lanes
        self._commit_locks = [asyncio.Lock() for _ in range(self._lanes)]
        # getmany is called by the main loop and, while a batch retries, by the backoff.
        self._fetch_lock = asyncio.Lock()
        self._fetch_backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        self._budget = BatchBudget(settings.max_batch_records, settings.max_batch_bytes)
        self.metrics = Metrics()
        # Partition by partition, so an undecodable batch stalls only its own partition.
        self._reader = PartitionReader(self.metrics)
        # Bumped whenever a partition is (re)positioned: records fetched before that belong
        # to an older reading of the partition and must not be committed.
        self._epochs: dict[TopicPartition, int] = {}
        # Partitions read again from the start because their log was lost, by stored offset.
        self._rewound: dict[TopicPartition, int] = {}
        self._pool: asyncpg.Pool | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: DeadLetterPublisher | None = None
        self._retrying: set[int] = set()  # lanes retrying a transient failure
        # When the current run of transient failures began (None: healthy); drives /readyz.
        self._failing_since: float | None = None
        self._db_check: tuple[float, bool] = (0.0, False)
        self.stats: dict[str, int] = {"consumed": 0, "stored": 0, "dead_lettered": 0, "batches": 0}
        self.ready = asyncio.Event()
        self.metrics.registry.register(LagCollector(self._lag))
        self.health: HealthServer | None = None

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
        self._pool = await self._until_connected()
        if s.auto_migrate:
            await self._retrying_call("migrations", self._migrate)
        producer = AIOKafkaProducer(
            **s.kafka_options(),
            acks="all",
            enable_idempotence=False,  # idempotence needs InitProducerId, which some brokers lack
            linger_ms=5,
            max_batch_size=1 << 20,
            # A dead letter carries a record the consumer could fetch (up to
            # max_partition_fetch_bytes) plus headers; the broker's topic limit still
            # applies, and dlq.py truncates what it refuses.
            max_request_size=8 << 20,
            client_id=f"{s.group_id}-dlq",
        )
        consumer = AIOKafkaConsumer(
            **s.kafka_options(),
            group_id=s.group_id,
            client_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # What the fetcher buffers ahead of the batch counts towards memory too: no more
            # than one batch's worth of bytes.
            max_partition_fetch_bytes=min(4 << 20, self._budget.max_bytes),
            fetch_max_bytes=min(32 << 20, self._budget.max_bytes),
            isolation_level="read_committed",
            # How long the broker holds a fetch open waiting for data; also bounds how long
            # a record can sit on the broker before this worker sees it.
            fetch_max_wait_ms=s.fetch_wait_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
        )
        self._consumer = consumer
        self._dlq = DeadLetterPublisher(producer, s.dlq_topic, s.group_id)
        try:
            await self._retrying_call("kafka producer", producer.start)
            await self._retrying_call("kafka consumer", consumer.start)
            await self._check_topics(consumer)
            consumer.subscribe(list(s.topics), listener=_Listener(self))
            log.info("worker running", topics=list(s.topics), group_id=s.group_id)
            self.ready.set()
            await self._loop(consumer)
        finally:
            await self._shutdown(consumer, producer)

    async def _shutdown(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        log.info("worker stopping", **self.stats)
        timeout = self.settings.shutdown_timeout_s
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

    async def _check_topics(self, consumer: AIOKafkaConsumer) -> None:
        """Refuse to start without the three topics: a missing dead-letter topic would
        otherwise surface at the first bad record, with every partition stuck behind it."""
        # Metadata for all topics: asking for these by name could auto-create them.
        existing = await self._retrying_call("kafka metadata", consumer.topics)
        for name in ("proctoring_topic", "interview_topic", "dlq_topic"):
            topic = getattr(self.settings, name)
            if topic not in existing:
                raise ConfigError(
                    f"{Settings.env_name(name)}: topic {topic!r} does not exist on the broker"
                )

    async def _until_connected(self) -> asyncpg.Pool:
        async def connect() -> asyncpg.Pool:
            return await asyncpg.create_pool(
                self.settings.database_url,
                min_size=1,
                max_size=self.settings.db_pool_size,
                command_timeout=self.settings.db_command_timeout_s,
            )

        return await self._retrying_call("database", connect)

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

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Sleep `delay` seconds; return True at once if stop() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return self._stop.is_set()

    # -- rebalance -----------------------------------------------------------------------

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        if not assigned:
            return
        self._pending |= assigned
        # Until its stored offset is known, a partition must not deliver records.
        assert self._consumer is not None
        self._consumer.pause(*assigned)
        log.info("partitions assigned", partitions=_names(assigned))

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        # Let an in-flight commit finish so the next owner starts where it ended; bounded,
        # because the compare-and-set keeps us safe even if we cannot wait.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                for lock in self._commit_locks:
                    await lock.acquire()
                    lock.release()
        for tp in revoked:
            self._positions.pop(tp, None)
            self._pending.discard(tp)
        log.info("partitions revoked", partitions=_names(revoked))

    async def _position_pending(self, consumer: AIOKafkaConsumer) -> None:
        """Seek newly assigned partitions to their stored offset, and a partition without a
        row to the start of its log: Kafka's committed offset (written for lag tools only)
        would turn a deleted row into records skipped instead of replayed."""
        tps = self._pending & consumer.assignment()
        self._pending -= self._pending - tps
        if not tps:
            return

        async def load() -> dict[TopicPartition, int]:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                return await offsets.load(conn, self.settings.group_id, tps)

        stored = await self._retrying_call("database", load)
        starts = await self._retrying_call(
            "kafka", functools.partial(offsets.log_starts, consumer, tps - stored.keys())
        )
        still = tps & consumer.assignment() & self._pending
        for tp in still:
            consumer.seek(tp, stored[tp] if tp in stored else starts[tp])
            # None, not the log start: the compare-and-set must expect "no row", so that the
            # first commit creates it (and loses to anyone who created it first).
            self._positions[tp] = stored.get(tp)
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
        self._pending -= still
        consumer.resume(*still)
        log.info(
            "partitions positioned",
            stored={f"{tp.topic}[{tp.partition}]": stored.get(tp) for tp in sorted(still)},
            from_log_start={
                f"{tp.topic}[{tp.partition}]": starts[tp] for tp in sorted(still - stored.keys())
            },
        )

    # -- the loop ------------------------------------------------------------------------

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        """Fetch and decode the next batch while the previous ones commit.

        Each lane has at most one batch in flight (a partition's offsets must advance in
        order); the next batch grows while the lanes are busy, so batches are small when
        traffic is light (low latency) and large under load (few transactions)."""
        s = self.settings
        progress = _Progress(self.stats)
        inflight: dict[int, asyncio.Task[None]] = {}
        next_reset_check = time.monotonic()
        try:
            while not self._stop.is_set():
                progress.maybe_log()
                if time.monotonic() >= next_reset_check:
                    self._rewind_reset_logs(consumer)
                    next_reset_check = time.monotonic() + 5.0
                if self._retrying and inflight:
                    # A lane is backing off with every partition paused: nothing to fetch
                    # until it recovers (the lane keeps polling for group membership).
                    await asyncio.wait(inflight.values(), return_when=asyncio.FIRST_COMPLETED)
                    _reap(inflight)
                    continue
                if self._pending:
                    await self._position_pending(consumer)
                batch: dict[TopicPartition, _Part] = {}
                budget = self._budget.start()
                while not self._stop.is_set():
                    busy = bool(inflight) and not any(t.done() for t in inflight.values())
                    wait = min(s.fetch_wait_ms, 5) if busy else s.fetch_wait_ms
                    fetched = await self._fetch(consumer, wait, budget.room())
                    budget.add(*await self._prepare(fetched, batch))
                    if budget.full or not busy:
                        break
                for lane, share in self._split(batch).items():
                    # Rows encoded for COPY before waiting: this CPU work overlaps the
                    # lane's previous batch's time in PostgreSQL.
                    prepared: Prepared | None
                    try:
                        prepared = await prepare_batch_cooperatively(
                            item for tp in sorted(share) for item in share[tp].items
                        )
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

    def _rewind_reset_logs(self, consumer: AIOKafkaConsumer) -> None:
        """A stored offset beyond the broker's log end means the log was lost (topic deleted
        and recreated, a broker without its data). Kafka answers such a fetch with
        OffsetOutOfRange and the consumer resets to the earliest offset; some brokers just
        return nothing, forever. Either way the records now in the log are new: read them
        from the start (the compare-and-set still expects the stored offset)."""
        for tp, position in list(self._positions.items()):
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # revoked meanwhile
                continue
            if position is None or highwater is None or position <= highwater:
                continue
            if self._rewound.get(tp) == position:
                continue  # already reading it again from the start
            self._rewound[tp] = position
            log.warning(
                "stored offset is beyond the partition's log end; reading it from the start",
                topic=tp.topic,
                partition=tp.partition,
                stored_offset=position,
                log_end=highwater,
            )
            consumer.seek(tp, 0)
            self._epochs[tp] = self._epochs.get(tp, 0) + 1

    def _split(self, batch: dict[TopicPartition, _Part]) -> dict[int, dict[TopicPartition, _Part]]:
        lanes: dict[int, dict[TopicPartition, _Part]] = {}
        for tp, part in batch.items():
            lanes.setdefault(tp.partition % self._lanes, {})[tp] = part
        return lanes

    async def _fetch(
        self, consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Any]]:
        async with self._fetch_lock:
            try:
                fetched = (
                    await self._reader.fetch(consumer, timeout_ms, max_records)
                ).by_partition()
            except KafkaError as exc:
                if self._fetch_backoff.attempt == 0:
                    log.warning("kafka fetch failed, retrying", error=describe(exc))
                self.metrics.retries.labels("kafka").inc()
                await self._sleep_or_stop(self._fetch_backoff.next_delay())
                return {}
        if self._fetch_backoff.attempt:
            log.info("kafka fetch recovered")
            self._fetch_backoff.reset()
        return fetched

    async def _prepare(
        self, fetched: dict[TopicPartition, list[Any]], batch: dict[TopicPartition, _Part]
    ) -> tuple[int, int]:
        """Decode the records of positioned partitions, from their stored offset on, into
        `batch`; return how many records were added and their bytes (keys and values)."""
        added = nbytes = 0
        for tp, records in fetched.items():
            if tp not in self._positions or not records:
                continue
            start = self._positions[tp]
            if start is not None and records[0].offset < start:
                # After a seek the fetcher only returns records from the new position, so
                # lower offsets mean the broker no longer has the stored one (topic deleted
                # and recreated, or a broker that lost its log) and reset to earliest. Skipping
                # them would drop every new record below the old offset without a trace:
                # process them (upserts are idempotent) and say so.
                log.warning(
                    "partition restarts below its stored offset; the log was reset",
                    topic=tp.topic,
                    partition=tp.partition,
                    stored_offset=start,
                    first_offset=records[0].offset,
                )
            epoch = self._epochs.get(tp, 0)
            part = batch.get(tp)
            if part is None or part.epoch != epoch:
                part = batch[tp] = _Part(epoch)
            decode = self._decoders[tp.topic].decode
            topic, partition = tp.topic, tp.partition
            items, letters = part.items, part.letters
            size = 0
            for n, record in enumerate(records, 1):
                if not n % 500:
                    await asyncio.sleep(0)  # let in-flight commits take their next step
                size += _size(record)
                result = decode(record.value)
                if isinstance(result, DecodeFailure):
                    letters.append(DeadLetter(record, result))
                else:
                    items.append(Item(result, topic, partition, record.offset))
            part.records.extend(records)
            part.nbytes += size
            added += len(records)
            nbytes += size
        return added, nbytes

    async def _handle(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, _Part],
        prepared: Prepared | None,
        lane: int = 0,
    ) -> None:
        try:
            await self._handle_batch(consumer, batch, prepared, lane)
        finally:
            # However the batch ended (committed, fenced away, revoked, abandoned at stop),
            # this lane no longer holds the partitions paused.
            if lane in self._retrying:
                self._retrying.discard(lane)
                if not self._retrying:
                    consumer.resume(*(consumer.assignment() - self._pending))
                    self._failing_since = None

    async def _handle_batch(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, _Part],
        prepared: Prepared | None,
        lane: int,
    ) -> None:
        started = time.perf_counter()
        backoff = Backoff(self.settings.retry_initial_s, self.settings.retry_max_s)
        # Partitions another worker turned out to own: their records here are stale.
        fenced_out: set[TopicPartition] = set()
        letters = _Letters()
        records = sum(len(part.records) for part in batch.values())
        while True:
            # A partition revoked, re-positioned or fenced since the fetch is not ours to
            # commit any more: its records here may be stale.
            live = {
                tp
                for tp, part in batch.items()
                if tp in self._positions
                and tp not in fenced_out
                and self._epochs.get(tp, 0) == part.epoch
            }
            if not live:
                return
            try:
                async with self._commit_locks[lane]:
                    await self._commit(batch, live, prepared, letters)
            except _Fenced as fenced:
                fenced_out |= fenced.partitions
                await self._retrying_call(
                    "database", functools.partial(self._refence, consumer, fenced.partitions)
                )
                continue
            except TRANSIENT as exc:
                self.metrics.retries.labels(_dependency(exc)).inc()
                halves = _halves({tp: batch[tp] for tp in live}) if is_size_error(exc) else None
                if halves is not None:
                    # Retrying the same batch would fail the same way: commit it in two
                    # parts, in order (the second one's compare-and-set expects the first's).
                    log.warning(
                        "batch failed for its size or duration; splitting it",
                        error=describe(exc),
                        records=records,
                    )
                    for half in halves:
                        await self._handle_batch(consumer, half, None, lane)
                    return
                if backoff.attempt == 0:
                    log.warning("batch failed, retrying", error=describe(exc), records=records)
                    consumer.pause(*consumer.assignment())
                    self._retrying.add(lane)
                    self._failing_since = self._failing_since or time.monotonic()
                if await self._wait_polling(consumer, backoff.next_delay()):
                    log.info("stopping: batch abandoned uncommitted", records=records)
                    # Batches fetched behind this one start after records that were never
                    # stored: they must not commit (their offsets would skip these).
                    for tp in live:
                        self._epochs[tp] = self._epochs.get(tp, 0) + 1
                    return
                continue
            break
        if backoff.attempt:
            log.info("batch committed after retries", attempts=backoff.attempt + 1)
        if not self._retrying - {lane}:
            self._failing_since = None
        moves = {tp: batch[tp].next_offset for tp in live}
        self._positions.update(moves)
        self._account(batch, live, letters.rejected, time.perf_counter() - started)
        await self._commit_kafka(consumer, moves)

    def _account(
        self,
        batch: dict[TopicPartition, _Part],
        live: set[TopicPartition],
        rejected: Sequence[DeadLetter],
        duration: float,
    ) -> None:
        """Counters and the batch log line, once per committed batch."""
        m = self.metrics
        rejected_at = {(d.record.topic, d.record.partition, d.record.offset) for d in rejected}
        consumed = nbytes = 0
        stored_by_class: dict[tuple[str, type], int] = {}
        dead: list[DeadLetter] = list(rejected)
        for tp in live:
            part = batch[tp]
            consumed += len(part.records)
            nbytes += part.nbytes
            m.consumed.labels(tp.topic).inc(len(part.records))
            m.last_offset.labels(tp.topic, str(tp.partition)).set(part.next_offset - 1)
            for item in part.items:
                if rejected_at and (item.topic, item.partition, item.offset) in rejected_at:
                    continue
                key = (item.topic, type(item.event))
                stored_by_class[key] = stored_by_class.get(key, 0) + 1
            dead.extend(part.letters)
        # Counted by struct class per record, named (tag_of) once per class and batch.
        stored = {(topic, tag_of(cls)): n for (topic, cls), n in stored_by_class.items()}
        for (topic, event_type), n in stored.items():
            m.stored.labels(topic, event_type).inc(n)
        for d in dead:
            m.dead_letters.labels(d.failure.reason).inc()
        m.batch_duration.observe(duration)
        m.batch_records.observe(consumed)
        self.stats["batches"] += 1
        self.stats["consumed"] += consumed
        self.stats["stored"] += sum(stored.values())
        self.stats["dead_lettered"] += len(dead)
        log.debug(
            "batch committed",
            records=consumed,
            bytes=nbytes,
            stored=sum(stored.values()),
            dead_lettered=len(dead),
            partitions=len(live),
            duration_ms=round(duration * 1000, 2),
        )

    def _lag(self) -> dict[tuple[str, int], int]:
        consumer = self._consumer
        if consumer is None:
            return {}
        lag: dict[tuple[str, int], int] = {}
        for tp, position in list(self._positions.items()):
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # partition revoked between the two reads
                continue
            if highwater is not None and position is not None:
                lag[(tp.topic, tp.partition)] = max(0, highwater - position)
        return lag

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = running, the database answers now, and not failing for too long."""
        started = self.ready.is_set() and not self._stop.is_set()
        database = await self._database_answers()
        failing_s = None if self._failing_since is None else time.monotonic() - self._failing_since
        stuck = failing_s is not None and failing_s > self.settings.ready_max_retry_s
        # Paused on a record batch that cannot be decoded (worker/fetch.py).
        unreadable = self._reader.stuck()
        detail = {
            "running": started,
            "database": database,
            "failing_for_s": None if failing_s is None else round(failing_s, 1),
            "partitions_owned": len(self._positions),
            "partitions_pending": len(self._pending),
            "partitions_stuck": _names(set(unreadable)),
        }
        return (started and database and not stuck and not unreadable), detail

    async def _database_answers(self) -> bool:
        checked_at, ok = self._db_check
        if time.monotonic() - checked_at < 1.0:
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

    async def _wait_polling(self, consumer: AIOKafkaConsumer, delay: float) -> bool:
        """Back off for `delay` seconds while polling the paused consumer, so the group does
        not evict this member for exceeding max.poll.interval. True if stopping."""
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stop.is_set():
                return True
            with contextlib.suppress(KafkaError):
                async with self._fetch_lock:
                    await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
        return self._stop.is_set()

    async def _commit(
        self,
        batch: dict[TopicPartition, _Part],
        live: set[TopicPartition],
        batch_prepared: Prepared | None,
        letters: _Letters,
    ) -> None:
        """Publish the dead letters, then store the rest and move the offsets in one
        transaction.

        The broker acknowledges every dead letter before a transaction opens, so a slow or
        refusing broker never holds row locks, and the offset that passes a dead letter
        commits only after its acknowledgement. Records the database rejects are found by
        bisection inside the transaction; it is rolled back, their dead letters published,
        and the batch stored again without them."""
        assert self._pool is not None
        items = [item for tp in sorted(live) for item in batch[tp].items]
        decoded_out = [letter for tp in sorted(live) for letter in batch[tp].letters]
        while True:
            pending = letters.unsent(decoded_out)
            await self._publish(pending)
            letters.sent(pending)
            storable = letters.storable(items)
            # The batch was prepared for all its records; if some were lost since (a
            # rebalance during the previous commit, a rejected record), they are prepared again.
            prepared = batch_prepared if live == set(batch) and not letters.rejected else None
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    expected = {tp: (self._positions[tp], batch[tp].next_offset) for tp in live}
                    done = await offsets.advance(conn, self.settings.group_id, expected)
                    if done != live:
                        raise _Fenced(live - done)
                    found = await self._store(conn, storable, prepared)
                    if found:
                        raise _Rejected(found)  # rolls the transaction back
                return
            except _Rejected as rejected:
                for item, reason, message in rejected.found:
                    part = batch[TopicPartition(item.topic, item.partition)]
                    letters.reject(part, item, reason, message)

    async def _publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send dead letters and wait for the broker's acknowledgement of all of them."""
        assert self._dlq is not None
        for letter in letters:
            r = letter.record
            log.debug(
                "dead letter",
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                reason=letter.failure.reason,
            )
        await self._dlq.publish(letters)

    async def _store(
        self, conn: asyncpg.Connection, items: Sequence[Item], prepared: Prepared | None = None
    ) -> list[tuple[Item, str, str]]:
        """Write `items`; isolate records the database rejects (or a handler cannot prepare)
        by bisection under savepoints. Returns the rejected items, dead-letter reason and
        message."""
        if not items:
            return []
        try:
            async with conn.transaction():
                await write_batch(conn, prepare_batch(items) if prepared is None else prepared)
            return []
        except PrepareError as exc:
            if len(items) == 1:
                return [(items[0], SCHEMA_VIOLATION, truncate(str(exc)))]
        except Exception as exc:
            if not is_record_error(exc):
                raise
            if len(items) == 1:
                return [(items[0], REJECTED_BY_DATABASE, truncate(describe(exc)))]
        mid = len(items) // 2
        return await self._store(conn, items[:mid]) + await self._store(conn, items[mid:])

    async def _refence(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        """Another worker, or an operator (`worker offsets reset`, a deleted row), moved these
        partitions' offsets: continue from what is stored now, and where no row is left from
        the start of the log, as at assignment (staying put would skip the replay asked for)."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            stored = await offsets.load(conn, self.settings.group_id, partitions)
        starts = await offsets.log_starts(consumer, partitions - stored.keys())
        # Counted once both reads succeeded: the caller retries this whole call on failure.
        self.metrics.fenced.inc()
        for tp in partitions:
            if tp in self._positions and tp in consumer.assignment():
                self._positions[tp] = stored.get(tp)  # None: the next commit creates the row
                self._epochs[tp] = self._epochs.get(tp, 0) + 1
                consumer.seek(tp, stored[tp] if tp in stored else starts[tp])
        log.warning(
            "offsets fenced by another writer",
            partitions=_names(partitions),
            stored={f"{tp.topic}[{tp.partition}]": stored.get(tp) for tp in sorted(partitions)},
        )

    async def _commit_kafka(
        self, consumer: AIOKafkaConsumer, moves: dict[TopicPartition, int]
    ) -> None:
        owned = consumer.assignment()
        commit = {tp: OffsetAndMetadata(n, "") for tp, n in moves.items() if tp in owned}
        if not commit:
            return
        try:
            await consumer.commit(commit)
        except KafkaError as exc:
            # The database is the source of truth; Kafka's copy is for lag tools only.
            log.debug("kafka offset commit skipped", error=describe(exc))


class _Part:
    """One partition's share of a batch: its records, decoded or dead-lettered."""

    __slots__ = ("_by_offset", "epoch", "items", "letters", "nbytes", "records")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.records: list[Any] = []
        self.nbytes = 0  # keys and values, as fetched
        self.items: list[Item] = []
        self.letters: list[DeadLetter] = []
        self._by_offset: dict[int, Any] | None = None

    @property
    def next_offset(self) -> int:
        return int(self.records[-1].offset) + 1

    def record_at(self, offset: int) -> Any:
        """The record at `offset`, in constant time (the index is built on first use: only
        batches with records the database rejected need it)."""
        if self._by_offset is None:
            self._by_offset = {record.offset: record for record in self.records}
        return self._by_offset[offset]

    def split(self) -> tuple[_Part, _Part]:
        """The first half of the records (with their items and letters) and the rest."""
        cut = self.records[(len(self.records) + 1) // 2].offset
        head, tail = _Part(self.epoch), _Part(self.epoch)
        for part, keep in ((head, lambda o: o < cut), (tail, lambda o: o >= cut)):
            part.records = [r for r in self.records if keep(r.offset)]
            part.nbytes = sum(_size(r) for r in part.records)
            part.items = [i for i in self.items if keep(i.offset)]
            part.letters = [d for d in self.letters if keep(d.record.offset)]
        return head, tail


def _halves(
    batch: dict[TopicPartition, _Part],
) -> tuple[dict[TopicPartition, _Part], dict[TopicPartition, _Part]] | None:
    """`batch` in two smaller batches to commit one after the other, or None for a single
    record. Whole partitions go to either half while there are several; a lone partition is
    cut in two, its first records first."""
    tps = sorted(batch)
    if len(tps) > 1:
        mid = len(tps) // 2
        return {tp: batch[tp] for tp in tps[:mid]}, {tp: batch[tp] for tp in tps[mid:]}
    (tp,) = tps
    if len(batch[tp].records) < 2:
        return None
    head, tail = batch[tp].split()
    return {tp: head}, {tp: tail}


class _Letters:
    """A batch's dead letters across its attempts: which the broker has acknowledged, and
    which records the database rejected (they stay out of every later attempt)."""

    __slots__ = ("_rejected_at", "_sent", "rejected")

    def __init__(self) -> None:
        self._sent: set[tuple[str, int, int]] = set()
        self._rejected_at: set[tuple[str, int, int]] = set()
        self.rejected: list[DeadLetter] = []

    def unsent(self, decoded_out: Sequence[DeadLetter]) -> list[DeadLetter]:
        """The letters the broker has not acknowledged yet, in partition and offset order."""
        pending = [
            d for d in (*decoded_out, *self.rejected) if _coordinates(d.record) not in self._sent
        ]
        pending.sort(key=lambda d: (d.record.partition, d.record.offset))
        return pending

    def sent(self, letters: Sequence[DeadLetter]) -> None:
        self._sent.update(_coordinates(d.record) for d in letters)

    def storable(self, items: list[Item]) -> list[Item]:
        if not self._rejected_at:
            return items
        return [i for i in items if (i.topic, i.partition, i.offset) not in self._rejected_at]

    def reject(self, part: _Part, item: Item, reason: str, message: str) -> None:
        record = part.record_at(item.offset)
        self._rejected_at.add((item.topic, item.partition, item.offset))
        self.rejected.append(DeadLetter(record, DecodeFailure(reason, message)))
        log.warning(
            "record rejected by database"
            if reason == REJECTED_BY_DATABASE
            else "record could not be prepared for storage",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            event_type=tag_of(item.event),
            error=message,
        )


def _size(record: Any) -> int:
    """A record's key and value bytes (aiokafka gives -1 for a null one)."""
    return max(record.serialized_value_size, 0) + max(record.serialized_key_size, 0)


def _coordinates(record: Any) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


def _reap(inflight: dict[int, asyncio.Task[None]]) -> None:
    """Forget finished lanes; a bug in a lane (its exception) stops the worker here."""
    for lane, task in list(inflight.items()):
        if task.done():
            del inflight[lane]
            task.result()


class _Progress:
    """One INFO line a minute while records flow: the happy path's only regular log line."""

    INTERVAL_S = 60.0

    def __init__(self, stats: dict[str, int]) -> None:
        self._stats = stats
        self._last_at = time.monotonic()
        self._last = dict(stats)

    def maybe_log(self) -> None:
        now = time.monotonic()
        elapsed = now - self._last_at
        if elapsed < self.INTERVAL_S or self._stats == self._last:
            return
        consumed = self._stats["consumed"] - self._last["consumed"]
        log.info(
            "progress",
            **{k: self._stats[k] - self._last[k] for k in self._stats},
            records_per_s=round(consumed / elapsed, 1),
            interval_s=round(elapsed, 1),
        )
        self._last_at = now
        self._last = dict(self._stats)


def _dependency(exc: BaseException) -> str:
    return "kafka" if isinstance(exc, KafkaError) else "database"


def _names(tps: set[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)]
