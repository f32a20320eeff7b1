"""Campaign 1, crash loop: the production process SIGKILLed at random moments, restarted each
time, while a producer publishes both topics (duplicates, contract-allowed reordering and ~2%
malformed records included).

At the end the tables equal a reference built by applying the distinct valid events once
through the handlers into a second database; every malformed record is in the dead-letter
topic (a repeated letter only with the same dlq.original.* coordinates); the committed offsets
account for every record produced.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from support import infra
from support.chaos import (
    FAST_GROUP_ENV,
    SEED,
    SIZES,
    ProcessCampaign,
    check_dlq,
    count_in_log,
    offsets_total,
    read_dlq,
    report,
    wait_until,
)
from support.e2e import WorkerProcess, worker_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SIZES.test_timeout_s)]

# How long the producer takes per planned kill: keeps records flowing through every cycle.
PRODUCE_S_PER_KILL = 9.0


async def test_crash_loop_loses_nothing_and_counts_nothing_twice(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
) -> None:
    campaign = await ProcessCampaign.create(
        kafka_bootstrap,
        database_url,
        topic_factory,
        seed=SEED,
        events=SIZES.crash_events,
        partitions=4,
    )
    clock, stream, topics, settings = (
        campaign.clock,
        campaign.stream,
        campaign.topics,
        campaign.settings,
    )
    procs = campaign.procs
    log_path = tmp_path / "worker.log"
    rng = random.Random(SEED + 1)
    cycles: list[str] = []
    modes: Counter[str] = Counter()

    def alive(proc: WorkerProcess) -> None:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{proc.log_tail()}")

    seconds = SIZES.crash_kills * PRODUCE_S_PER_KILL
    async with campaign.publishing(kafka_bootstrap, seconds) as (publisher, producing):
        for _ in range(SIZES.crash_kills):
            before = await offsets_total(database_url, topics.group_id)
            proc = worker_process(settings, log_path, FAST_GROUP_ENV)
            procs.append(proc)
            started = time.monotonic()
            if rng.random() < 0.25:
                # Anywhere: importing, migrating, joining the group, or consuming.
                mode = "blind"
                await asyncio.sleep(rng.uniform(0.3, 5.0))
            else:
                # Once it commits, at a random moment of the stream.
                mode = "mid-stream"

                async def progressed(proc: WorkerProcess = proc, before: int = before) -> bool:
                    alive(proc)
                    total = await offsets_total(database_url, topics.group_id)
                    return total > before or (producing.done() and total >= publisher.produced)

                await wait_until(progressed, 120, "progress before the kill", interval=0.05)
                await asyncio.sleep(rng.uniform(0.0, 1.5))
            alive(proc)
            proc.kill()
            await asyncio.to_thread(proc.wait, 30)
            after = await offsets_total(database_url, topics.group_id)
            modes[mode] += 1
            cycles.append(f"{mode}@{time.monotonic() - started:.1f}s:+{after - before}")
        await producing
        killed_at = clock()

        positioned = count_in_log(log_path, "partitions positioned")
        proc = worker_process(settings, log_path, FAST_GROUP_ENV)
        procs.append(proc)
        expected = publisher.produced

        async def drained() -> bool:
            alive(proc)
            # Owning its partitions (so a SIGTERM tests a real shutdown), and done.
            return count_in_log(log_path, "partitions positioned") > positioned and (
                await offsets_total(database_url, topics.group_id) >= expected
            )

        await wait_until(drained, SIZES.test_timeout_s / 2, "the last worker to drain")
        drained_at = clock()
        code = await asyncio.to_thread(proc.terminate_and_wait, 60)
        assert code == 0, f"SIGTERM exit code {code}:\n{proc.log_tail()}"

    committed, tables = await campaign.judge_tables(database_url, publisher, fresh_database)
    malformed = publisher.malformed()
    assert len(malformed) == stream.malformed
    letters = await read_dlq(kafka_bootstrap, topics.dlq, set(malformed))
    dlq = check_dlq(letters, malformed)
    report(
        "1 crash loop",
        **campaign.figures(publisher),
        kills=len(cycles),
        kill_modes=dict(modes),
        cycles=" ".join(cycles),
        worker_starts=len(procs),
        killed_after_s=killed_at,
        drained_after_s=drained_at,
        committed_offsets_sum=committed,
        tracebacks_in_log=count_in_log(log_path, "Traceback"),
        assignments_logged=count_in_log(log_path, "partitions positioned"),
        **tables,
        **dlq,
        total_s=clock(),
    )
