"""The cyclic garbage collector, kept off the hot path: young collections only while batches
are in flight, a full one when the worker is idle.

Nearly everything the worker allocates is freed by reference counting the moment it is
dropped. The collector is needed for cycles, and a collection costs in proportion to the
objects it walks: a young one walks what was allocated since the last, a full one everything
alive, the batches in flight included (~40 ms with 60 000 records in memory). So (`tune`, at
start, from worker/runner.py):

- `gc.freeze()` moves everything loaded by then (modules, classes: ~100 000 objects) out of
  every later collection; and again at the main loop's first turn (`collect_if_due`), after
  one full collection, for what start-up made since (the modules imported on the way, the
  pool, the clients, their metadata): left young, the first young collection on the hot path
  walked all of it (one pause of 20-60 ms per start, bench/README.md);
- the young generation is collected every YOUNG_THRESHOLD allocations, sized to a batch, so
  that a batch's objects are walked once or twice, not a thousand times (CPython's 700); the
  middle one every MIDDLE_THRESHOLD young collections, as by default;
- the old generation is never collected on CPython's schedule (threshold OLD_NEVER): that
  full collection would come at whatever moment the allocation count says, batches in flight
  or not. `collect_if_due(idle=...)`, which the main loop calls once per turn and the
  back-off once per poll, runs it when the worker is idle (no batch in flight: only
  long-lived objects to walk; or backing off, when nothing flows anyway): at most once per
  MIN_INTERVAL_S after something was dropped (`dropped()`: a pause, seek, revocation or
  back-off, whose failures leave exceptions and tracebacks in cycles), otherwise at most once
  per IDLE_INTERVAL_S and only if a middle collection ran since the last one (only then can
  anything have reached the old generation). Under load without a single idle turn it runs
  anyway after FORCE_AFTER_MIDDLE middle collections (about 20 million events), so that the
  few cycles that do reach the old generation (a few hundred objects per 100 000 events,
  bench/README.md "Garbage collection") stay bounded.

The large cycles used to be aiokafka's dropped fetch buffers: each partition's fetch response
sat in a reference cycle until its records were all read, so every pause, seek and revocation
left a buffer of up to `max_partition_fetch_bytes` for the collector, and the worker collected
after each, batches in flight or not. worker/kafka_records.py now breaks that cycle at its
source, and a dropped response is freed when aiokafka lets go of it. Where it could not
install itself (an aiokafka whose fetcher it does not know), `dropped()` makes the next
`collect_if_due()` collect as before, at most once per MIN_INTERVAL_S, idle or not.
"""

from __future__ import annotations

import gc
import time

from worker import kafka_records

YOUNG_THRESHOLD = 100_000
MIDDLE_THRESHOLD = 10
# Never reached: CPython counts middle collections against it.
OLD_NEVER = 2**31 - 1
IDLE_INTERVAL_S = 10.0
FORCE_AFTER_MIDDLE = 100
MIN_INTERVAL_S = 1.0


def tune() -> None:
    """Freeze what is loaded so far and set the thresholds (module docstring)."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_NEVER)


class Reclaimer:
    """When to run a full collection (module docstring); `collections` counts them."""

    __slots__ = ("_dropped", "_last", "_settled", "collections")

    def __init__(self) -> None:
        self._dropped = False
        self._last = time.monotonic()
        self._settled = False  # start-up frozen (module docstring)
        self.collections = 0

    def dropped(self) -> None:
        """Fetched data was dropped (a pause, seek or revocation): collect at the next idle
        turn (at any turn where worker/kafka_records.py is not installed)."""
        self._dropped = True

    def collect_if_due(self, idle: bool = True) -> None:
        """A full collection if one is due; `idle`: no batch is in flight (the caller knows)."""
        if not self._settled and idle:
            self._settled = True
            gc.collect()
            gc.freeze()
            return
        now = time.monotonic()
        since = now - self._last
        if self._dropped:
            due = since >= MIN_INTERVAL_S and (idle or not kafka_records.installed())
        else:
            middles = gc.get_count()[2]
            due = (idle and middles and since >= IDLE_INTERVAL_S) or middles >= FORCE_AFTER_MIDDLE
        if not due:
            return
        self._dropped = False
        self._last = now
        self.collections += 1
        gc.collect()
