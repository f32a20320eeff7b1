"""Transaction markers and re-reads: how often the worker reads a partition again when every
few records are followed by an offset that holds no record.

A transactional producer follows each transaction with a commit marker: a control batch at an
offset of its own, which a read_committed consumer skips. The embedded broker (Tansu) has no
InitProducerId, so no client can produce transactionally there; it does store a control batch
sent without a producer id, and aiokafka skips it exactly as it skips a real marker (position
past it, no record returned). That is all the worker can see of a transaction, so this
benchmark produces records in groups of `--per-transaction` with a commit-marker batch after
each (a raw ProduceRequest built with aiokafka's own record-batch builder) while `worker run`
consumes them (this tree's, and with `--baseline-tree DIR` also another tree's, alternated;
each run on fresh topics, database and group), so that fetches end where a live stream's do,
often right before or after a marker; and it counts the re-reads the worker logged: a754101
logs "records start past where the partition was read to" for each Refetch, later trees
"records returned and not claimed". Target 0 per 100 000 records.

    .venv/bin/python -m bench.markers [--records 100000] [--per-transaction 10]
        [--partitions 12] [--rate 5000] [--rounds 1] [--baseline-tree /tmp/base-a754101]

A baseline tree is a checkout of another commit (`git worktree add --detach DIR REV`); its
`worker/sql` is linked to its own `sql/` so that its worker applies its own migrations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy as BatchBuilder

from bench import data
from bench.stack import Stack

REPO = Path(__file__).resolve().parent.parent
# What each tree logs when it reads a partition again (INFO).
REREAD_LINES = (
    "records start past where the partition was read to",  # a754101: Refetch
    "records returned and not claimed",  # the evidence-based claims (issue 24)
)
COMMIT_MARKER = (struct.pack(">HH", 0, 1), struct.pack(">hi", 0, 0))  # key, value


class _ControlBatch(BatchBuilder):
    """A control batch: aiokafka's builder with the control bit set (brokers write these)."""

    def _get_attributes(self, include_compression_type: bool = True) -> int:
        return super()._get_attributes(include_compression_type) | self.CONTROL_MASK


def _batch(builder: type[BatchBuilder], records: list[tuple[bytes | None, bytes]]) -> bytes:
    b = builder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 24,
    )
    now = int(time.time() * 1000)
    for i, (key, value) in enumerate(records):
        b.append(i, now, key, value, [])
    return bytes(b.build())


async def produce_transactions(
    bootstrap: str,
    topic: str,
    partitions: int,
    records: list[data.Record],
    per: int,
    rate: float,
) -> dict[int, int]:
    """Produce `records` round-robin over the partitions, `per` at a time, each group followed
    by a commit marker, at about `rate` records per second; returns the log end of each
    partition (markers included)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    await client.force_metadata_update()
    ends: dict[int, int] = {}
    try:
        groups = [records[i : i + per] for i in range(0, len(records), per)]
        started = time.monotonic()
        for n, group in enumerate(groups):
            ahead = started + n * per / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            p = n % partitions
            leader = client.cluster.leader_for_partition(TopicPartition(topic, p))
            for payload in (
                _batch(BatchBuilder, [(r.key, r.value) for r in group]),
                _batch(_ControlBatch, [COMMIT_MARKER]),
            ):
                answer = await client.send(
                    leader, ProduceRequest(None, -1, 30_000, [(topic, [(p, payload)])])
                )
                ((_, parts),) = answer.topics
                ((_, error, offset, *_),) = parts
                if error:
                    raise RuntimeError(f"produce to {topic}[{p}] failed: error code {error}")
            ends[p] = offset + 1
    finally:
        await client.close()
    return ends


def _tree_env(tree: Path | None) -> tuple[Path, dict[str, str]]:
    if tree is None:
        return REPO, {}
    link = tree / "worker" / "sql"
    if not link.exists():
        link.symlink_to(tree / "sql", target_is_directory=True)
    return tree, {"PYTHONPATH": str(tree)}


async def run_worker(
    stack: Stack,
    label: str,
    tree: Path | None,
    workload: list[data.Record],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One worker run on fresh topics, fed while it runs; what it stored and how often it
    read a partition again."""
    topics = {k: f"bench.{stack.run_id}.{label}.{k}" for k in ("proctoring", "interview", "dlq")}
    stack.create_topics(
        [(topics["proctoring"], args.partitions), (topics["interview"], 1), (topics["dlq"], 1)]
    )
    url = await stack.fresh_database(label, migrate=False)
    cwd, extra = _tree_env(tree)
    log_path = stack.workdir / f"{label}.log"
    env = {
        **os.environ,
        **extra,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "DATABASE_URL": url,
        "WORKER_GROUP_ID": f"bench-{label}-{uuid.uuid4().hex[:8]}",
        "WORKER_PROCTORING_TOPIC": topics["proctoring"],
        "WORKER_INTERVIEW_TOPIC": topics["interview"],
        "WORKER_DLQ_TOPIC": topics["dlq"],
        "WORKER_LOG_LEVEL": "INFO",
        "WORKER_METRICS_PORT": "0",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once, waited on by polling)
            [sys.executable, "-m", "worker", "run"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            await _wait_assigned(log_path, proc)
            started = time.monotonic()
            ends = await produce_transactions(
                stack.bootstrap_servers,
                topics["proctoring"],
                args.partitions,
                workload,
                args.per,
                args.rate,
            )
            stored = await _wait_stored(url, len(workload), proc, deadline_s=600)
            elapsed = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    conn = await asyncpg.connect(url)
    try:
        offsets = await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets")
    finally:
        await conn.close()
    text = log_path.read_text("utf-8", "replace")
    rereads = sum(text.count(line) for line in REREAD_LINES)
    return {
        "tree": str(tree or REPO),
        "rows": stored,
        "log_end_sum": sum(ends.values()),
        "stored_offsets_sum": int(offsets),
        "rereads": rereads,
        "rereads_per_100k": round(rereads * 100_000 / len(workload), 1),
        "seconds_to_store_all": round(elapsed, 1),
    }


async def _wait_assigned(
    log_path: Path, proc: subprocess.Popen[bytes], deadline_s: float = 60
) -> None:
    """Until the worker has positioned its partitions (its log says so)."""
    deadline = time.monotonic() + deadline_s
    while "partitions positioned" not in await asyncio.to_thread(log_path.read_text, "utf-8"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the worker did not start consuming")
        await asyncio.sleep(0.1)


async def _wait_stored(
    url: str, records: int, proc: subprocess.Popen[bytes], deadline_s: float
) -> int:
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {proc.returncode}")
            with_table = await conn.fetchval("SELECT to_regclass('proctoring_events') IS NOT NULL")
            rows = (
                await conn.fetchval("SELECT count(*) FROM proctoring_events") if with_table else 0
            )
            if rows >= records or time.monotonic() > deadline:
                await asyncio.sleep(1.0)  # the last offsets, any late re-read line
                return int(await conn.fetchval("SELECT count(*) FROM proctoring_events"))
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    stack = Stack(uuid.uuid4().hex[:8])
    stack.start()
    try:
        spec = data.proctoring_spec(args.records / 200_000)
        workload = data.proctoring_workload(spec)[: args.records]
        result: dict[str, Any] = {
            "records": len(workload),
            "per_transaction": args.per,
            "partitions": args.partitions,
            "runs": [],
        }
        trees: list[Path | None] = [None]
        if args.baseline_tree:
            trees.insert(0, args.baseline_tree)
        for round_ in range(args.rounds):
            for i, tree in enumerate(trees):
                run = await run_worker(stack, f"r{round_}t{i}", tree, workload, args)
                result["runs"].append(run)
                print(json.dumps(run), flush=True)
        return result
    finally:
        stack.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-transaction", dest="per", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rate", type=float, default=5000.0, help="records/s produced")
    parser.add_argument("--baseline-tree", type=lambda p: Path(p).resolve(), default=None)
    args = parser.parse_args()
    result = asyncio.run(main(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    cli()
