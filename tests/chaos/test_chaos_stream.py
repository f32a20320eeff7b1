"""The campaigns' stream generator keeps to the contract's ordering freedom (self-check).

If a campaign's tables differ from its reference, this test tells the generator's fault (an
order the contract does not allow) from the worker's: the delivery order, split into random
batches and with each partition's records interleaved at random, applied straight through
the handlers, must give the reference's tables. No broker, no worker: seconds.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from support.chaos import (
    DECODERS,
    PROCTORING,
    SEED,
    build_reference,
    compare_with_reference,
    generate_stream,
    items_of,
    report,
)

from worker.dlq import DecodeFailure
from worker.handlers.base import Item
from worker.migrate import migrate
from worker.router import apply_batch

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def test_delivery_order_gives_the_reference_tables(
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    stream = generate_stream(SEED, 3_000)
    assert stream.malformed == sum(stream.malformed_kinds.values()) > 0
    assert stream.duplicates > 0
    assert not any(r.valid for r in stream.records if r.reason)

    # Split the delivered valid records by partition (as Kafka would, by key) and interleave
    # the partitions at random: the worker sees each partition in order, nothing more.
    rng = random.Random(SEED)
    queues: dict[tuple[str, int], list[int]] = {}
    delivered = [r for r in stream.records if r.valid]
    for i, r in enumerate(delivered):
        partition = zlib.crc32(r.key or b"") % PARTITIONS
        queues.setdefault((r.family, partition), []).append(i)
    items = items_of(delivered)
    interleaved: list[Item] = []
    while any(queues.values()):
        queue = rng.choice([q for q in queues.values() if q])
        take = rng.randint(1, 40)
        interleaved += [items[i] for i in queue[:take]]
        del queue[:take]

    reference_url, delivered_url = await fresh_database(), await fresh_database()
    assert await build_reference(reference_url, items_of(stream.events)) == []
    conn = await asyncpg.connect(delivered_url)
    try:
        await migrate(conn)
        position = 0
        while position < len(interleaved):
            size = rng.randint(1, 300)
            async with conn.transaction():
                await apply_batch(conn, interleaved[position : position + size])
            position += size
    finally:
        await conn.close()
    figures = await compare_with_reference(delivered_url, reference_url)
    report(
        "stream self-check",
        records=len(stream.records),
        distinct=len(stream.events),
        proctoring=sum(e.family == PROCTORING for e in stream.events),
        duplicates=stream.duplicates,
        malformed=dict(stream.malformed_kinds),
        **figures,
    )
    for r in stream.records:
        if not r.valid:
            assert isinstance(DECODERS[r.family].decode(r.value), DecodeFailure)
