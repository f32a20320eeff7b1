"""Campaign 4, broker faults: the embedded broker stopped for a while and started again.

The embedded broker keeps its data in memory, so a restart loses every topic, record and group;
the test re-creates the topics under the same names, as an operator would. During the outage
the production process must stay alive, back off instead of spinning a CPU (its CPU time over
the outage, from psutil), and log a bounded number of lines; once the broker and the topics are
back, new events must be stored.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import asyncpg
import psutil
import pytest
from support import infra
from support.chaos import (
    FAST_GROUP_ENV,
    SCALE,
    SEED,
    SIZES,
    Clock,
    Publisher,
    count_in_log,
    create_named_topics,
    generate_stream,
    log_lines,
    make_topics,
    offsets_total,
    report,
    topic_map,
    wait_until,
)
from support.e2e import WorkerProcess, settings_for, worker_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SIZES.test_timeout_s)]

PARTITIONS = 2
MAX_CPU_PERCENT = 50.0  # of one core, averaged over the outage
MAX_LOG_LINES_PER_20S = 100


def _events_of(log_path: Path, skip_lines: int) -> Counter[str]:
    """What the log lines after the first `skip_lines` say, by event (first 60 chars)."""
    seen: Counter[str] = Counter()
    with log_path.open(encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh):
            if n < skip_lines:
                continue
            try:
                seen[str(json.loads(line).get("event", "?"))[:60]] += 1
            except ValueError:
                seen[line.strip()[:60]] += 1
    return seen


async def _stored_identities(database_url: str, exams: set[str]) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        if await conn.fetchval("SELECT to_regclass('proctoring_events')") is None:
            return 0
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM proctoring_events WHERE exam_id = ANY($1::text[])",
                sorted(exams),
            )
        )
    finally:
        await conn.close()


async def test_broker_outage_is_waited_out_quietly_and_new_events_are_stored(
    kafka_stack: infra.KafkaStack,
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
    tmp_path: Path,
) -> None:
    broker = kafka_stack.broker
    if broker is None:
        pytest.skip(f"Kafka comes from {kafka_stack.source}: the test cannot stop it")
    clock = Clock()
    topics = await make_topics(topic_factory, PARTITIONS)
    partitions = {topics.proctoring: PARTITIONS, topics.interview: PARTITIONS, topics.dlq: 1}
    # Only proctoring events, no duplicates: each wave's rows are countable by exam.
    before_wave = generate_stream(
        SEED + 5, 600, duplicate_share=0.0, malformed_share=0.0, proctoring_share=1.0, tag="b1"
    )
    after_wave = generate_stream(
        SEED + 6, 400, duplicate_share=0.0, malformed_share=0.0, proctoring_share=1.0, tag="b2"
    )
    exams_after = {_exam(r.value) for r in after_wave.records}
    # A realistic cap on the backoff: the outage outlasts many rounds of it.
    settings = settings_for(kafka_bootstrap, database_url, topics, retry_max_s=2.0)
    log_path = tmp_path / "worker.log"
    proc: WorkerProcess = worker_process(settings, log_path, FAST_GROUP_ENV)
    figures: dict[str, object] = {}
    try:
        async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
            await publisher.publish(before_wave.records)
            produced = publisher.produced

        async def stored_before() -> bool:
            assert proc.poll() is None, f"worker exited:\n{proc.log_tail()}"
            return await offsets_total(database_url, topics.group_id) >= produced

        await wait_until(stored_before, 120, "the first wave to be stored")

        # -- the outage ---------------------------------------------------------------------
        process = psutil.Process(proc.pid)
        lines_before = log_lines(log_path)
        cpu_before = sum(process.cpu_times()[:2])
        down_at = time.monotonic()
        await asyncio.to_thread(broker.stop)
        while time.monotonic() - down_at < SIZES.outage_s:
            await asyncio.sleep(1.0)
            assert proc.poll() is None, f"worker died in the outage:\n{proc.log_tail()}"
        outage = time.monotonic() - down_at
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        lines = log_lines(log_path) - lines_before
        cpu_percent = round(100.0 * cpu / outage, 1)
        figures.update(
            outage_s=round(outage, 1),
            worker_cpu_s=round(cpu, 2),
            worker_cpu_percent=cpu_percent,
            log_lines_in_outage=lines,
            top_log_events=dict(_events_of(log_path, lines_before).most_common(4)),
        )

        # -- back ---------------------------------------------------------------------------
        up_at = time.monotonic()
        await asyncio.to_thread(broker.start)
        await create_named_topics(kafka_bootstrap, partitions)
        async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
            await publisher.publish(after_wave.records)
        expected = len(after_wave.records)

        async def stored_after() -> int:
            assert proc.poll() is None, f"worker exited:\n{proc.log_tail()}"
            n = await _stored_identities(database_url, exams_after)
            return n if n >= expected else 0

        try:
            await wait_until(stored_after, 45, "the events produced after the outage")
        finally:
            figures.update(
                stored_after_outage=await _stored_identities(database_url, exams_after),
                produced_after_outage=expected,
                recovery_s=round(time.monotonic() - up_at, 1),
                rejoins_logged=count_in_log(log_path, "partitions positioned"),
            )
            report("4 broker faults", scale=SCALE, **figures)
        code = await asyncio.to_thread(proc.terminate_and_wait, 60)
        assert code == 0, f"SIGTERM exit code {code}:\n{proc.log_tail()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        kafka_stack.ensure_running()

    report("4 broker faults", total_s=clock())
    assert cpu_percent < MAX_CPU_PERCENT, figures
    assert lines * 20.0 / SIZES.outage_s < MAX_LOG_LINES_PER_20S, figures


def _exam(value: bytes | None) -> str:
    assert value is not None
    return str(json.loads(value)["examId"])
