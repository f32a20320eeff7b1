"""aiokafka's fetched-record reader, as the worker's consumer uses it: no reference cycle, and
each record built in C.

aiokafka (0.12 to 0.14, `aiokafka/consumer/fetcher.py`) keeps each partition's undecoded fetch
response in a `PartitionRecords`, whose record iterator is a generator over the object itself:

- a reference cycle (the object holds the generator, the generator's frame holds the object),
  broken only when the iterator is exhausted. A response dropped before that - at every pause,
  seek and revocation of a partition with data buffered, `Fetcher` discards it - is freed only
  by a cyclic garbage collection, and its buffer (up to `max_partition_fetch_bytes`) with it;
- every record becomes a `ConsumerRecord` dataclass, whose Python `__init__` sets eleven
  attributes one by one: the largest part of aiokafka's cost per record.

`install()` replaces the class the fetcher instantiates with a subclass that changes exactly
those two things and nothing of the reading itself (batches, CRC checks, transaction markers
and aborted transactions stay aiokafka's own `_unpack_records`):

- the same generator runs over a weak proxy of the object, so it holds no strong reference
  back: a dropped response is freed by reference counting the moment aiokafka lets go of it,
  with no collection (worker/reclaim.py relies on this);
- records are `Record`s, built by one C call: a msgspec Struct with the same eleven fields, by
  the same names and in the same order as `ConsumerRecord`, so everything that reads a
  record's attributes reads them alike. It is not tracked by the garbage collector
  (`gc=False`: it holds only strings, numbers, bytes and the headers, never a reference back),
  so the tens of thousands of records a batch holds are never walked by a collection. With a
  key or value deserializer configured, aiokafka's own `ConsumerRecord` is kept.

Where aiokafka is a version whose fetcher does not look as expected, `install()` changes
nothing and returns False; the worker then falls back on collecting after drops.

The batches themselves are read by aiokafka's C extension (`aiokafka.record._crecords`: record
batch headers, CRC checks, varints and each record's fields), unless AIOKAFKA_NO_EXTENSIONS is
set or no wheel exists for the platform; then its pure-Python reader runs, several times
slower per record, and `install()` says so once, as a warning.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog
from aiokafka.consumer import fetcher
from aiokafka.record.memory_records import MemoryRecords

log = structlog.get_logger("worker")

# The versions whose PartitionRecords this was written against (pyproject.toml pins < 0.15).
_ORIGINAL = fetcher.PartitionRecords
# aiokafka's C record reader (its pure-Python one lives in aiokafka.record itself).
C_READER = MemoryRecords.__module__.startswith("aiokafka.record._crecords")


class Record(msgspec.Struct, gc=False):
    """A fetched record: aiokafka's `ConsumerRecord` fields, in its order."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: Any
    value: Any
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    headers: Sequence[tuple[str, bytes]]


def _record(tp: Any, record: Any) -> Record:
    """What `PartitionRecords._consumer_record` returns, without deserializers, as a Record."""
    key, value = record.key, record.value
    return Record(
        tp.topic,
        tp.partition,
        record.offset,
        record.timestamp,
        record.timestamp_type,
        key,
        value,
        record.checksum,
        -1 if key is None else len(key),
        -1 if value is None else len(value),
        tuple(record.headers),
    )


class PartitionRecords(_ORIGINAL):  # type: ignore[misc,valid-type]
    """aiokafka's PartitionRecords without the self-referencing generator (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The parent's generator (never started) holds `self`; it is freed right here.
        self._records_iterator = _ORIGINAL._unpack_records(weakref.proxy(self))
        if self._key_deserializer is None and self._value_deserializer is None:
            # An instance attribute, called through the proxy as a plain function.
            self._consumer_record = _record

    def __iter__(self) -> Any:
        # `for record in partition_records` (FetchResult.getall) then resumes the generator
        # directly instead of calling the Python-level __next__ for every record. Exhausted,
        # it stays exhausted; getone's next() still goes through __next__.
        return self._records_iterator if self._records_iterator is not None else iter(())


def _compatible() -> bool:
    """The fetcher's PartitionRecords has what the subclass relies on."""
    needed = ("_unpack_records", "_consumer_record", "__next__")
    return all(hasattr(_ORIGINAL, name) for name in needed) and hasattr(_ORIGINAL, "__weakref__")


def install() -> bool:
    """Make aiokafka's fetcher read with `PartitionRecords` (idempotent). Returns whether it
    does: False where this aiokafka's fetcher is not the one this module knows."""
    if fetcher.PartitionRecords is PartitionRecords:
        return True
    if not C_READER:
        log.warning(
            "aiokafka reads record batches with its pure-Python reader (its C extension is "
            "not installed, or AIOKAFKA_NO_EXTENSIONS is set): parsing is several times slower"
        )
    if fetcher.PartitionRecords is not _ORIGINAL or not _compatible():
        return False
    fetcher.PartitionRecords = PartitionRecords
    return True


def installed() -> bool:
    return fetcher.PartitionRecords is PartitionRecords
