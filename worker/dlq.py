"""The dead-letter path (docs/contract.md §6): original key, value and headers, plus `dlq.*`
context.

This module holds the dead-letter vocabulary too: the five reasons, the headers, why a record
can never be stored (`Unstorable`: a `DecodeFailure` or a `StorageRefusal`) and how long its
message may be. The decoder and the commit path both speak it; it depends on neither.

Dead letters of a batch are sent together and awaited together: the broker acknowledges all
of them (acks=all) before the transaction that moves the offsets past them commits. A crash in
between re-sends them on restart, so a dead letter may repeat, always with the same
`dlq.original.*` coordinates, and is never lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import msgspec
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from worker import __version__, origin

log = structlog.get_logger("worker.dlq")

# The reasons a record can never be stored (`dlq.reason`, docs/contract.md §6). The first four
# are the decoder's verdicts; the last is PostgreSQL's refusal of a row that decoded.
INVALID_JSON: Final = "invalid_json"
SCHEMA_VIOLATION: Final = "schema_violation"
UNKNOWN_EVENT_TYPE: Final = "unknown_event_type"
EMPTY_PAYLOAD: Final = "empty_payload"
REJECTED_BY_DATABASE: Final = "rejected_by_database"
REASONS: tuple[str, ...] = (
    INVALID_JSON,
    SCHEMA_VIOLATION,
    UNKNOWN_EVENT_TYPE,
    EMPTY_PAYLOAD,
    REJECTED_BY_DATABASE,
)

# `dlq.error` is cut to this many UTF-8 bytes: a message may quote a whole hostile record.
MAX_ERROR_BYTES: Final = 1024

# What is kept of a value that does not fit the dead-letter topic (Kafka's default limit for
# a topic is 1 MiB; this leaves room for the key and headers).
TRUNCATED_VALUE_BYTES = 256 * 1024


class Header:
    """The names of the headers the worker adds (docs/contract.md §6), for writer and readers."""

    PREFIX = "dlq."
    ORIGINAL_TOPIC = "dlq.original.topic"
    ORIGINAL_PARTITION = "dlq.original.partition"
    ORIGINAL_OFFSET = "dlq.original.offset"
    ORIGINAL_TIMESTAMP = "dlq.original.timestamp"
    REASON = "dlq.reason"
    ERROR = "dlq.error"
    FAILED_AT = "dlq.failed_at"
    CONSUMER_GROUP = "dlq.consumer_group"
    WORKER_VERSION = "dlq.worker_version"
    # Only on a value cut to fit the topic.
    VALUE_TRUNCATED = "dlq.value.truncated"
    ORIGINAL_SIZE = "dlq.original.size"
    # On every dead letter the worker writes (it knows the ledger's key): the record's
    # coordinates and those of the records it replays, signed (worker/origin.py).
    ORIGIN = origin.ORIGIN_HEADER
    # Only on a record `worker dlq replay` sent back to its topic; the last is a verbatim copy
    # of the dead letter's `dlq.origin`, by which the erasure ledger tells old records from
    # new (worker/erasure.py).
    REPLAY_COUNT = "dlq.replay.count"
    REPLAY_OF = "dlq.replay.of"
    REPLAY_ORIGIN = origin.REPLAY_ORIGIN_HEADER


# Every dead letter carries these, in this order, after the original headers.
CONTEXT_HEADERS: tuple[str, ...] = (
    Header.ORIGINAL_TOPIC,
    Header.ORIGINAL_PARTITION,
    Header.ORIGINAL_OFFSET,
    Header.ORIGINAL_TIMESTAMP,
    Header.REASON,
    Header.ERROR,
    Header.FAILED_AT,
    Header.CONSUMER_GROUP,
    Header.WORKER_VERSION,
)


def truncate(message: str, limit: int = MAX_ERROR_BYTES) -> str:
    """Cut `message` to at most `limit` UTF-8 bytes without splitting a character."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return message
    return encoded[: limit - 3].decode("utf-8", "ignore") + "..."


class Unstorable(msgspec.Struct, frozen=True):
    """Why a record can never be stored: one of REASONS, and a message for `dlq.error`."""

    reason: str
    message: str


class DecodeFailure(Unstorable, frozen=True):
    """The decoder's verdict on bytes that are no event of the contract (worker/decode.py)."""


class StorageRefusal(Unstorable, frozen=True):
    """A decoded record the storage refused (worker/commit.py): PostgreSQL rejected its row
    (`rejected_by_database`), or a handler could not prepare it (`schema_violation`)."""


class DeadLetter(NamedTuple):
    record: Any  # aiokafka ConsumerRecord
    failure: Unstorable


def dead_letter_headers(
    letter: DeadLetter, group_id: str, failed_at: dt.datetime
) -> list[tuple[str, bytes | None]]:
    """The original headers exactly as received, then the `dlq.*` context.

    A null header value stays None: aiokafka writes it as a null (length -1) header, which
    a producer may mean differently from an empty one."""
    record = letter.record
    values = (
        record.topic,
        str(record.partition),
        str(record.offset),
        str(record.timestamp),
        letter.failure.reason,
        truncate(letter.failure.message),
        failed_at.isoformat(timespec="milliseconds"),
        group_id,
        __version__,
    )
    added = list(zip(CONTEXT_HEADERS, values, strict=True))
    original: list[tuple[str, bytes | None]] = list(record.headers or ())
    return original + [(k, v.encode("utf-8")) for k, v in added]


class DeadLetterPublisher:
    """Sends dead letters; with the erasure ledger's `key`, each one signed `dlq.origin`."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, group_id: str, key: bytes | None = None
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._group_id = group_id
        self._key = key

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send every letter, then wait until the broker has acknowledged all of them.

        A letter too large for the producer or the dead-letter topic is sent again with its
        value cut to TRUNCATED_VALUE_BYTES and `dlq.value.truncated`/`dlq.original.size`
        headers: a partial copy beats a partition stuck forever on one record."""
        if not letters:
            return
        failed_at = dt.datetime.now(dt.UTC)
        pending: list[tuple[DeadLetter, asyncio.Future[Any] | None]] = []
        for letter in letters:
            pending.append((letter, await self._send(letter, failed_at, truncate_value=False)))
        results = await asyncio.gather(
            *(f for _, f in pending if f is not None), return_exceptions=True
        )
        outcome = iter(results)
        too_large: list[DeadLetter] = []
        for letter, future in pending:
            result = None if future is None else next(outcome)
            if future is None or isinstance(result, MessageSizeTooLargeError):
                too_large.append(letter)
            elif isinstance(result, BaseException):
                raise result
        if too_large:
            log.warning(
                "dead letters too large for the topic; values truncated", count=len(too_large)
            )
            resent = [await self._send(d, failed_at, truncate_value=True) for d in too_large]
            await asyncio.gather(*(f for f in resent if f is not None))

    async def _send(
        self, letter: DeadLetter, failed_at: dt.datetime, *, truncate_value: bool
    ) -> asyncio.Future[Any] | None:
        """Queue one letter; None if the producer refuses it as too large before sending."""
        value = letter.record.value
        headers = dead_letter_headers(letter, self._group_id, failed_at)
        if truncate_value and value is not None:
            headers += [
                (Header.VALUE_TRUNCATED, b"true"),
                (Header.ORIGINAL_SIZE, str(len(value)).encode()),
            ]
            value = value[:TRUNCATED_VALUE_BYTES]
        if self._key is not None:
            # Signed over the value as sent: the replayed record carries exactly it.
            chain = origin.chain(self._key, letter.record)
            headers.append((Header.ORIGIN, origin.sign(self._key, chain, value)))
        try:
            return await self._producer.send(
                self.topic, value=value, key=letter.record.key, headers=headers
            )
        except MessageSizeTooLargeError:
            if truncate_value:
                raise
            return None
