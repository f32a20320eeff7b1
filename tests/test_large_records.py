"""Records of 500 kB: batches stop growing at WORKER_MAX_BATCH_BYTES, so the worker's memory
follows the byte setting, not the record count.

Two worker processes consume the same 80 records of 500 kB each (40 MB), one with a 4 MiB
byte budget and one with 512 MiB (in effect no byte bound, only the 20 000-record one). The
test prints both peak RSS figures; it asserts the batch sizes the worker logged, which is
what the setting promises, and that the bounded run stays below the unbounded one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import infra
from support.e2e import (
    count_rows,
    expected_offsets,
    settings_for,
    wait_for_offsets,
    worker_process,
)

pytestmark = pytest.mark.integration

RECORDS = 80
DESCRIPTION_CHARS = 500_000
BOUNDED = 4 << 20
UNBOUNDED = 512 << 20


def large_flag(i: int) -> tuple[bytes, bytes]:
    value = {
        "examId": f"exam-{i % 4}",
        "candidateId": "cand",
        "type": "TAB_NOT_FOCUS",
        "createdAt": f"2025-01-01T00:00:{i % 60:02d}.{i:06d}Z",
        "description": "x" * DESCRIPTION_CHARS,
    }
    return (f"exam-{i % 4}:cand".encode(), json.dumps(value).encode())


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def batches_logged(log: str) -> list[dict[str, int]]:
    batches = []
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "batch committed":
            batches.append(event)
    return batches


async def consume_with_budget(
    kafka_bootstrap: str,
    pg_admin_url: str,
    topics: infra.Topics,
    expected: dict[tuple[str, int], int],
    budget: int,
) -> tuple[float, list[dict[str, int]]]:
    """Consume the topics from the start in a fresh group and database; the worker's peak
    RSS and the batches it logged."""
    database_url = await infra.create_database(pg_admin_url)
    settings = settings_for(
        kafka_bootstrap,
        database_url,
        topics,
        group_id=infra.unique_name("g_"),
        max_batch_bytes=budget,
        log_level="DEBUG",
    )
    proc = worker_process(settings)
    try:
        await wait_for_offsets(database_url, settings.group_id, expected, 180)
        assert await count_rows(database_url, "proctoring_events") == RECORDS
        rss = peak_rss_mb(proc.pid)
    finally:
        await asyncio.to_thread(proc.terminate_and_wait)
        await infra.drop_database(pg_admin_url, database_url)
    return rss, batches_logged(proc.log_path.read_text())


async def test_peak_memory_follows_the_batch_byte_setting(
    kafka_bootstrap: str, pg_admin_url: str, topics: infra.Topics
) -> None:
    produced = []
    for start in range(0, RECORDS, 10):  # 5 MB a request: under the producer's limits
        chunk = [large_flag(i) for i in range(start, start + 10)]
        produced += await infra.produce(kafka_bootstrap, topics.proctoring, chunk)
    expected = expected_offsets(produced)
    record_bytes = len(large_flag(0)[1]) + len(large_flag(0)[0])

    stack = (kafka_bootstrap, pg_admin_url, topics, expected)
    bounded_rss, bounded = await consume_with_budget(*stack, BOUNDED)
    unbounded_rss, unbounded = await consume_with_budget(*stack, UNBOUNDED)
    print(
        f"\n500 kB records x {RECORDS}: peak RSS {bounded_rss:.0f} MB with "
        f"WORKER_MAX_BATCH_BYTES={BOUNDED} (largest batch {max(b['bytes'] for b in bounded)} "
        f"bytes), {unbounded_rss:.0f} MB with {UNBOUNDED} (largest batch "
        f"{max(b['bytes'] for b in unbounded)} bytes)"
    )
    assert sum(b["records"] for b in bounded) == RECORDS
    # A batch stops growing once it reaches the budget; the fetch that crosses it may add at
    # most one fetch's worth (the fetch size is capped by the budget too).
    assert max(b["bytes"] for b in bounded) <= 2 * BOUNDED + record_bytes
    assert max(b["bytes"] for b in unbounded) > 2 * BOUNDED + record_bytes, (
        "the unbounded run never made a large batch: the comparison shows nothing"
    )
    assert bounded_rss < unbounded_rss
