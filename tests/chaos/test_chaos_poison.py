"""Campaign 6, poison at scale: a long run of consecutive malformed records on one partition,
then a few valid ones.

Every malformed record lands in the dead-letter topic, the valid ones are stored, and the dead
letters go out in batches: the worker commits far fewer batches than it dead-letters records
(a worker that sends one letter per transaction would take minutes where batches take
seconds). Time to drain and dead letters per second are printed, never asserted.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from support import infra
from support.chaos import (
    PROCTORING,
    SCALE,
    SEED,
    SIZES,
    Clock,
    Publisher,
    World,
    build_reference,
    check_dlq,
    check_offsets,
    compare_with_reference,
    items_of,
    make_topics,
    malformed,
    offsets_total,
    read_dlq,
    report,
    topic_map,
    wait_until,
)
from support.e2e import running_worker, settings_for, task_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SIZES.test_timeout_s)]


async def test_poison_run_is_dead_lettered_in_batches(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    clock = Clock()
    rng = random.Random(SEED + 60)
    world = World(rng, SIZES.poison_records, tag="p")
    poison = [malformed(world, rng, family=PROCTORING) for _ in range(SIZES.poison_records)]
    valid = [world.proctoring().planned for _ in range(SIZES.poison_valid)]
    topics = await make_topics(topic_factory, 1, prefix="g_poison_")
    # The production batch size (Settings' default), not the small one of the other tests.
    settings = settings_for(kafka_bootstrap, database_url, topics)
    async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
        for i in range(0, len(poison), 1000):
            await publisher.publish(poison[i : i + 1000])
        await publisher.publish(valid)
    produced = publisher.produced
    assert produced == len(poison) + len(valid)

    async with running_worker(settings) as worker:
        started = time.monotonic()
        first_commit: float | None = None

        async def drained() -> bool:
            nonlocal first_commit
            assert not task_of(worker).done(), "worker task ended"
            total = await offsets_total(database_url, topics.group_id)
            if total > 0 and first_commit is None:
                first_commit = time.monotonic()
            return total >= produced

        await wait_until(drained, SIZES.test_timeout_s / 2, "the poison run to drain", 0.05)
        done = time.monotonic()
        stats = dict(worker.stats)
        in_batches_s = worker.metrics.registry.get_sample_value("worker_batch_duration_seconds_sum")
    assert first_commit is not None

    assert stats["dead_lettered"] == len(poison), stats
    assert stats["stored"] == len(valid), stats
    # Batched: at least 50 dead letters per committed batch on average.
    assert stats["batches"] * 50 <= len(poison), stats
    committed = await check_offsets(database_url, topics.group_id, publisher)
    reference_url = await fresh_database()
    assert await build_reference(reference_url, items_of(valid)) == []
    tables = await compare_with_reference(database_url, reference_url)
    malformed_sent = publisher.malformed()
    dlq = check_dlq(
        await read_dlq(kafka_bootstrap, topics.dlq, set(malformed_sent)), malformed_sent
    )
    in_batches = float(in_batches_s or 0.0)
    report(
        "6 poison at scale",
        scale=SCALE,
        malformed=len(poison),
        valid=len(valid),
        kinds=dict(Counter(p.kind for p in poison)),
        worker_stats=stats,
        records_per_batch=round(stats["consumed"] / max(1, stats["batches"]), 1),
        join_to_first_commit_s=round(first_commit - started, 2),
        first_commit_to_drained_s=round(done - first_commit, 2),
        time_in_batches_s=round(in_batches, 2),
        dead_letters_per_s=round(len(poison) / in_batches, 1) if in_batches else None,
        committed_offsets_sum=committed,
        **tables,
        **dlq,
        total_s=clock(),
    )
