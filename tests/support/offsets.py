"""Helpers for the `worker offsets` tests: the CLI as the production process, records produced
to chosen partitions at chosen times, and the raw `consumer_offsets` rows.

The CLI runs as a subprocess (`python -m worker offsets ...`): in-process it would call
asyncio.run inside the tests' loop and reconfigure the test process's logging.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from support.e2e import REPO_ROOT, worker_env
from worker.config import Settings


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def __str__(self) -> str:  # for assertion messages
        return f"exit {self.code}\n--- stdout\n{self.out}--- stderr\n{self.err}"


async def run_offsets_cli(
    settings: Settings,
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
) -> CliResult:
    """`worker offsets *args` with the environment that configures `settings`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "offsets",
        *args,
        cwd=REPO_ROOT,
        env=worker_env(settings, extra_env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        command = " ".join(args)
        raise AssertionError(f"worker offsets {command} did not finish in {timeout}s") from None
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def produce_to(
    bootstrap: str,
    topic: str,
    records: Mapping[int, Sequence[tuple[bytes | None, bytes, int | None]]],
) -> None:
    """Send `{partition: [(key, value, timestamp_ms or None), ...]}`, each partition's records
    in order and, as far as the producer batches them, in one batch per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        futures = []
        for partition, items in records.items():
            for key, value, ts in items:
                futures.append(
                    await producer.send(
                        topic, value=value, key=key, partition=partition, timestamp_ms=ts
                    )
                )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def offset_rows(database_url: str, group_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The group's consumer_offsets rows, updated_at included (to see which were written)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset, updated_at FROM consumer_offsets "
            "WHERE group_id = $1",
            group_id,
        )
    finally:
        await conn.close()
    return {(r["topic"], r["partition"]): dict(r) for r in rows}


async def execute(database_url: str, sql: str, *args: Any) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.execute(sql, *args))
    finally:
        await conn.close()
