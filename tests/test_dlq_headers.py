"""Dead letters keep the original key and headers byte for byte (docs/contract.md §6), null
included.

Kafka's header value is NULLABLE_BYTES: a null value (length -1) and an empty one (length 0)
are different things on the wire, and a producer may rely on the difference. These tests pin
both ends the worker depends on: what dead_letter_headers() hands the producer, and that
aiokafka's record builder writes a None value as a null header rather than an empty one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from worker.dlq import DeadLetter, DeadLetterPublisher, DecodeFailure, dead_letter_headers

ORIGINAL: list[tuple[str, bytes | None]] = [
    ("trace-id", b"abc"),
    ("null", None),
    ("empty", b""),
    ("binary", b"\x00\xff\xfe\x80"),
    ("null", None),  # repeated keys are legal and keep their order
]


def _record(key: bytes | None, headers: list[tuple[str, bytes | None]]) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic="t",
        partition=3,
        offset=17,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=key,
        value=b"not json",
        checksum=None,
        serialized_key_size=-1 if key is None else len(key),
        serialized_value_size=8,
        headers=tuple(headers),
    )


def _letter(key: bytes | None = b"k") -> DeadLetter:
    return DeadLetter(_record(key, ORIGINAL), DecodeFailure("invalid_json", "bad"))


def test_original_headers_come_first_unchanged_with_null_values_still_null() -> None:
    headers = dead_letter_headers(_letter(), "g", dt.datetime.now(dt.UTC))
    assert headers[: len(ORIGINAL)] == ORIGINAL
    added = headers[len(ORIGINAL) :]
    assert all(k.startswith("dlq.") and isinstance(v, bytes) for k, v in added), added


def test_a_record_without_headers_gets_only_the_dlq_headers() -> None:
    letter = DeadLetter(_record(b"k", []), DecodeFailure("empty_payload", "empty"))
    headers = dead_letter_headers(letter, "g", dt.datetime.now(dt.UTC))
    assert headers and all(k.startswith("dlq.") for k, _ in headers)


def test_aiokafka_writes_a_none_header_value_as_a_null_header() -> None:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(0, timestamp=None, key=None, value=b"v", headers=[("n", None), ("e", b"")])
    raw = bytes(builder.build())
    # Header wire format: varint key length, key, varint value length, value. Zig-zag -1 is
    # 0x01 (null); 0 is 0x00 (empty).
    assert b"\x02n\x01" in raw
    assert b"\x02e\x00" in raw
    records = MemoryRecords(raw)
    batch = records.next_batch()
    assert batch is not None
    (record,) = list(batch)
    assert record.headers == [("n", None), ("e", b"")]
    assert record.key is None


class _Producer:
    """Records what the publisher asks aiokafka to send; every send succeeds."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        self.sent.append({"topic": topic, **kwargs})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_publisher_keeps_null_key_and_null_header_values() -> None:
    producer = _Producer()
    publisher = DeadLetterPublisher(producer, "dlq", "g")  # type: ignore[arg-type]
    await publisher.publish([_letter(key=None), _letter(key=b"")])
    assert [s["key"] for s in producer.sent] == [None, b""]
    for sent in producer.sent:
        assert sent["value"] == b"not json"
        assert sent["headers"][: len(ORIGINAL)] == ORIGINAL


def test_the_worker_adds_exactly_the_contract_headers() -> None:
    from support.e2e import DLQ_HEADERS

    from worker.dlq import CONTEXT_HEADERS

    assert CONTEXT_HEADERS == DLQ_HEADERS


# -- the signed origin (docs/contract.md §6, §7; worker/origin.py) -----------------------------

KEY = bytes(range(32))


def _sent_origin(producer: _Producer) -> list[bytes]:
    return [v for s in producer.sent for k, v in s["headers"] if k == "dlq.origin"]


async def test_every_dead_letter_carries_its_coordinates_signed_for_its_value() -> None:
    from worker import origin

    producer = _Producer()
    await DeadLetterPublisher(producer, "dlq", "g", KEY).publish([_letter()])  # type: ignore[arg-type]
    (signed,) = _sent_origin(producer)
    assert producer.sent[0]["headers"][-1] == ("dlq.origin", signed)  # after the context
    assert origin.verify(KEY, signed, b"not json") == (("t", 3, 17),)
    assert origin.verify(KEY, signed, b"not json!") == ()  # bound to the value
    assert origin.verify(bytes(32), signed, b"not json") == ()  # and to the key


async def test_a_replay_keeps_a_signed_chain_and_drops_a_forged_one() -> None:
    """A replayed record that fails again: its dead letter names it AND where it first was,
    if (and only if) the origin it carries verifies for its value."""
    from worker import origin

    first = origin.sign(KEY, [("t", 0, 5)], b"not json")
    forged = b"t:0:999999;" + b"0" * 64
    producer = _Producer()
    letters = [
        DeadLetter(
            _record(b"k", [("dlq.replay.origin", header)]), DecodeFailure("invalid_json", "bad")
        )
        for header in (first, forged)
    ]
    await DeadLetterPublisher(producer, "dlq", "g", KEY).publish(letters)  # type: ignore[arg-type]
    genuine, fake = _sent_origin(producer)
    assert origin.verify(KEY, genuine, b"not json") == (("t", 3, 17), ("t", 0, 5))
    assert origin.verify(KEY, fake, b"not json") == (("t", 3, 17),)


async def test_a_truncated_dead_letter_is_signed_for_the_value_sent() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    from worker import origin
    from worker.dlq import TRUNCATED_VALUE_BYTES

    class Refusing(_Producer):
        async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
            if len(kwargs["value"]) > TRUNCATED_VALUE_BYTES:
                raise MessageSizeTooLargeError()
            return await super().send(topic, **kwargs)

    big = b"x" * (TRUNCATED_VALUE_BYTES + 10)
    record = dataclasses.replace(_record(b"k", []), value=big, serialized_value_size=len(big))
    producer = Refusing()
    await DeadLetterPublisher(producer, "dlq", "g", KEY).publish(  # type: ignore[arg-type]
        [DeadLetter(record, DecodeFailure("invalid_json", "bad"))]
    )
    (sent,) = producer.sent
    (signed,) = _sent_origin(producer)
    assert origin.verify(KEY, signed, sent["value"]) == (("t", 3, 17),)
