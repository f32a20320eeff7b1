"""The dead-letter path (CONTRACT §6): original key, value and headers, plus `dlq.*` context.

Dead letters of a batch are sent together and awaited together: the broker acknowledges all
of them (acks=all) before the transaction that moves the offsets past them commits. A crash in
between re-sends them on restart, so a dead letter may repeat, always with the same
`dlq.original.*` coordinates, and is never lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer

from worker import __version__
from worker.decode import DecodeFailure, truncate


class DeadLetter(NamedTuple):
    record: Any  # aiokafka ConsumerRecord
    failure: DecodeFailure


def dead_letter_headers(
    letter: DeadLetter, group_id: str, failed_at: dt.datetime
) -> list[tuple[str, bytes]]:
    record = letter.record
    added = [
        ("dlq.original.topic", record.topic),
        ("dlq.original.partition", str(record.partition)),
        ("dlq.original.offset", str(record.offset)),
        ("dlq.original.timestamp", str(record.timestamp)),
        ("dlq.reason", letter.failure.reason),
        ("dlq.error", truncate(letter.failure.message)),
        ("dlq.failed_at", failed_at.isoformat(timespec="milliseconds")),
        ("dlq.consumer_group", group_id),
        ("dlq.worker_version", __version__),
    ]
    original = [(k, v if v is not None else b"") for k, v in (record.headers or ())]
    return original + [(k, v.encode("utf-8")) for k, v in added]


class DeadLetterPublisher:
    def __init__(self, producer: AIOKafkaProducer, topic: str, group_id: str) -> None:
        self._producer = producer
        self.topic = topic
        self._group_id = group_id

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send every letter, then wait until the broker has acknowledged all of them."""
        if not letters:
            return
        failed_at = dt.datetime.now(dt.UTC)
        pending = [
            await self._producer.send(
                self.topic,
                value=letter.record.value,
                key=letter.record.key,
                headers=dead_letter_headers(letter, self._group_id, failed_at),
            )
            for letter in letters
        ]
        await asyncio.gather(*pending)
