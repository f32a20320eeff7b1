"""Helpers for the end-to-end tests: settings, a worker in-process or as a subprocess, polling,
and database snapshots.

Test modules import from here (`from support.e2e import running_worker`), the same way
conftest.py imports `support.infra`: pytest puts tests/ (it has no __init__.py) on sys.path.

Waiting is always on a condition, never on a fixed sleep: the broker's group joins take
seconds and vary, so every wait has a generous deadline and a message saying what it waited
for and what it last saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from support.infra import Topics
from worker.config import Settings
from worker.consumer import Worker
from worker.migrate import CONTRACT_TABLES

REPO_ROOT = Path(__file__).resolve().parents[2]

# Columns whose value depends on when (not what) the worker wrote, and the interview rows'
# ages, which come from the records' Kafka timestamps: a reference stored without Kafka has
# none (tests/test_model_properties.py compares them with the reference model's).
VOLATILE_COLUMNS: frozenset[str] = frozenset({"updated_at", "ingested_at", "last_event_at"})
# Where a proctoring event came from: differs between two runs over the same data only if the
# data was produced twice, and is not part of the event's content.
KAFKA_COLUMNS: frozenset[str] = frozenset({"kafka_topic", "kafka_partition", "kafka_offset"})

Snapshot = dict[str, list[tuple[Any, ...]]]

# The headers docs/contract.md §6 adds to every dead letter, written out here (not imported from the
# worker) so that the tests hold the worker to the contract.
DLQ_HEADERS: tuple[str, ...] = (
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.original.timestamp",
    "dlq.reason",
    "dlq.error",
    "dlq.failed_at",
    "dlq.consumer_group",
    "dlq.worker_version",
)
# What a dead letter of `worker run` carries: that context, then the signed origin (§6, §7).
RUN_DLQ_HEADERS: tuple[str, ...] = (*DLQ_HEADERS, "dlq.origin")

# Tasks of the workers started by running_worker(), so that wait_for() fails at once when one
# of them dies instead of polling a dead worker until its deadline.
_TASKS: dict[int, asyncio.Task[None]] = {}


def settings_for(
    kafka_bootstrap: str, database_url: str, topics: Topics, **overrides: Any
) -> Settings:
    """Settings for a worker on `topics` (and its group id), tuned for fast tests."""
    base = dataclasses.replace(
        Settings(),
        bootstrap_servers=kafka_bootstrap,
        database_url=database_url,
        group_id=topics.group_id,
        proctoring_topic=topics.proctoring,
        interview_topic=topics.interview,
        dlq_topic=topics.dlq,
        log_format="console",
        retry_initial_s=0.05,
        retry_max_s=1.0,
        fetch_wait_ms=50,
        shutdown_timeout_s=15.0,
    )
    return dataclasses.replace(base, **overrides)


# -- in-process worker ------------------------------------------------------------------------


class WorkerFailed(AssertionError):
    """A worker task ended with an exception while a test was waiting on it."""


def task_of(worker: Worker) -> asyncio.Task[None]:
    """The task running `worker` (started by running_worker)."""
    return _TASKS[id(worker)]


def _check_workers_alive() -> None:
    for task in list(_TASKS.values()):
        if task.done() and not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            raise WorkerFailed(f"worker task {task.get_name()} died: {exc!r}") from exc


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings,
    ready_timeout: float = 60.0,
    stop_timeout: float = 45.0,
) -> AsyncIterator[Worker]:
    """Run `Worker(settings)` as a task until the block exits; re-raise the task's exception.

    Yields once the worker is subscribed (`worker.ready`); partitions are assigned later, by
    the group join, so callers wait on stored rows, not on readiness.
    """
    worker = Worker(settings)
    task = asyncio.create_task(worker.run(), name=f"worker[{settings.group_id}]")
    _TASKS[id(worker)] = task
    try:
        ready = asyncio.create_task(worker.ready.wait())
        try:
            await asyncio.wait({task, ready}, timeout=ready_timeout, return_when="FIRST_COMPLETED")
        finally:
            ready.cancel()
        if task.done():
            task.result()  # raises the start-up failure
            raise AssertionError("worker returned before it was ready")
        if not worker.ready.is_set():
            raise TimeoutError(f"worker not ready after {ready_timeout}s")
        yield worker
    finally:
        _TASKS.pop(id(worker), None)
        worker.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), stop_timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise AssertionError(f"worker did not stop within {stop_timeout}s") from None
        # A clean stop returns None; an exception of the task propagates from here.


# -- worker as a subprocess -------------------------------------------------------------------


class WorkerProcess(subprocess.Popen[bytes]):
    """`python -m worker run` with its log file."""

    log_path: Path

    def log_tail(self, limit: int = 6000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return text[-limit:]

    def terminate_and_wait(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill_and_wait(self, timeout: float = 30.0) -> int:
        self.kill()
        return self.wait(timeout)


def worker_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment that makes `Settings.from_env()` return `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WORKER_", "KAFKA_")) and k != "DATABASE_URL"
    }
    env.update(settings.to_env())
    # JSON lines, whatever the settings say, so that tests can parse the log. The HTTP
    # endpoint is written out too (to_env gives 0 when built in code): from the environment it
    # would default to a fixed port, and tests run several workers at once.
    env.update({"WORKER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def worker_process(
    settings: Settings,
    log_path: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> WorkerProcess:
    """Start `python -m worker run` for `settings`; stdout and stderr go to `log_path`
    (a new file in the temp directory if None), appended, so restarts share one log."""
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="worker-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with log_path.open("ab") as log:
        proc = WorkerProcess(
            [sys.executable, "-m", "worker", "run"],
            cwd=REPO_ROOT,
            env=worker_env(settings, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.log_path = log_path
    return proc


# -- waiting ----------------------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], Awaitable[Any]],
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> Any:
    """Poll `await predicate()` until it returns a truthy value, and return that value.

    Fails with `what` and the last value seen after `timeout` seconds, or at once if a worker
    started by running_worker() has died.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        _check_workers_alive()
        try:
            last = await predicate()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            last = exc  # the database may be restarting: keep polling
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` from the worker's HTTP endpoint on 127.0.0.1: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# -- database ---------------------------------------------------------------------------------


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def fetchval(database_url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def count_rows(database_url: str, table: str) -> int:
    if table not in CONTRACT_TABLES:
        raise ValueError(f"not a contract table: {table}")
    conn = await asyncpg.connect(database_url)
    try:
        # A database the worker has not migrated yet has no rows.
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            return 0
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def committed_offsets(database_url: str, group_id: str) -> dict[tuple[str, int], int]:
    """consumer_offsets of `group_id` as {(topic, partition): next_offset}; {} before the
    worker has created the table."""
    conn = await asyncpg.connect(database_url)
    try:
        if await conn.fetchval("SELECT to_regclass('consumer_offsets')") is None:
            return {}
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
            group_id,
        )
    finally:
        await conn.close()
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def wait_for_stats(
    workers: Worker | list[Worker],
    timeout: float = 15.0,
    **expected: int,
) -> None:
    """Wait until the summed `worker.stats` reach `expected` (e.g. consumed=12).

    A worker updates its stats just after its transaction commits, so a test that saw the
    commit in the database may look before the worker has counted it.
    """
    group = workers if isinstance(workers, list) else [workers]

    def totals() -> dict[str, int]:
        return {k: sum(w.stats[k] for w in group) for k in expected}

    async def reached() -> bool:
        return all(totals()[k] >= v for k, v in expected.items())

    try:
        await wait_for(reached, timeout, f"worker stats {expected}", interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stats: {[w.stats for w in group]}") from None
    assert totals() == expected, [w.stats for w in group]


def expected_offsets(metadata: Any) -> dict[tuple[str, int], int]:
    """{(topic, partition): last produced offset + 1} from produce() delivery metadata."""
    result: dict[tuple[str, int], int] = {}
    for md in metadata:
        key = (md.topic, md.partition)
        result[key] = max(result.get(key, 0), md.offset + 1)
    return result


async def wait_for_offsets(
    database_url: str,
    group_id: str,
    expected: Mapping[tuple[str, int], int],
    timeout: float = 90.0,
) -> None:
    """Wait until the group's committed offsets reach `expected` for every partition."""

    async def reached() -> bool:
        stored = await committed_offsets(database_url, group_id)
        return all(stored.get(tp, 0) >= n for tp, n in expected.items())

    try:
        await wait_for(reached, timeout, f"offsets {dict(expected)} of group {group_id}")
    except AssertionError as exc:
        stored = await committed_offsets(database_url, group_id)
        raise AssertionError(f"{exc}\nstored offsets: {stored}") from None


def _sort_key(row: tuple[Any, ...]) -> tuple[tuple[bool, str, str], ...]:
    return tuple((v is None, type(v).__name__, repr(v)) for v in row)


async def table_snapshot(database_url: str, *, offsets: bool = True) -> Snapshot:
    """{table: sorted rows} for the tables of docs/contract.md §4, without volatile columns.

    proctoring_events leaves out its kafka_* columns; consumer_offsets leaves out group_id
    (so that two groups over the same topics compare equal) and is left out entirely with
    `offsets=False`.
    """
    conn = await asyncpg.connect(database_url)
    try:
        snapshot: Snapshot = {}
        for table in CONTRACT_TABLES:
            if table == "consumer_offsets" and not offsets:
                continue
            excluded = set(VOLATILE_COLUMNS)
            if table == "proctoring_events":
                excluded |= KAFKA_COLUMNS
            if table == "consumer_offsets":
                excluded.add("group_id")
            cols = [
                r["column_name"]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                    table,
                )
                if r["column_name"] not in excluded
            ]
            if not cols:
                snapshot[table] = []
                continue
            column_list = ", ".join(f'"{c}"' for c in cols)
            rows = await conn.fetch(f"SELECT {column_list} FROM {table}")
            snapshot[table] = sorted((tuple(r) for r in rows), key=_sort_key)
        return snapshot
    finally:
        await conn.close()


def snapshot_diff(left: Snapshot, right: Snapshot, limit: int = 5) -> str:
    """A short description of how two snapshots differ, for assertion messages."""
    lines: list[str] = []
    for table in sorted(set(left) | set(right)):
        a, b = left.get(table, []), right.get(table, [])
        if a == b:
            continue
        only_a = [r for r in a if r not in b][:limit]
        only_b = [r for r in b if r not in a][:limit]
        lines.append(f"{table}: {len(a)} vs {len(b)} rows")
        lines.extend(f"  only left:  {r!r}" for r in only_a)
        lines.extend(f"  only right: {r!r}" for r in only_b)
    return "\n".join(lines) or "identical"


def stored_text(value: Any) -> str:
    """A stored value as text, bytes as hex (a repr would show their printable bytes): what a
    search for an identifier in clear looks through."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return " ".join(stored_text(v) for v in value)
    return repr(value)
