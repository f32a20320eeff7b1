"""`worker produce TOPIC [JSON ...] [--key K]`: publish values (or stdin lines) to a topic, for
trying things out. Every value is acknowledged (acks=all) before the next is sent, and the line
printed for it names where it landed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from worker.config import Settings
from worker.runner import event_loop_runner


def add_parser(subparsers: Any) -> None:
    """Register `produce` on the CLI's subparsers."""
    produce = subparsers.add_parser(
        "produce", help="publish JSON values (arguments or stdin lines)"
    )
    produce.add_argument("topic")
    produce.add_argument("values", nargs="*", help="record values; stdin lines if none")
    produce.add_argument("--key", default=None)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return int(event_loop_runner()(_produce(settings, args.topic, args.key, args.values)))


async def _produce(settings: Settings, topic: str, key: str | None, values: list[str]) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**settings.kafka_options(), acks="all", enable_idempotence=False)
    await producer.start()
    try:
        lines = values or [line for line in sys.stdin.read().splitlines() if line.strip()]
        for value in lines:
            md = await producer.send_and_wait(
                topic, value.encode(), key=key.encode() if key else None
            )
            print(f"produced {md.topic}[{md.partition}]@{md.offset}")
    finally:
        await producer.stop()
    return 0
