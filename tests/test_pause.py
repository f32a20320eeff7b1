"""`worker pause` / `worker resume` (docs/contract.md §1, §8; issue 20 acceptance 2).

A running group, records arriving on every partition. An operator pauses one partition with the
real command line; within 5 s its worker reports it paused (/metrics) and from then on, for
HOLD_S seconds (30, as the acceptance asks), it receives records and stores none, while the
other partitions are stored as they come: through a restart of the worker and a rebalance
(a second worker joins), /readyz staying ready and `worker offsets show` saying paused. After
`worker resume`, every record of every partition is stored exactly once: the rows match the
records produced, and the workers' stored counters add up to them (a record stored twice
would count twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from support import infra
from support.e2e import (
    REPO_ROOT,
    committed_offsets,
    fetch,
    http_get,
    running_worker,
    settings_for,
    wait_for,
    worker_env,
)
from support.event_builders import encode, proctoring

from worker.config import Settings
from worker.consumer import Worker
from worker.dev.stack import free_port

pytestmark = pytest.mark.integration

HOLD_S = 30.0  # how long the paused partition must store nothing (the acceptance's figure)
PAUSED = 1
PARTITIONS = 4


async def _cli(settings: Settings, *args: str) -> str:
    """`worker ARGS` as an operator runs it (in a thread: the workers share this loop)."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", *args],
        cwd=REPO_ROOT,
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def _paused_gauge(port: int, topic: str) -> dict[int, float]:
    _, body = await http_get(port, "/metrics")
    return {
        int(s.labels["partition"]): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "worker_partition_paused" and s.labels["topic"] == topic
    }


class _Producer:
    """One record per partition every `interval` seconds, each a distinct event."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.client = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        self._topic = topic
        self._task: asyncio.Task[None] | None = None
        self.sent = dict.fromkeys(range(PARTITIONS), 0)

    async def send_round(self) -> None:
        for p in range(PARTITIONS):
            n = self.sent[p]
            value = encode(proctoring(examId=f"exam-p{p}-n{n}", description=f"{p}/{n}"))
            await self.client.send_and_wait(self._topic, value, partition=p)
            self.sent[p] = n + 1

    def start(self, interval: float) -> None:
        async def loop() -> None:
            while True:
                await self.send_round()
                await asyncio.sleep(interval)

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def _rows_by_partition(database_url: str) -> dict[int, int]:
    rows = await fetch(
        database_url,
        "SELECT kafka_partition AS p, count(*) AS n, count(DISTINCT kafka_offset) AS d"
        " FROM proctoring_events GROUP BY kafka_partition",
    )
    assert all(r["n"] == r["d"] for r in rows), rows
    return {r["p"]: r["n"] for r in rows}


async def test_a_paused_partition_stores_nothing_through_restart_and_rebalance(
    kafka_bootstrap: str, database_url: str, topics: infra.Topics
) -> None:
    t = topics.proctoring

    def settings() -> Settings:
        return settings_for(
            kafka_bootstrap,
            database_url,
            topics,
            metrics_port=free_port(),
            metrics_host="127.0.0.1",
        )

    producer = _Producer(kafka_bootstrap, t)
    await producer.client.start()
    workers: list[Worker] = []
    try:
        first = settings()
        async with running_worker(first) as a:
            workers.append(a)
            for _ in range(5):
                await producer.send_round()

            async def all_stored() -> bool:
                offsets = await committed_offsets(database_url, topics.group_id)
                return all(offsets.get((t, p)) == producer.sent[p] for p in range(PARTITIONS))

            await wait_for(all_stored, 60, "the first records of every partition")
            held_at = (await committed_offsets(database_url, topics.group_id))[(t, PAUSED)]
            held_rows = (await _rows_by_partition(database_url))[PAUSED]

            out = await _cli(first, "pause", "--topic", t, "--partition", str(PAUSED))
            assert f"{t}[{PAUSED}]: paused" in out, out
            asked = time.monotonic()

            async def paused_on(port: int) -> bool:
                return (await _paused_gauge(port, t)).get(PAUSED) == 1

            await wait_for(lambda: paused_on(first.metrics_port), 10, "the worker to pause")
            followed_s = time.monotonic() - asked
            assert followed_s <= 5.0, followed_s
            paused_since = time.monotonic()

            async def unchanged() -> None:
                offsets = await committed_offsets(database_url, topics.group_id)
                assert offsets[(t, PAUSED)] == held_at, offsets
                assert (await _rows_by_partition(database_url))[PAUSED] == held_rows

            producer.start(0.25)

            # While it runs: the others are stored as they come, the paused one is not.
            async def others_moved() -> bool:
                await unchanged()
                offsets = await committed_offsets(database_url, topics.group_id)
                return all(offsets[(t, p)] > 10 for p in range(PARTITIONS) if p != PAUSED)

            await wait_for(others_moved, 30, "the other partitions to be stored")
            status, body = await http_get(first.metrics_port, "/readyz")
            assert status == 200, body
            assert json.loads(body)["partitions_paused"] == [f"{t}[{PAUSED}]"]

        # A restart: the new process reads the pause at its first positioning.
        second = settings()
        async with running_worker(second) as a2:
            workers.append(a2)
            await wait_for(lambda: paused_on(second.metrics_port), 60, "restarted, paused")
            await unchanged()
            # A rebalance: a second worker joins; whoever owns the partition holds it paused.
            third = settings()
            async with running_worker(third) as b:
                workers.append(b)

                async def split() -> bool:
                    await unchanged()
                    owned = [set(w.owned()) for w in (a2, b)]
                    return all(owned) and len(owned[0] | owned[1]) == 2 * 4  # two topics of 4

                await wait_for(split, 60, "the partitions to be split between two workers")
                owner = next(
                    s
                    for s, w in ((second, a2), (third, b))
                    if TopicPartition(t, PAUSED) in w.owned()
                )
                await wait_for(lambda: paused_on(owner.metrics_port), 10, "its owner paused")
                status, _ = await http_get(owner.metrics_port, "/readyz")
                assert status == 200
                shown = json.loads(await _cli(second, "offsets", "show", "--json"))
                state = {(r["topic"], r["partition"]): r["paused"] for r in shown}
                assert state.pop((t, PAUSED)) is True
                assert not any(state.values()), state

                # The rest of the hold: records keep arriving, none of them is stored.
                while time.monotonic() - paused_since < HOLD_S:
                    await unchanged()
                    await asyncio.sleep(0.5)
                await unchanged()
                await producer.stop()
                assert producer.sent[PAUSED] > held_at + 20  # it did receive records

                out = await _cli(second, "resume", "--topic", t, "--partition", str(PAUSED))
                assert f"{t}[{PAUSED}]: resumed" in out, out
                resumed = time.monotonic()

                async def every_record_stored() -> bool:
                    offsets = await committed_offsets(database_url, topics.group_id)
                    return all(offsets.get((t, p)) == producer.sent[p] for p in range(PARTITIONS))

                await wait_for(every_record_stored, 30, "every record after the resume")
                assert time.monotonic() - resumed < 15
    finally:
        await producer.stop()
        await producer.client.stop()
    assert await _rows_by_partition(database_url) == producer.sent
    total = sum(producer.sent.values())
    assert sum(w.stats["stored"] for w in workers) == total, [w.stats for w in workers]
