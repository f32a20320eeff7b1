"""`python -m bench.erasure_wait`: how long `worker forget --execute` takes under a live worker,
and how many batches commit while it runs (issue 25, defect 6: an erasure starved by ingest).

An embedded broker and PostgreSQL (bench/stack.py), a worker with `--lanes` commit lanes
consuming a steady stream of proctoring events on 12 partitions, and `--erasures` erasures
one after the other, each through `worker.tools.forget.erase` with the log ends read from the
broker, timed from the call to its commit. The figures are the erasure's time (median and
max), the batches the worker committed meanwhile, how long the erasure waited for a lock and
how long batches waited behind it (pg_stat_activity sampled every 5 ms): with the ledger's
lock row read FOR SHARE by every batch and an erasure that waits for an UPDATE of it, new
readers overtake the waiting UPDATE; with `LOCK TABLE ... IN EXCLUSIVE MODE` they queue
behind it.

Only interfaces every release since the ledger has (Worker, Settings, erase, log_ends) are
used, so the same file measures an older tree: run it from that tree's root with this file
copied in (and, for an editable install of another tree, `worker/sql` linked to its `sql/`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def _produce(bootstrap: str, topic: str, stop: asyncio.Event, rate: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    sent = 0
    try:
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            futures = []
            while sent < due:
                doc = {
                    "examId": f"exam-{sent % 500}",
                    "candidateId": f"cand-{sent % 5000}",
                    "type": "TAB_NOT_FOCUS",
                    "createdAt": f"2026-01-01T00:00:{sent % 60:02d}.{sent % 1000000:06d}Z",
                }
                futures.append(await producer.send(topic, json.dumps(doc).encode()))
                sent += 1
            if futures:
                await asyncio.gather(*futures)
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()
    return sent


async def _sample(
    url: str, pid: int, done: asyncio.Event, every: float = 0.005
) -> dict[str, float]:
    """While `done` is unset: how long the erasure's backend (`pid`) waited for a lock, and
    how long at least one other backend (a batch) waited for a lock on a ledger table."""
    conn = await asyncpg.connect(url)
    erasure = batches = 0.0
    try:
        while not done.is_set():
            started = time.monotonic()
            rows = await conn.fetch(
                "SELECT pid, wait_event_type = 'Lock' AS waiting, query FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(every)
            spent = time.monotonic() - started
            if any(r["pid"] == pid and r["waiting"] for r in rows):
                erasure += spent
            if any(r["pid"] != pid and r["waiting"] and "erasure" in r["query"] for r in rows):
                batches += spent
    finally:
        await conn.close()
    return {"erasure_lock_wait_s": erasure, "batches_blocked_s": batches}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench.stack import Stack
    from worker.config import Settings
    from worker.consumer import Worker
    from worker.tools.forget import erase, log_ends

    stack = Stack(run_id="erasure-wait")
    stack.start()
    try:
        url = await stack.fresh_database("wait")
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap_servers)
        await admin.start()
        names = ("bench-wait-p", "bench-wait-i", "bench-wait-dlq")
        await admin.create_topics([NewTopic(n, 12 if i < 2 else 1, 1) for i, n in enumerate(names)])
        await admin.close()
        settings = dataclasses.replace(
            Settings(),
            bootstrap_servers=stack.bootstrap_servers,
            database_url=url,
            group_id="bench-wait",
            proctoring_topic=names[0],
            interview_topic=names[1],
            dlq_topic=names[2],
            db_lanes=args.lanes,
            db_pool_size=args.lanes + 1,
            max_batch_records=args.max_batch,
            metrics_port=0,
            log_level="WARNING",
        )
        worker = Worker(settings)
        run = asyncio.create_task(worker.run())
        stop = asyncio.Event()
        producing = asyncio.create_task(
            _produce(stack.bootstrap_servers, names[0], stop, args.rate)
        )
        await asyncio.sleep(args.warmup)
        conn = await asyncpg.connect(url)
        times: list[float] = []
        overtaken: list[int] = []
        waits: list[dict[str, float]] = []
        try:
            for n in range(args.erasures):
                before = worker.stats["batches"]
                done = asyncio.Event()
                sampler = asyncio.create_task(_sample(url, conn.get_server_pid(), done))
                started = time.monotonic()
                await erase(conn, f"cand-{n}", lambda: log_ends(settings))
                times.append(time.monotonic() - started)
                done.set()
                waits.append(await sampler)
                overtaken.append(worker.stats["batches"] - before)
                await asyncio.sleep(1.0)
        finally:
            await conn.close()
            stop.set()
            sent = await producing
            worker.stop()
            await run
        return {
            "lanes": args.lanes,
            "rate": args.rate,
            "max_batch": args.max_batch,
            "produced": sent,
            "consumed": worker.stats["consumed"],
            "erasure_s": [round(t, 3) for t in times],
            "erasure_s_median": round(statistics.median(times), 3),
            "erasure_s_max": round(max(times), 3),
            "batches_during": overtaken,
            "erasure_lock_wait_s": [round(w["erasure_lock_wait_s"], 3) for w in waits],
            "batches_blocked_s": [round(w["batches_blocked_s"], 3) for w in waits],
        }
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.erasure_wait", description=__doc__)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--rate", type=int, default=4000, help="events per second produced")
    parser.add_argument("--erasures", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=500, help="WORKER_MAX_BATCH_RECORDS")
    parser.add_argument("--warmup", type=float, default=8.0)
    print(json.dumps(asyncio.run(measure(parser.parse_args()))))


if __name__ == "__main__":
    main()
