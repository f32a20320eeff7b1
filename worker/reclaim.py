"""Collecting the fetch buffers that aiokafka drops inside a reference cycle.

aiokafka (0.12 to 0.14) keeps each partition's undecoded fetch response in a `PartitionRecords`
whose record iterator is a generator over the object itself: a reference cycle, which it
breaks only when the iterator is exhausted. A response dropped before that (every pause,
seek and revocation of a partition with data buffered: `Fetcher.fetched_records` discards it
at the next getmany) is freed only by a garbage collection, and its buffer (up to
`max_partition_fetch_bytes`) with it. `worker run` raises the young-generation threshold to
100 000 (worker/cli.py), so with little allocation, as while paused or backing off from a
failing database, that collection can be minutes away, and every flap of a dependency drops
another set of buffers.

So whoever drops buffers says so (`dropped()`), and the loop collects soon after, once a
getmany has discarded them (`collect_if_due()`), at most once per MIN_INTERVAL_S: a full
collection costs tens of milliseconds, against events (back-offs, seeks, rebalances) that
cost far more.
"""

from __future__ import annotations

import gc
import time

MIN_INTERVAL_S = 1.0


class Reclaimer:
    __slots__ = ("_due", "_last", "collections")

    def __init__(self) -> None:
        self._due = False
        self._last = 0.0
        self.collections = 0

    def dropped(self) -> None:
        """Fetched data was dropped (a pause, seek or revocation): collect soon."""
        self._due = True

    def collect_if_due(self) -> None:
        """Collect if something was dropped and the last collection is not too recent; call
        after a getmany, which is where aiokafka lets go of the dropped responses."""
        if not self._due:
            return
        now = time.monotonic()
        if now - self._last < MIN_INTERVAL_S:
            return
        self._due = False
        self._last = now
        self.collections += 1
        gc.collect()
