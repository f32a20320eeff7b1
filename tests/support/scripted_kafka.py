"""A scripted Kafka for driving the real `Worker` through exact interleavings.

Kafka is faked, PostgreSQL is not: `ScriptedClients` hands the worker a real asyncpg pool on
the test database, and a `ScriptedConsumer` / `ScriptedProducer` that the test steers.

What the consumer mimics of aiokafka 0.14's `AIOKafkaConsumer` (consumer/consumer.py,
consumer/fetcher.py, consumer/subscription_state.py):

- `getmany` returns records only of assigned, unpaused partitions, from each one's position,
  in offset order, and moves the position past them. Partitions come in the order their data
  "arrived" (the order the test appended it), as aiokafka drains its fetch responses.
- With nothing to return it waits up to `timeout_ms` (on asyncio: the test interleaves), and
  while a rebalance is in progress (between `revoke()` and `assign()`, and before the first
  assignment) it waits for the assignment whatever the timeout, as `fetched_records` does.
- A seek, a pause, or a new assignment invalidates what a fetch in flight was about to return
  for that partition: records fetched before a seek are never returned after it.
- A rebalance calls the subscribed `ConsumerRebalanceListener` and awaits it; an exception of
  the listener is recorded (`listener_errors`) and swallowed, as aiokafka logs and swallows it.
  aiokafka's eager protocol revokes the whole assignment, so `revoke()` does by default; a new
  assignment gets fresh partition states (unpaused, positioned at the Kafka-committed offset or
  the log start) for every partition, kept ones included.
- `seek`, `pause`, `resume`, `position`, `highwater`, `commit` on a partition that is not
  assigned fail as aiokafka's do (IllegalStateError, AssertionError for highwater).
- Offsets without a record (transaction markers, compacted records: `append_marker`) are never
  returned, but a drain that reaches the end of what is there moves the position past them,
  as aiokafka's does (`PartitionRecords.next_fetch_offset` runs past trailing control batches);
  a drain cut short by `max_records` stops right after its last record.
- An unreadable batch at a partition's position raises out of getmany (naming no partition)
  after the partitions drained before it in the same call have had their positions moved:
  their records are lost with the exception, as in aiokafka's `fetched_records`.
- The positions are readable the way worker/fetch.py reads aiokafka's
  (`_subscription.subscription.assignment.state_value(tp).position`, `_fetcher._records`),
  with a new assignment object at every assignment.

Script controls (all on the asyncio loop, none sleeps):

- `append(tp, value, key=None, headers=None)` (consumer or broker): a record at the log end.
- `await assign(tps)`, `await revoke(tps=None)`, `await rebalance(tps)`.
- `hold_fetches(*tps)` / `release_fetches()`: a getmany that has records to return (of `tps`,
  or any) takes them as a fetch in flight and blocks until released; `await wait_held()`.
- `fail_after_return(exc)`: the getmany call right after the next one that returns records
  raises `exc` before draining anything (a coordinator error from `check_errors()`, another
  partition's fetch error).
- `await wait_waiting()`: a getmany is inside its wait for data now; `await wait_fetches(n)`:
  the worker has called getmany n times; `await wait_seek(tp, offset)`; `await until(pred)`.
- Observations: `fetches` (every getmany call: arguments, what it returned, whether held),
  `seeks`, `pauses`, `commits` (Kafka offset commits), `rebalances`.

The producer keeps every record sent (`sent`) and the acknowledged ones (`acked`); it can fail
sends (`fail_sends`: the future raises KafkaTimeoutError, as a send the broker never
acknowledged) or hold them until released (`hold_sends` / `release_sends`).

`start_worker(settings, clients)` runs a Worker on these clients: through `Worker(settings,
clients=...)` when the worker takes one (worker/clients.py), otherwise by patching the
`AIOKafkaConsumer` / `AIOKafkaProducer` names in worker.consumer for the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import (
    ConsumerStoppedError,
    CorruptRecordException,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    ProducerClosed,
)
from aiokafka.structs import ConsumerRecord, RecordMetadata
from aiokafka.util import commit_structure_validate

Headers = Sequence[tuple[str, bytes | None]]


class Signal:
    """Wakes every waiter at each `notify()`: state changed, look again."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float | None = None) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


async def until(signal: Signal, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Wait until `predicate()` is truthy (re-checked at every notify); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await signal.wait(min(remaining, 0.05))


# -- the broker: logs shared by consumers and producers (a restart keeps them) ----------------


class ScriptedBroker:
    """Partition logs, log starts, Kafka-committed offsets of the group, produced records."""

    def __init__(self, partitions: Mapping[str, int]) -> None:
        # None at an offset: a marker, never returned as a record.
        self.logs: dict[TopicPartition, list[ConsumerRecord[bytes, bytes] | None]] = {
            TopicPartition(topic, p): [] for topic, n in partitions.items() for p in range(n)
        }
        self.log_start: dict[TopicPartition, int] = dict.fromkeys(self.logs, 0)
        self.committed: dict[TopicPartition, int] = {}
        # Offsets of record batches no fetch can decode (a corrupt or unsupported batch).
        self.unreadable: dict[TopicPartition, set[int]] = {}
        # When each record arrived (a global sequence): fetch responses drain in this order.
        self._arrival: dict[tuple[TopicPartition, int], int] = {}
        self._sequence = itertools.count()
        self.signal = Signal()

    @classmethod
    def for_settings(cls, settings: Any, partitions: int = 2) -> ScriptedBroker:
        return cls(
            {
                settings.proctoring_topic: partitions,
                settings.interview_topic: partitions,
                settings.dlq_topic: 1,
            }
        )

    def topics(self) -> set[str]:
        return {tp.topic for tp in self.logs}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        found = {tp.partition for tp in self.logs if tp.topic == topic}
        return found or None

    def end(self, tp: TopicPartition) -> int:
        return len(self.logs[tp])

    def append(
        self,
        tp: TopicPartition,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        timestamp: int | None = None,
    ) -> int:
        """Append a record at the log end; returns its offset."""
        log = self.logs[tp]
        offset = len(log)
        log.append(
            ConsumerRecord(
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
                timestamp_type=0,
                key=key,
                value=value,
                checksum=None,
                serialized_key_size=-1 if key is None else len(key),
                serialized_value_size=-1 if value is None else len(value),
                headers=tuple(headers or ()),
            )
        )
        self._arrival[(tp, offset)] = next(self._sequence)
        self.signal.notify()
        return offset

    def append_marker(self, tp: TopicPartition) -> int:
        """An offset that holds no record (a transaction's commit marker, a compacted record);
        returns it."""
        log = self.logs[tp]
        log.append(None)
        self._arrival[(tp, len(log) - 1)] = next(self._sequence)
        self.signal.notify()
        return len(log) - 1

    def arrival(self, tp: TopicPartition, offset: int) -> int:
        return self._arrival.get((tp, offset), -1)


# -- the consumer -----------------------------------------------------------------------------


class _PartitionState:
    """aiokafka's TopicPartitionState, reduced to what the worker can observe."""

    __slots__ = ("highwater", "paused", "position", "version")

    has_valid_position = True  # as aiokafka's, for worker/fetch.py's position reads

    def __init__(self, position: int) -> None:
        self.position = position
        self.paused = False
        # The log end as of the last fetch of this partition: aiokafka learns it from fetch
        # responses, and a paused partition is not fetched, so it goes stale.
        self.highwater: int | None = None
        # Bumped by seek and pause: a fetch in flight for an older version returns nothing.
        self.version = 0


class _Assignment:
    """aiokafka's `Assignment` as worker/fetch.py reads it: one object per assignment."""

    def __init__(self, states: dict[TopicPartition, _PartitionState]) -> None:
        self._states = states

    def state_value(self, tp: TopicPartition) -> _PartitionState | None:
        return self._states.get(tp)


class _Subscription:
    def __init__(self) -> None:
        self.assignment: _Assignment | None = None


class _Fetcher:
    """aiokafka's `Fetcher._records` as worker/fetch.py reads it: the partitions with data
    to drain (fetchable, with records or markers past their position)."""

    def __init__(self, consumer: ScriptedConsumer) -> None:
        self._consumer = consumer

    @property
    def _records(self) -> list[TopicPartition]:
        c = self._consumer
        return [
            tp
            for tp, s in c._assigned.items()
            if not s.paused and c.broker.end(tp) > max(s.position, c.broker.log_start[tp])
        ]


@dataclass
class Fetch:
    """One getmany call as the consumer saw it."""

    number: int
    partitions: tuple[TopicPartition, ...]
    timeout_ms: int
    max_records: int | None
    started: float
    waited: bool = False  # waited for data (nothing to return at first)
    held: bool = False  # held in flight by hold_fetches
    # What it returned: {tp: (first offset, next offset)}; None while it runs.
    returned: dict[TopicPartition, tuple[int, int]] | None = None
    # What a hold made it drop (seeked, paused or reassigned meanwhile).
    dropped: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    # Order of events: index into the consumer's event log when it returned.
    returned_at: int | None = None


_ALL = object()  # hold every fetch


@dataclass(frozen=True)
class _Drain:
    """What a drain takes of one partition: from `start` to `end` (the position after it),
    the records among those offsets, as of an assignment generation and partition version."""

    generation: int
    version: int
    start: int
    end: int
    records: list[Any]


class _ListOffsets:
    """ListOffsets as the broker answers it now (earliest and latest), for the consumers."""

    broker: ScriptedBroker

    async def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {tp: self.broker.log_start[tp] for tp in partitions}

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.broker.end(tp) for tp in partitions}


class ScriptedConsumer(_ListOffsets):
    """Implements what the worker calls on AIOKafkaConsumer, over a ScriptedBroker."""

    def __init__(self, *topics: str, broker: ScriptedBroker | None = None, **_ignored: Any):
        self.broker = broker if broker is not None else ScriptedBroker({t: 1 for t in topics})
        self.signal = self.broker.signal
        self.started = False
        self.closed = False
        self.subscribed: list[str] = []
        self.listener: Any = None
        self.assignment_generation = 0
        self._assigned: dict[TopicPartition, _PartitionState] = {}
        # True until the first assignment and between revoke() and assign(), as aiokafka's
        # `reassignment_in_progress`: getmany waits for the assignment meanwhile.
        self.rebalancing = True
        # Hold controls.
        self._hold: Any = None  # None, _ALL, or a set of partitions
        self._release = asyncio.Event()
        self._reserved: set[TopicPartition] = set()  # taken by a held fetch
        # Observations.
        self.fetches: list[Fetch] = []
        self.events: list[tuple[str, Any]] = []  # ("fetch", n) / ("seek", (tp, o)) / ...
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.pauses: list[tuple[TopicPartition, ...]] = []
        self.resumes: list[tuple[TopicPartition, ...]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.rebalances: list[tuple[str, frozenset[TopicPartition]]] = []
        self.listener_errors: list[BaseException] = []
        self.inside = 0  # getmany calls running now
        self.waiting = 0  # getmany calls waiting for data now
        self.held = 0  # getmany calls held in flight now
        self.commit_error: BaseException | None = None  # raised by the next commits if set
        # fail_after_return: (armed once a getmany returned records, the error)
        self._fail_next: tuple[bool, BaseException] | None = None
        # What worker/fetch.py reads of aiokafka's internals.
        self._subscription = SimpleNamespace(subscription=_Subscription())
        self._fetcher = _Fetcher(self)

    def _event(self, kind: str, detail: Any) -> None:
        self.events.append((kind, detail))
        self.signal.notify()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.closed = True
        self._release.set()
        self._event("stop", None)

    def subscribe(
        self, topics: Iterable[str] = (), pattern: str | None = None, listener: Any = None
    ) -> None:
        self.subscribed = list(topics)
        self.listener = listener
        self._event("subscribe", tuple(self.subscribed))

    # -- metadata ----------------------------------------------------------------------------

    async def topics(self) -> set[str]:
        return self.broker.topics()

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.broker.partitions_for_topic(topic)

    async def committed(self, partition: TopicPartition) -> int | None:
        return self.broker.committed.get(partition)

    # -- assignment and positions ------------------------------------------------------------

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

    def _state(self, tp: TopicPartition) -> _PartitionState:
        state = self._assigned.get(tp)
        if state is None:
            raise IllegalStateError(f"No current assignment for partition {tp}")
        return state

    def paused(self) -> set[TopicPartition]:
        return {tp for tp, s in self._assigned.items() if s.paused}

    def pause(self, *partitions: TopicPartition) -> None:
        if not all(isinstance(p, TopicPartition) for p in partitions):
            raise TypeError("partitions must be TopicPartition namedtuples")
        for tp in partitions:
            state = self._state(tp)
            if not state.paused:
                state.paused = True
                state.version += 1
        self.pauses.append(tuple(partitions))
        self._event("pause", tuple(partitions))

    def resume(self, *partitions: TopicPartition) -> None:
        if not all(isinstance(p, TopicPartition) for p in partitions):
            raise TypeError("partitions must be TopicPartition namedtuples")
        for tp in partitions:
            self._state(tp).paused = False
        self.resumes.append(tuple(partitions))
        self._event("resume", tuple(partitions))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if not isinstance(offset, int) or offset < 0:
            raise ValueError("Offset must be a positive integer")
        state = self._state(partition)
        state.position = offset
        state.version += 1
        self.seeks.append((partition, offset))
        self._event("seek", (partition, offset))

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._assigned):
            self.seek(tp, self.broker.log_start[tp])

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._assigned):
            self.seek(tp, self.broker.end(tp))

    async def position(self, partition: TopicPartition) -> int:
        if partition not in self._assigned:
            raise IllegalStateError(f"Partition {partition} is not assigned")
        return self._assigned[partition].position

    def highwater(self, partition: TopicPartition) -> int | None:
        assert partition in self._assigned, "Partition is not assigned"
        return self._assigned[partition].highwater

    def last_stable_offset(self, partition: TopicPartition) -> int | None:
        return self.highwater(partition)

    async def commit(self, offsets: Mapping[TopicPartition, Any] | None = None) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        if offsets is None:
            formatted = {tp: s.position for tp, s in self._assigned.items()}
        else:
            validated = commit_structure_validate(dict(offsets))
            for tp in validated:
                if tp not in self._assigned:
                    raise IllegalStateError(f"Partition {tp} is not assigned")
            formatted = {tp: om.offset for tp, om in validated.items()}
        self.commits.append(formatted)
        self.broker.committed.update(formatted)
        self._event("commit", formatted)

    # -- rebalances (script controls) --------------------------------------------------------

    async def revoke(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Start a rebalance: getmany waits from now until `assign`; the listener's
        on_partitions_revoked gets the whole assignment (aiokafka's eager protocol) or
        `partitions`, and is awaited. The assignment itself changes at `assign`."""
        revoked = frozenset(self._assigned if partitions is None else partitions)
        self.rebalancing = True
        self.rebalances.append(("revoke", revoked))
        self._event("revoke", revoked)
        await self._call_listener("on_partitions_revoked", set(revoked))
        self._event("revoked", revoked)

    async def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """End the rebalance with this whole assignment: fresh states for every partition
        (positioned where Kafka's committed offset or the log start says, unpaused); then
        the listener's on_partitions_assigned is awaited."""
        tps = frozenset(partitions)
        for tp in tps:
            if self.subscribed and tp.topic not in self.subscribed:
                raise AssertionError(f"Received an assignment for unsubscribed topic: {tp}")
        self.assignment_generation += 1
        self._assigned = {
            tp: _PartitionState(self.broker.committed.get(tp, self.broker.log_start[tp]))
            for tp in sorted(tps)
        }
        self._subscription.subscription.assignment = _Assignment(self._assigned)
        self.rebalancing = False
        self.rebalances.append(("assign", tps))
        self._event("assign", tps)
        await self._call_listener("on_partitions_assigned", set(tps))
        self._event("assigned", tps)

    async def rebalance(self, partitions: Iterable[TopicPartition]) -> None:
        await self.revoke()
        await self.assign(partitions)

    async def _call_listener(self, name: str, tps: set[TopicPartition]) -> None:
        if self.listener is None:
            return
        try:
            result = getattr(self.listener, name)(tps)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # aiokafka logs and swallows a listener's exception
            self.listener_errors.append(exc)

    # -- fetching ----------------------------------------------------------------------------

    def hold_fetches(self, *partitions: TopicPartition) -> None:
        """From now on, a getmany with records to return (of `partitions`, or any) takes them
        as a fetch in flight and blocks until `release_fetches()`."""
        self._hold = set(partitions) if partitions else _ALL
        self._release = asyncio.Event()

    def release_fetches(self) -> None:
        self._hold = None
        self._release.set()
        self.signal.notify()

    def _fetchable(self, partitions: tuple[TopicPartition, ...]) -> list[TopicPartition]:
        wanted = set(partitions) if partitions else set(self._assigned)
        tps = [
            tp
            for tp, s in self._assigned.items()
            if tp in wanted and not s.paused and tp not in self._reserved
        ]
        for tp in tps:  # a fetch response for each: their high watermarks are fresh
            self._assigned[tp].highwater = self.broker.end(tp)
        # Fetch responses drain in the order they arrived.
        return sorted(tps, key=lambda tp: self.broker.arrival(tp, self._assigned[tp].position))

    def _plan(
        self, partitions: tuple[TopicPartition, ...], max_records: int | None
    ) -> dict[TopicPartition, _Drain]:
        """What a drain would take now, partition by partition (records and markers)."""
        plan: dict[TopicPartition, _Drain] = {}
        budget = max_records
        for tp in self._fetchable(partitions):
            if budget is not None and budget <= 0:
                break
            state = self._assigned[tp]
            log = self.broker.logs[tp]
            start = max(state.position, self.broker.log_start[tp])
            unreadable = self.broker.unreadable.get(tp, set())
            if start in unreadable and start < len(log):
                # aiokafka raises from getmany, naming no partition (worker/fetch.py), after
                # moving the positions of the partitions it drained before this one.
                for lost_tp, lost in plan.items():
                    self._assigned[lost_tp].position = lost.end
                raise CorruptRecordException(f"unreadable record batch at {tp} {start}")
            records: list[Any] = []
            offset = start
            while offset < len(log) and offset not in unreadable:
                if budget is not None and len(records) >= budget:
                    break
                if log[offset] is not None:
                    records.append(log[offset])
                offset += 1
            if offset == start:
                continue
            plan[tp] = _Drain(self.assignment_generation, state.version, start, offset, records)
            if budget is not None:
                budget -= len(records)
        return plan

    def _take(
        self, plan: dict[TopicPartition, _Drain], call: Fetch
    ) -> dict[TopicPartition, list[Any]]:
        """Return the planned records still valid (same assignment, no seek or pause since),
        moving the positions past them (and past the markers drained with them)."""
        out: dict[TopicPartition, list[Any]] = {}
        for tp, drain in plan.items():
            state = self._assigned.get(tp)
            valid = (
                state is not None
                and drain.generation == self.assignment_generation
                and drain.version == state.version
                and not state.paused
                and state.position == drain.start
            )
            if not valid:
                call.dropped[tp] = (drain.start, drain.end)
                continue
            assert state is not None
            state.position = drain.end
            if drain.records:
                out[tp] = list(drain.records)
        call.returned = {tp: (rs[0].offset, rs[-1].offset + 1) for tp, rs in out.items()}
        call.returned_at = len(self.events)
        self._event("fetched", call.number)
        if out and self._fail_next is not None:
            self._fail_next = (True, self._fail_next[1])
        return out

    def _holds(self, plan: Mapping[TopicPartition, _Drain]) -> bool:
        if self._hold is None:
            return False
        return self._hold is _ALL or bool(self._hold & set(plan))

    def fail_after_return(self, error: BaseException) -> None:
        """The getmany call right after the next one that returns records raises `error`
        before it drains anything."""
        self._fail_next = (False, error)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        assert all(isinstance(k, TopicPartition) for k in partitions)
        if self.closed:
            raise ConsumerStoppedError()
        if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
            raise ValueError("`max_records` must be a positive Integer")
        loop = asyncio.get_running_loop()
        call = Fetch(len(self.fetches) + 1, partitions, timeout_ms, max_records, loop.time())
        self.fetches.append(call)
        if self._fail_next is not None and self._fail_next[0]:
            error, self._fail_next = self._fail_next[1], None
            call.returned = {}
            self._event("failed", call.number)
            raise error
        self.inside += 1
        self._event("fetch", call.number)
        try:
            while self.rebalancing and not self.closed:
                await self.signal.wait()
            deadline = loop.time() + timeout_ms / 1000
            while True:
                if self.closed:
                    call.returned = {}
                    return {}
                plan = self._plan(partitions, max_records)
                if any(d.records for d in plan.values()):
                    if self._holds(plan):
                        return await self._held(plan, call)
                    return self._take(plan, call)
                for tp, drain in plan.items():  # markers only: the position moves past them
                    self._assigned[tp].position = drain.end
                remaining = deadline - loop.time()
                if remaining <= 0:
                    call.returned = {}
                    return {}
                call.waited = True
                self.waiting += 1
                self.signal.notify()
                try:
                    await self.signal.wait(remaining)
                finally:
                    self.waiting -= 1
        finally:
            self.inside -= 1
            self.signal.notify()

    async def _held(
        self, plan: dict[TopicPartition, _Drain], call: Fetch
    ) -> dict[TopicPartition, list[Any]]:
        call.held = True
        self.held += 1
        self._reserved |= set(plan)
        release = self._release
        self._event("held", call.number)
        try:
            while not release.is_set() and not self.closed:
                await self.signal.wait()
        finally:
            self.held -= 1
            self._reserved -= set(plan)
        if self.closed:
            call.returned = {}
            return {}
        return self._take(plan, call)

    # -- script controls and observations ----------------------------------------------------

    def append(
        self,
        tp: TopicPartition,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> int:
        return self.broker.append(tp, value, key, headers)

    async def until(
        self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = ""
    ) -> Any:
        return await until(self.signal, predicate, timeout, what or repr(predicate))

    async def wait_waiting(self, timeout: float = 10.0) -> None:
        """Until a getmany is inside its wait for data."""
        await self.until(lambda: self.waiting > 0, timeout, "a getmany waiting for data")

    async def wait_inside(self, timeout: float = 10.0) -> None:
        """Until a getmany is running (waiting, held, or blocked by a rebalance)."""
        await self.until(lambda: self.inside > 0, timeout, "a getmany in progress")

    async def wait_held(self, timeout: float = 10.0) -> Fetch:
        """Until a getmany is held in flight; returns it."""
        return await self.until(
            lambda: next((f for f in self.fetches if f.held and f.returned is None), None),
            timeout,
            "a held getmany",
        )

    async def wait_fetches(self, n: int, timeout: float = 10.0) -> None:
        await self.until(lambda: len(self.fetches) >= n, timeout, f"{n} getmany calls")

    async def wait_seek(
        self, tp: TopicPartition, offset: int | None = None, timeout: float = 10.0, after: int = 0
    ) -> int:
        """Until a seek of `tp` (to `offset`) at index >= `after` of `seeks`; its index."""

        def found() -> int | None:
            for i, (p, o) in enumerate(self.seeks[after:], after):
                if p == tp and (offset is None or o == offset):
                    return i + 1  # truthy
            return None

        return int(await self.until(found, timeout, f"a seek of {tp} to {offset}")) - 1

    async def wait_delivered(self, tp: TopicPartition, end: int, timeout: float = 10.0) -> None:
        """Until getmany has returned the records of `tp` up to `end` (exclusive)."""
        await self.until(
            lambda: self.delivered_end(tp) >= end, timeout, f"records of {tp} up to {end}"
        )

    def delivered_end(self, tp: TopicPartition) -> int:
        ends = [f.returned[tp][1] for f in self.fetches if f.returned and tp in f.returned]
        return max(ends, default=-1)

    def delivered(self, tp: TopicPartition) -> list[tuple[int, int]]:
        """Every span of `tp` that getmany returned, in call order."""
        return [f.returned[tp] for f in self.fetches if f.returned and tp in f.returned]


# -- the producer -----------------------------------------------------------------------------


@dataclass
class Sent:
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes | None]]
    future: asyncio.Future[RecordMetadata]
    outcome: str = "pending"  # "acked", "failed"

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return None if v is None else v.decode()
        return None


class ScriptedProducer:
    """Implements what worker/dlq.py calls on AIOKafkaProducer."""

    def __init__(self, *, broker: ScriptedBroker | None = None, **_ignored: Any) -> None:
        self.broker = broker
        self.started = False
        self.closed = False
        self.sent: list[Sent] = []
        self._holding = False
        self._held: list[Sent] = []
        self._failures: int | None = 0  # None: every send fails
        self._failure: Callable[[], BaseException] = KafkaTimeoutError
        self._offsets = itertools.count()
        self.signal = broker.signal if broker is not None else Signal()

    @property
    def acked(self) -> list[Sent]:
        return [s for s in self.sent if s.outcome == "acked"]

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.closed = True

    async def flush(self) -> None:
        await asyncio.gather(*(s.future for s in self.sent), return_exceptions=True)

    def fail_sends(
        self, count: int | None = None, error: Callable[[], BaseException] = KafkaTimeoutError
    ) -> None:
        """The next `count` sends (all if None) fail: their futures raise `error()`."""
        self._failures = count
        self._failure = error

    def stop_failing(self) -> None:
        self._failures = 0

    def hold_sends(self) -> None:
        """Sends from now on stay unacknowledged until `release_sends()`."""
        self._holding = True

    def release_sends(self) -> None:
        self._holding = False
        held, self._held = self._held, []
        for s in held:
            if not s.future.done():
                self._ack(s)
        self.signal.notify()

    def fail_held(self, error: Callable[[], BaseException] = KafkaTimeoutError) -> None:
        """Every held send fails now, as sends the broker never acknowledged."""
        held, self._held = self._held, []
        for s in held:
            if not s.future.done():
                s.outcome = "failed"
                s.future.set_exception(error())
        self.signal.notify()

    @property
    def held(self) -> int:
        return len(self._held)

    async def until(
        self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = ""
    ) -> Any:
        return await until(self.signal, predicate, timeout, what or repr(predicate))

    async def wait_held(self, n: int = 1, timeout: float = 10.0) -> None:
        await self.until(lambda: len(self._held) >= n, timeout, f"{n} held sends")

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        if self.closed:
            raise ProducerClosed()
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        s = Sent(topic, value, key, list(headers or ()), future)
        self.sent.append(s)
        if self._failures is None or self._failures > 0:
            if self._failures is not None:
                self._failures -= 1
            s.outcome = "failed"
            future.set_exception(self._failure())
        elif self._holding:
            self._held.append(s)
        else:
            self._ack(s)
        self.signal.notify()
        return future

    def _ack(self, s: Sent) -> None:
        offset = next(self._offsets)
        if self.broker is not None and TopicPartition(s.topic, 0) in self.broker.logs:
            offset = self.broker.append(TopicPartition(s.topic, 0), s.value, s.key, s.headers)
        tp = TopicPartition(s.topic, 0)
        s.outcome = "acked"
        s.future.set_result(RecordMetadata(s.topic, 0, tp, offset, -1, 0, 0))


# -- injection into the worker ----------------------------------------------------------------


class ScriptedReader(_ListOffsets):
    """A group-less consumer reading log bounds (worker/broker.py): ListOffsets answers
    and fetch responses carry the broker's log ends as they are now.

    Script controls: `hold()` / `release()` keep the next reads inside `start()` until
    released (`await wait_reading()`); `silent = True` makes fetches answer nothing, so no
    high watermark is ever known (a probe that times out); `fail_start` is raised by the next
    `start()`."""

    def __init__(self, broker: ScriptedBroker) -> None:
        self.broker = broker
        self._assigned: dict[TopicPartition, int | None] = {}
        self.reads = 0  # log-bound reads: how often the worker asked the broker
        self.stops = 0
        self.silent = False
        self.fail_start: BaseException | None = None
        self._held = False
        self._released = asyncio.Event()
        self.reading = 0  # reads held in start() now

    def hold(self) -> None:
        self._held = True
        self._released = asyncio.Event()

    def release(self) -> None:
        self._held = False
        self._released.set()

    async def wait_reading(self, timeout: float = 10.0) -> None:
        await until(self.broker.signal, lambda: self.reading, timeout, "a held log-end read")

    async def start(self) -> None:
        self.reads += 1
        if self.fail_start is not None:
            error, self.fail_start = self.fail_start, None
            raise error
        if self._held:
            self.reading += 1
            self.broker.signal.notify()
            try:
                await self._released.wait()
            finally:
                self.reading -= 1

    async def stop(self) -> None:
        self.stops += 1

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._assigned = dict.fromkeys(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        assert partition in self._assigned

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0) -> dict[Any, Any]:
        if self.silent:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        for tp in partitions or tuple(self._assigned):
            self._assigned[tp] = self.broker.end(tp)
        return {}

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._assigned[partition]

    def last_stable_offset(self, partition: TopicPartition) -> int | None:
        return self._assigned[partition]


class ScriptedClients:
    """worker/clients.py's `Clients`: a real pool on the test database, scripted Kafka."""

    def __init__(
        self, settings: Any, broker: ScriptedBroker | None = None, partitions: int = 2
    ) -> None:
        self.settings = settings
        self.broker = (
            broker if broker is not None else ScriptedBroker.for_settings(settings, partitions)
        )
        self.scripted_consumer = ScriptedConsumer(broker=self.broker)
        self.scripted_producer = ScriptedProducer(broker=self.broker)
        self.scripted_reader = ScriptedReader(self.broker)
        self.pools: list[asyncpg.Pool] = []

    async def database(self) -> asyncpg.Pool:
        s = self.settings
        pool: asyncpg.Pool = await asyncpg.create_pool(
            s.database_url,
            min_size=1,
            max_size=s.db_pool_size,
            command_timeout=s.db_command_timeout_s,
        )
        self.pools.append(pool)
        return pool

    def consumer(self) -> ScriptedConsumer:
        return self.scripted_consumer

    def producer(self) -> ScriptedProducer:
        return self.scripted_producer

    def reader(self) -> ScriptedReader:
        return self.scripted_reader


def worker_takes_clients() -> bool:
    from worker.consumer import Worker

    return "clients" in inspect.signature(Worker.__init__).parameters


@contextlib.contextmanager
def _worker_factory(clients: ScriptedClients) -> Any:
    from worker.consumer import Worker

    if worker_takes_clients():
        yield lambda settings: Worker(settings, clients=clients)
        return
    # Before worker/clients.py: the worker builds its clients from these module-level names.
    module = importlib.import_module("worker.consumer")
    with (
        mock.patch.object(module, "AIOKafkaConsumer", lambda *a, **k: clients.consumer()),
        mock.patch.object(module, "AIOKafkaProducer", lambda *a, **k: clients.producer()),
    ):
        yield Worker


@dataclass
class RunningWorker:
    worker: Any
    task: asyncio.Task[None]
    clients: ScriptedClients

    @property
    def consumer(self) -> ScriptedConsumer:
        return self.clients.scripted_consumer

    @property
    def producer(self) -> ScriptedProducer:
        return self.clients.scripted_producer

    def failure(self) -> BaseException | None:
        """The exception the worker's task ended with, if it ended with one."""
        if not self.task.done() or self.task.cancelled():
            return None
        return self.task.exception()

    def check_alive(self) -> None:
        exc = self.failure()
        if exc is not None:
            raise AssertionError(f"the worker exited with {exc!r}") from exc
        if self.task.done():
            raise AssertionError("the worker returned although it was not stopped")

    async def stop(self, timeout: float = 30.0) -> BaseException | None:
        """stop() and wait for the run to end; returns the exception it ended with."""
        self.worker.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
            raise AssertionError(f"the worker did not stop within {timeout}s") from None
        except (Exception, asyncio.CancelledError):
            pass
        return None if self.task.cancelled() else self.task.exception()


@contextlib.asynccontextmanager
async def start_worker(
    settings: Any, clients: ScriptedClients, ready_timeout: float = 30.0
) -> AsyncIterator[RunningWorker]:
    """Run a Worker on `clients` until the block exits (then stop it and wait for it); the
    block starts once the worker has subscribed. The worker's exception, if it died, is left
    to the test (`failure()`, `check_alive()`): it is not raised on exit."""
    with _worker_factory(clients) as make:
        worker = make(settings)
        task = asyncio.create_task(worker.run(), name=f"worker[{settings.group_id}]")
        running = RunningWorker(worker, task, clients)
        try:
            ready = asyncio.create_task(worker.ready.wait())
            try:
                await asyncio.wait(
                    {task, ready}, timeout=ready_timeout, return_when="FIRST_COMPLETED"
                )
            finally:
                ready.cancel()
            if task.done():
                task.result()
                raise AssertionError("the worker returned before it was ready")
            if not worker.ready.is_set():
                raise TimeoutError(f"worker not ready after {ready_timeout}s")
            await clients.scripted_consumer.until(
                lambda: clients.scripted_consumer.listener is not None, 5.0, "the subscription"
            )
            yield running
        except BaseException:
            # The test's own failure comes first; a worker that cannot stop is secondary.
            with contextlib.suppress(Exception):
                await running.stop(timeout=5.0)
            raise
        else:
            await running.stop()


__all__ = [
    "Fetch",
    "KafkaError",
    "RunningWorker",
    "ScriptedBroker",
    "ScriptedClients",
    "ScriptedConsumer",
    "ScriptedProducer",
    "ScriptedReader",
    "Sent",
    "start_worker",
    "until",
    "worker_takes_clients",
]
