"""Fetching so that a record batch the worker cannot decode stalls only its own partition.

What aiokafka does (0.12 to 0.14, `aiokafka/consumer/fetcher.py`): a fetch response is kept per
partition undecoded, and `getmany` decodes while it drains (`Fetcher.fetched_records` ->
`FetchResult.getall` -> `PartitionRecords._unpack_records`). An exception from one partition's
batch (UnsupportedCodecError, CorruptRecordException, a decompressor's error, a header key
that is not UTF-8) leaves `getmany` without naming the partition, and:

- the records already drained from *other* partitions in that call are dropped, although the
  fetcher has moved their positions past them: lost without a trace;
- the failing partition's position does not move: the next fetch reads the same batch and
  raises again. It is retried forever, never skipped.

A call per partition avoids both, but costs in proportion to the partitions owned, on every
fetch (and aiokafka's drain walks its whole buffer for each: per fetch, partitions squared). So:

- normally every buffered partition is drained by ONE `getmany()`. Just before it, the
  positions of the buffered partitions are read (`Positions`: the only ones a call without a
  wait can drain). If it raises on an unreadable batch, each partition whose position moved is
  sought back to where it was, so the records drained with the failure are fetched again (the
  failing partition's own position never moved: aiokafka drops its half-read response and
  refetches it). Nothing is lost, and the next few seconds fall back to the per-partition calls
  below to find the partition. A rebalance during the call (a new aiokafka assignment) voids
  the positions and nothing is sought: the new owner starts from the stored offsets anyway.
  Where aiokafka keeps positions elsewhere (another version), every drain is per partition;
- per partition, `getmany(tp)`: an error names its partition and loses nothing. Used while an
  error has named no partition yet, and for the partitions that failed (the rest stay in one
  `getmany(*healthy)`);
- with nothing buffered, the wait for data is `getmany(max_records=1)`, which can only raise
  before it has drained a record. That error names no partition, so for a few seconds waits
  become polls of single partitions, until the batch (fetched again) fails in one of them;
- a partition that failed is drained one record per call: the records before the unreadable
  batch are delivered and the position stops exactly at it. Failing there too, the partition
  is paused, reported once, and read again with backoff until it can be read (the codec
  installed, the data replaced) or is revoked.

Every getmany return goes through `_returned`: each partition's records are stamped by the
caller's `stamp(tp)` and recorded with the consumer's position right after the call, before
anything else runs (worker/partitions.py claims on exactly that). Records returned are never
dropped here: a consumer error met after some were returned is raised by the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError

from worker.logs import tp_name
from worker.metrics import Metrics
from worker.retry import Backoff, describe

log = structlog.get_logger("worker.fetch")

Stamp = Callable[[TopicPartition], Any]


class Positions(NamedTuple):
    """Positions of some partitions, and what they are relative to (`token`: aiokafka's
    assignment object, which a rebalance replaces)."""

    token: object
    at: dict[TopicPartition, int]


# Reads positions: of the given partitions, or (None) of those with buffered fetched data.
ReadPositions = Callable[[Any, Iterable[TopicPartition] | None], Positions | None]


def aiokafka_positions(
    consumer: Any, tps: Iterable[TopicPartition] | None = None
) -> Positions | None:
    """From aiokafka's internals (0.12 to 0.14: `Fetcher._records`, the subscription's
    `Assignment.state_value`); None where they are not there, and the caller then does without."""
    try:
        assignment = consumer._subscription.subscription.assignment
        buffered = consumer._fetcher._records
    except AttributeError:
        return None
    if assignment is None:
        return None
    at: dict[TopicPartition, int] = {}
    for tp in buffered if tps is None else tps:
        state = assignment.state_value(tp)
        if state is not None and state.has_valid_position:
            at[tp] = state.position
    return Positions(assignment, at)


class Chunk(NamedTuple):
    """The records of one partition from one getmany return: the stamp the caller's
    `stamp(tp)` gave the moment they were returned, and the consumer's position for the
    partition right after the call (None where positions cannot be read)."""

    tp: TopicPartition
    stamp: Any
    records: list[Any]
    position: int | None


class Fetched(list[Chunk]):
    """What one fetch returned, in order."""

    def size(self) -> int:
        """How many records."""
        return sum(len(c.records) for c in self)


# How often a stuck partition is read again: it may become readable without a restart only if
# its data changes, so a minute apart at most is plenty and costs one fetch each.
STUCK_RETRY_INITIAL_S = 1.0
STUCK_RETRY_MAX_S = 60.0
# After an unreadable batch met while waiting (which names no partition), waits are polls of
# single partitions for this long; the batch is fetched again within a broker round trip.
POLL_WINDOW_S = 5.0
POLL_INTERVAL_S = 0.01

# Errors of decoding records that are aiokafka's own; any other exception out of getmany
# comes from decoding too (gzip, cramjam, UTF-8 of a header key), since getmany does no I/O.
_RECORD_ERRORS = (UnsupportedCodecError, CorruptRecordException)


def is_unreadable(exc: Exception) -> bool:
    """The error is about the records of a partition, not about the consumer or the group."""
    return isinstance(exc, _RECORD_ERRORS) or not isinstance(exc, KafkaError)


@dataclass(slots=True)
class _Failing:
    """A partition whose records could not be read; drained one record per call."""

    error: str
    backoff: Backoff
    stuck_since: float | None = None  # None: failed once, not yet confirmed where
    paused: bool = False  # paused by us, until `retry_at`
    retry_at: float = 0.0
    offset: int | None = field(default=None)


class PartitionReader:
    """getmany for the worker: same records and waits, without losing any to an unreadable
    batch."""

    def __init__(
        self,
        metrics: Metrics,
        stamp: Stamp,
        retry_initial_s: float = STUCK_RETRY_INITIAL_S,
        retry_max_s: float = STUCK_RETRY_MAX_S,
        dropped: Callable[[], None] = lambda: None,
        paused: Callable[[], set[TopicPartition]] = set,
        positions: ReadPositions = aiokafka_positions,
    ) -> None:
        self._metrics = metrics
        # The partitions an operator holds paused (worker pause): never resumed here, and
        # not a sign that the worker holds every partition.
        self._operator_paused = paused
        self._positions = positions
        # Told when pausing a partition drops its buffered data (worker/reclaim.py).
        self._dropped = dropped
        # Called for a partition right as its records return from getmany, before any other
        # task runs: nothing (a seek) can come between the two.
        self._stamp = stamp
        self._retry = (retry_initial_s, retry_max_s)
        self._failing: dict[TopicPartition, _Failing] = {}
        self._poll_until = 0.0
        self._turn = 0
        # A consumer error met after records were returned: raised by the next call.
        self._deferred: Exception | None = None

    def stuck(self) -> list[TopicPartition]:
        """Partitions held on a batch that cannot be read (for readiness)."""
        return sorted(tp for tp, f in self._failing.items() if f.stuck_since is not None)

    async def fetch(self, consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int) -> Fetched:
        """Up to `max_records` records, waiting up to `timeout_ms` if none is buffered. An
        error met after records were returned is raised by the next call instead, so that
        what the consumer returned is never dropped with it."""
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc
        self._forget_revoked(consumer)
        self._pause_or_retry(consumer)
        fetched = Fetched()
        try:
            await self._read(consumer, timeout_ms, max_records, fetched)
        except Exception as exc:
            if not fetched:
                raise
            self._deferred = exc
        return fetched

    async def _read(
        self, consumer: AIOKafkaConsumer, timeout_ms: int, budget: int, into: Fetched
    ) -> None:
        await self._drain(consumer, budget, into)
        if into or timeout_ms <= 0:
            return
        if time.monotonic() < self._poll_until:
            await self._poll(consumer, timeout_ms, budget, into)
            return
        try:
            waited = await consumer.getmany(timeout_ms=timeout_ms, max_records=1)
        except Exception as exc:
            if not is_unreadable(exc):
                raise
            log.debug("unreadable batch met while waiting; polling partitions", error=describe(exc))
            self._poll_until = time.monotonic() + POLL_WINDOW_S
            await self._drain(consumer, budget, into)
            return
        self._returned(consumer, waited, into)
        if budget > into.size():
            await self._drain(consumer, budget - into.size(), into)

    def _returned(
        self, consumer: AIOKafkaConsumer, got: dict[TopicPartition, list[Any]], into: Fetched
    ) -> None:
        """Stamp what one getmany returned and record each partition's position after it
        (no await here: nothing can seek in between)."""
        returned = [tp for tp, records in got.items() if records]
        if not returned:
            return
        now = self._positions(consumer, returned)
        at = {} if now is None else now.at
        for tp in returned:
            into.append(Chunk(tp, self._stamp(tp), got[tp], at.get(tp)))

    # -- draining ----------------------------------------------------------------------

    async def _drain(self, consumer: AIOKafkaConsumer, budget: int, into: Fetched) -> None:
        """What is buffered, into `into`: the healthy partitions in one call, the failing ones
        each by its own; every partition by its own while an unreadable batch is not yet
        attributed."""
        if time.monotonic() < self._poll_until:
            await self._drain_each(consumer, budget, into)
            return
        fetchable = consumer.assignment() - consumer.paused()
        failing = fetchable & self._failing.keys()
        if failing:
            budget -= await self._drain_each(consumer, budget, into, sorted(failing))
        healthy = fetchable - failing
        if not healthy or budget <= 0:
            return
        before = self._positions(consumer, None)
        if before is None:
            await self._drain_each(consumer, budget, into, sorted(healthy))
            return
        try:
            # No partitions named: aiokafka's drain skips none (paused ones it drops itself).
            got = await consumer.getmany(*([] if not failing else healthy), max_records=budget)
        except Exception as exc:
            # aiokafka raises a partition's fetch error only before it drains any record.
            if not is_unreadable(exc):
                raise
            self._rewind(consumer, before)
            log.debug("unreadable batch in a drain of all partitions", error=describe(exc))
            self._poll_until = time.monotonic() + POLL_WINDOW_S
            await self._drain_each(consumer, budget, into, sorted(healthy))
            return
        self._returned(consumer, got, into)

    def _rewind(self, consumer: AIOKafkaConsumer, before: Positions) -> None:
        """Seek every partition that moved in a failed drain back to where it was: the records
        drained with the failure were never returned."""
        now = self._positions(consumer, before.at)
        if now is None or now.token is not before.token:
            return  # rebalanced meanwhile: the positions are the new assignment's
        for tp, position in before.at.items():
            if now.at.get(tp, position) != position:
                consumer.seek(tp, position)

    async def _drain_each(
        self,
        consumer: AIOKafkaConsumer,
        budget: int,
        into: Fetched,
        partitions: list[TopicPartition] | None = None,
    ) -> int:
        """What is buffered, partition by partition, starting with a different one each time
        so that a busy partition cannot take every batch's whole budget; how many records."""
        start = into.size()
        for tp in self._rotation(consumer, partitions):
            left = budget - (into.size() - start)
            if left <= 0:
                break
            failing = self._failing.get(tp)
            before = into.size()
            exhausted = False
            try:
                if failing is None:
                    self._returned(consumer, await consumer.getmany(tp, max_records=left), into)
                else:
                    exhausted = await self._drain_one_by_one(consumer, tp, left, into)
            except Exception as exc:
                if not is_unreadable(exc):
                    raise  # the consumer's, not this partition's records
                await self._unreadable(consumer, tp, exc)
                continue
            if failing is not None and exhausted and into.size() > before:
                self._readable_again(tp, failing)
        return into.size() - start

    async def _drain_one_by_one(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, budget: int, into: Fetched
    ) -> bool:
        """Records of `tp` into `into` until the buffer is empty (True), the budget is used
        (False) or one fails (raises). The fetcher moves the position after every call, so
        the records returned before a failure are kept and the position is left at the
        unreadable batch."""
        for got in range(1, budget + 1):
            chunk = await consumer.getmany(tp, max_records=1)
            if not chunk.get(tp):
                return True
            self._returned(consumer, chunk, into)
            if not got % 500:
                await asyncio.sleep(0)  # a fetch response holds thousands: let commits run
        return False

    async def _poll(
        self, consumer: AIOKafkaConsumer, timeout_ms: int, budget: int, into: Fetched
    ) -> None:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            await self._drain(consumer, budget, into)
            remaining = deadline - time.monotonic()
            if into or remaining <= 0:
                return
            await asyncio.sleep(min(POLL_INTERVAL_S, remaining))

    def _rotation(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition] | None = None
    ) -> list[TopicPartition]:
        fetchable = (
            sorted(consumer.assignment() - consumer.paused()) if partitions is None else partitions
        )
        if not fetchable:
            return []
        self._turn = (self._turn + 1) % len(fetchable)
        return fetchable[self._turn :] + fetchable[: self._turn]

    # -- failing partitions ------------------------------------------------------------

    async def _unreadable(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, exc: Exception
    ) -> None:
        labels = (tp.topic, str(tp.partition))
        self._metrics.unreadable_batches.labels(*labels).inc()
        self._poll_until = 0.0  # found the partition
        failing = self._failing.get(tp)
        if failing is None:
            # Records before the bad batch may have shared its fetch response and gone down
            # with it: read it again one record at a time to stop exactly at the batch.
            self._failing[tp] = _Failing(describe(exc), Backoff(*self._retry))
            return
        failing.error = describe(exc)
        delay = failing.backoff.next_delay()
        failing.retry_at = time.monotonic() + delay
        failing.paused = True
        consumer.pause(tp)
        self._dropped()
        if failing.stuck_since is not None:
            log.debug("partition still unreadable", partition=tp_name(tp), error=failing.error)
            return
        failing.stuck_since = time.monotonic()
        failing.offset = await _position(consumer, tp)
        self._metrics.partition_stuck.labels(*labels).set(1)
        log.error(
            "partition stuck: a record batch cannot be read; the partition is paused, "
            "the others go on",
            topic=tp.topic,
            partition=tp.partition,
            offset=failing.offset,
            error=failing.error,
            retry_in_s=round(delay, 1),
        )

    def _readable_again(self, tp: TopicPartition, failing: _Failing) -> None:
        del self._failing[tp]
        if failing.stuck_since is None:
            return  # failed once, then read: a batch damaged on the way, fetched again
        self._metrics.partition_stuck.labels(tp.topic, str(tp.partition)).set(0)
        log.info(
            "partition readable again",
            topic=tp.topic,
            partition=tp.partition,
            offset=failing.offset,
            stuck_for_s=round(time.monotonic() - failing.stuck_since, 1),
        )

    def _pause_or_retry(self, consumer: AIOKafkaConsumer) -> None:
        """Keep stuck partitions paused (the worker resumes every partition after a retried
        batch) and resume each when its next read is due, unless the worker holds others
        paused: then it is positioning partitions or backing off, and reads nothing."""
        now = time.monotonic()
        paused = consumer.paused()
        operator = self._operator_paused()
        held = {tp for tp, f in self._failing.items() if f.paused}
        others_held = bool(paused - held - operator)
        for tp in held:
            failing = self._failing[tp]
            if tp in operator:
                continue  # paused by an operator: read again once resumed and due
            if now >= failing.retry_at and not others_held:
                failing.paused = False
                consumer.resume(tp)
            elif tp not in paused:
                consumer.pause(tp)

    def _forget_revoked(self, consumer: AIOKafkaConsumer) -> None:
        owned = consumer.assignment()
        for tp in [tp for tp in self._failing if tp not in owned]:
            del self._failing[tp]
            self._metrics.partition_stuck.labels(tp.topic, str(tp.partition)).set(0)


async def _position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The first offset not delivered, if the consumer knows it now (for the log line)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1):
            return int(await consumer.position(tp))
    return None
