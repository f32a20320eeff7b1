"""What the worker counts: metrics and the batch log line once per committed batch, and one
progress line a minute. Counters describe this process; the tables and the dead-letter topic
are the truth (a batch whose COMMIT reply was lost is stored but not counted here). The
freshness of each committed partition (worker/freshness.py) is read here too, from its last
record and item: per batch, not per record.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from operator import itemgetter

import structlog
from aiokafka import TopicPartition

from schemas.common import tag_of
from worker.batch import Batch, Part
from worker.commit import Letters
from worker.dlq import DeadLetter
from worker.freshness import last_event_time, record_time
from worker.metrics import Metrics

log = structlog.get_logger("worker")
_EVENT = itemgetter(0)  # of an Item


def account(
    metrics: Metrics,
    stats: dict[str, int],
    batch: Batch,
    committed: Iterable[TopicPartition],
    letters: Letters,
    duration: float,
) -> None:
    """Counters and the batch log line for the `committed` partitions of `batch`; `letters`
    says which of its records the database rejected and which dead letters the erasure
    ledger kept out (each record is counted in exactly one place)."""
    m = metrics
    committed = set(committed)
    rejected_at = {_at(d) for d in letters.rejected}
    erased_at = {_at(d) for d in letters.erased}
    consumed = nbytes = partitions = expired = erased = 0
    stored_by_class: dict[tuple[str, type], int] = {}
    dead: list[DeadLetter] = [d for d in letters.rejected if _at(d) not in erased_at]
    for d in letters.erased:
        if TopicPartition(d.record.topic, d.record.partition) in committed:
            erased += 1
            m.erased.labels(d.record.topic).inc()
    for tp in committed:
        part = batch[tp]
        partitions += 1
        consumed += len(part.records)
        nbytes += part.nbytes
        m.consumed.labels(part.tp.topic).inc(len(part.records))
        m.last_offset.labels(part.tp.topic, str(part.tp.partition)).set(part.next_offset - 1)
        _fresh(m, part)
        events = map(_EVENT, part.items)
        if rejected_at:
            events = (
                i.event for i in part.items if (i.topic, i.partition, i.offset) not in rejected_at
            )
        # Counted in C (a part's items are all of its topic).
        for cls, n in Counter(map(type, events)).items():
            key = (part.tp.topic, cls)
            stored_by_class[key] = stored_by_class.get(key, 0) + n
        dead.extend(d for d in part.letters if _at(d) not in erased_at)
        if part.expired:
            expired += len(part.expired)
            m.expired.labels(part.tp.topic).inc(len(part.expired))
        if part.erased:
            erased += len(part.erased)
            m.erased.labels(part.tp.topic).inc(len(part.erased))
    # Counted by struct class per record, named (tag_of) once per class and batch.
    stored = {(topic, tag_of(cls)): n for (topic, cls), n in stored_by_class.items()}
    for (topic, event_type), n in stored.items():
        m.stored.labels(topic, event_type).inc(n)
    for d in dead:
        m.dead_letters.labels(d.failure.reason).inc()
    m.batch_duration.observe(duration)
    m.batch_records.observe(consumed)
    stats["batches"] += 1
    stats["consumed"] += consumed
    stats["stored"] += sum(stored.values())
    stats["dead_lettered"] += len(dead)
    stats["erased"] += erased
    log.debug(
        "batch committed",
        records=consumed,
        erased=erased,
        bytes=nbytes,
        stored=sum(stored.values()),
        dead_lettered=len(dead),
        expired=expired,
        partitions=partitions,
        duration_ms=round(duration * 1000, 2),
    )


def _at(letter: DeadLetter) -> tuple[str, int, int]:
    r = letter.record
    return (r.topic, r.partition, r.offset)


def _fresh(m: Metrics, part: Part) -> None:
    """The freshness of `part`'s partition: once per partition and batch, never per record."""
    if not part.records:
        return
    key = (part.tp.topic, part.tp.partition)
    times = m.freshness.setdefault(key, [None, None])
    record_at = record_time(part.records[-1])
    if record_at is not None:
        times[0] = record_at
    event_at = last_event_time(part.items)
    if event_at is not None:
        times[1] = event_at


class Progress:
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
