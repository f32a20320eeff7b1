"""Producing: a bulk preload and a paced, timestamped stream, both with confluent-kafka.

Delivery reports are the only count trusted: the embedded broker under-reports end offsets
(high watermarks), so "what is in the topic" is what the broker acknowledged, per partition.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bench.data import iso_z

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
Headers = list[tuple[str, bytes]]

# Set by the benchmark on Ctrl-C: the producing loops (run in threads) stop early.
STOP = threading.Event()


class Stopped(Exception):
    pass


@dataclass
class Delivered:
    """What the broker acknowledged: per (topic, partition) count and highest offset."""

    count: int = 0
    errors: int = 0
    first_error: str | None = None
    per_partition: dict[tuple[str, int], int] = field(default_factory=dict)
    max_offset: dict[tuple[str, int], int] = field(default_factory=dict)

    def callback(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors += 1
            if self.first_error is None:
                self.first_error = str(err)
            return
        tp = (msg.topic(), msg.partition())
        self.count += 1
        self.per_partition[tp] = self.per_partition.get(tp, 0) + 1
        off = msg.offset()
        if off > self.max_offset.get(tp, -1):
            self.max_offset[tp] = off

    def expected_offsets(self, topics: Iterable[str]) -> int:
        """SUM(next_offset) the worker reaches once it has committed everything acknowledged."""
        wanted = set(topics)
        return sum(o + 1 for (t, _), o in self.max_offset.items() if t in wanted)

    def contiguous(self) -> bool:
        """Whether offsets start at 0 with no gaps (then expected_offsets == count)."""
        return all(self.max_offset[tp] + 1 == n for tp, n in self.per_partition.items())


def _producer(config: dict[str, object], **extra: object) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            **config,
            "acks": "all",
            "enable.idempotence": False,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            **extra,
        }
    )


def preload(
    config: dict[str, object],
    records: Iterable[tuple[str, bytes, bytes]] | Iterable[tuple[str, bytes, bytes, Headers]],
    delivered: Delivered | None = None,
) -> tuple[Delivered, float]:
    """Send (topic, key, value) or (topic, key, value, headers) records as fast as possible;
    returns acks and seconds."""
    delivered = delivered or Delivered()
    producer = _producer(
        config, **{"linger.ms": 20, "batch.num.messages": 10_000, "batch.size": 4_000_000}
    )
    started = time.perf_counter()
    for i, (topic, key, value, *headers) in enumerate(records):
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    on_delivery=delivered.callback,
                    headers=headers[0] if headers else None,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
            if STOP.is_set():
                raise Stopped
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"{remaining} records still unacknowledged after 120 s")
    return delivered, elapsed


def send_to_each_partition(
    config: dict[str, object],
    topic: str,
    partitions: int,
    make: Callable[[int], bytes],
    delivered: Delivered | None = None,
) -> Delivered:
    """One record per partition (explicit partition), e.g. to warm a consumer group up."""
    delivered = delivered or Delivered()
    producer = _producer(config, **{"linger.ms": 0})
    for p in range(partitions):
        producer.produce(topic, make(p), b"warmup", partition=p, on_delivery=delivered.callback)
    producer.flush(30)
    return delivered


@dataclass
class PacedResult:
    delivered: Delivered
    sent: int
    first_send: float
    last_send: float
    max_lag_s: float  # worst time the pacer fell behind its schedule

    @property
    def offered_rate(self) -> float:
        span = self.last_send - self.first_send
        return (self.sent - 1) / span if span > 0 and self.sent > 1 else 0.0


def paced_proctoring(
    config: dict[str, object],
    topic: str,
    rate: float,
    seconds: float,
    sessions: list[tuple[str, str]],
    tick_s: float = 0.005,
    delivered: Delivered | None = None,
) -> PacedResult:
    """Offer `rate` events/s for `seconds`: every `tick_s` a burst of the events now due.

    Each event's `createdAt` is its send time (UTC, µs), strictly increasing across the
    stream so every event identity is distinct. The librdkafka default linger (5 ms) applies,
    as for a typical producer. Acknowledgements are added to `delivered` when given.
    """
    delivered = delivered or Delivered()
    producer = _producer(config, **{"linger.ms": 5})
    encode = msgspec.json.encode
    flags = ("TAB_NOT_FOCUS", "SOUND_DETECTED", "FACE_ABSENCE", "EXIT_FULLSCREEN")
    total = int(rate * seconds)
    sent = 0
    last_us = 0
    max_lag = 0.0
    start = time.perf_counter()
    first_send = last_send = time.time()
    next_tick = start
    while sent < total:
        if STOP.is_set():
            raise Stopped
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        if sent:
            max_lag = max(max_lag, (due - sent) / rate)
        while sent < due:
            wall = time.time()
            us = max(int(wall * 1_000_000), last_us + 1)
            last_us = us
            exam, cand = sessions[sent % len(sessions)]
            kind = flags[sent % len(flags)]
            body: dict[str, object] = {
                "examId": exam,
                "candidateId": cand,
                "type": kind,
                "description": "latency probe",
                "createdAt": iso_z(_EPOCH + dt.timedelta(microseconds=us)),
            }
            if kind in ("SOUND_DETECTED", "FACE_ABSENCE"):
                body["mediaUrl"] = f"https://media.proctorme.example/{exam}/{cand}/{us}.jpg"
            if sent == 0:
                first_send = wall
            last_send = wall
            producer.produce(
                topic, encode(body), f"{exam}:{cand}".encode(), on_delivery=delivered.callback
            )
            sent += 1
        producer.poll(0)
        next_tick += tick_s
        pause = next_tick - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            next_tick = time.perf_counter()
    producer.flush(60)
    return PacedResult(delivered, sent, first_send, last_send, max_lag)
