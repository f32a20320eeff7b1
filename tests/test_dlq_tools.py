"""`worker dlq inspect | replay` against a real broker, a real PostgreSQL and the worker in-process.

The acceptance story: the database rejects some records (a CHECK constraint added for the test),
the worker dead-letters them as `rejected_by_database`; the constraint is dropped (the cause is
removed), the dead letters are replayed and the rows are stored. Then the loop guard: with the
constraint back, a replay fails again and returns to the DLQ with `dlq.replay.count=1`, and a
further replay sends nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiokafka.structs import RecordMetadata
from support.infra import Topics, consume_all, produce

from worker.config import Settings
from worker.consumer import Worker
from worker.migrate import migrate_url
from worker.tools.dlq.command import add_dlq_commands, run_dlq_command
from worker.tools.dlq.read import DeadLetterView, read_dead_letters
from worker.tools.dlq.replay import replay_dead_letters

pytestmark = pytest.mark.integration

WAIT_S = 60.0
IDLE_S = 1.0  # the DLQ is read to its end after this long without records
BLOCK = "ALTER TABLE proctoring_events ADD CONSTRAINT dlq_test_block CHECK (exam_id <> 'blocked')"


def _settings(kafka_bootstrap: str, database_url: str, topics: Topics) -> Settings:
    return dataclasses.replace(
        Settings(),
        bootstrap_servers=kafka_bootstrap,
        database_url=database_url,
        group_id=topics.group_id,
        proctoring_topic=topics.proctoring,
        interview_topic=topics.interview,
        dlq_topic=topics.dlq,
        fetch_wait_ms=50,
    )


@asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Worker]:
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        ready = asyncio.create_task(worker.ready.wait())
        done, _ = await asyncio.wait(
            {task, ready}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # the worker died during start: raise its error
        if ready not in done:
            ready.cancel()
            raise AssertionError("worker not ready")
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, WAIT_S)


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


def _stat_at_least(worker: Worker, name: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return worker.stats[name] >= n

    return check


async def _dead_letters(settings: Settings, **filters: Any) -> list[DeadLetterView]:
    return await read_dead_letters(settings, timeout_s=WAIT_S, idle_s=IDLE_S, **filters)


async def _count_rows(database_url: str, exam_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM proctoring_events WHERE exam_id = $1", exam_id
            )
        )
    finally:
        await conn.close()


async def _execute(database_url: str, sql: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _proctoring(exam: str, candidate: str, minute: int = 0) -> bytes:
    return json.dumps(
        {
            "examId": exam,
            "candidateId": candidate,
            "type": "STARTED",
            "createdAt": f"2024-05-01T10:{minute:02d}:00Z",
        }
    ).encode()


async def _cli(
    capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str
) -> tuple[int, str]:
    """Run `worker dlq ...` as the CLI would (its own event loop, in a thread)."""
    parser = argparse.ArgumentParser(prog="worker")
    add_dlq_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dlq", *argv, "--idle", str(IDLE_S)])
    capsys.readouterr()
    code = await asyncio.to_thread(run_dlq_command, args, settings)
    return code, capsys.readouterr().out


async def test_replay_after_the_cause_is_removed_and_no_replay_loop(
    kafka_bootstrap: str,
    database_url: str,
    topics: Topics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _settings(kafka_bootstrap, database_url, topics)
    await migrate_url(database_url)
    await _execute(database_url, BLOCK)
    blocked = [
        (f"blocked:c{i}".encode(), _proctoring("blocked", f"c{i}"), [("trace-id", b"t%d" % i)])
        for i in range(3)
    ]
    allowed = [(b"ok:c1", _proctoring("ok", "c1"), None), (b"ok:c2", _proctoring("ok", "c2"), None)]

    async with running_worker(settings) as worker:
        sent = await produce(kafka_bootstrap, topics.proctoring, [*blocked, *allowed])
        await eventually(_stat_at_least(worker, "consumed", 5), "the first 5 records")
        assert worker.stats["dead_lettered"] == 3
        assert await _count_rows(database_url, "ok") == 2
        assert await _count_rows(database_url, "blocked") == 0

        first = await _dead_letters(settings)
        assert len(first) == 3
        assert {v.reason for v in first} == {"rejected_by_database"}
        assert all("dlq_test_block" in (v.error or "") for v in first)
        assert {(v.original_partition, v.original_offset) for v in first} == {
            (m.partition, m.offset) for m in sent[:3]
        }
        assert {v.key for v in first} == {k for k, _, _ in blocked}
        assert all(v.replay_count == 0 and v.replay_of is None for v in first)

        # Remove the cause, replay: the rows arrive.
        await _execute(database_url, "ALTER TABLE proctoring_events DROP CONSTRAINT dlq_test_block")
        result = await replay_dead_letters(settings, execute=True, idle_s=IDLE_S)
        assert len(result.replayed) == 3 and not result.failed
        assert result.plan.skipped == 0
        assert result.by_topic == {topics.proctoring: 3}
        await eventually(
            lambda: _has_rows(database_url, "blocked", 3), "the replayed rows in proctoring_events"
        )
        assert worker.stats["dead_lettered"] == 3

        # What went back: the original key, value, partition and headers plus the replay headers.
        on_topic = await consume_all(kafka_bootstrap, topics.proctoring, expected=8)
        replays = {r.key: r for r in on_topic if r.offset not in _offsets_of(sent, r.partition)}
        assert len(replays) == 3
        by_key = {v.key: v for v in first}
        for key, record in replays.items():
            original = by_key[key]
            assert record.value == original.value
            assert record.partition == original.original_partition
            headers = list(record.headers)
            assert headers[0][0] == "trace-id"
            assert dict(headers)["dlq.replay.count"] == b"1"
            assert dict(headers)["dlq.replay.of"] == original.ref.encode()
            assert not [k for k, _ in headers if k.startswith("dlq.original")]

        # The cause comes back (NOT VALID: the stored rows stay); a replay fails again and the
        # dead letters return carrying dlq.replay.count=1 and the original headers.
        await _execute(database_url, BLOCK + " NOT VALID")
        again = await replay_dead_letters(settings, execute=True, idle_s=IDLE_S)
        assert len(again.replayed) == 3
        await eventually(_stat_at_least(worker, "dead_lettered", 6), "the second dead letters")
        everything = await _dead_letters(settings)
        assert len(everything) == 6
        second = [v for v in everything if v.replay_count == 1]
        assert len(second) == 3
        assert {v.replay_of for v in second} == {v.ref for v in first}
        assert {v.headers["trace-id"] for v in second} == {b"t0", b"t1", b"t2"}
        assert {v.reason for v in second} == {"rejected_by_database"}

        # A further replay sends nothing: the second dead letters hit the loop guard and the
        # first ones are known to have been replayed already.
        consumed = worker.stats["consumed"]
        code, out = await _cli(capsys, settings, "replay", "--execute")
        assert code == 0
        assert "replayed 0, skipped 3 (loop guard: dlq.replay.count >= 1)" in out
        assert "skipped 3 (already replayed" in out
        await asyncio.sleep(3)
        assert worker.stats["consumed"] == consumed
        assert len(await _dead_letters(settings)) == 6

        # A higher limit would replay the second dead letters (dry run: nothing is sent).
        plan = await replay_dead_letters(settings, max_replays=2, idle_s=IDLE_S)
        assert not plan.executed and not plan.replayed
        assert {v.ref for v in plan.plan.to_replay} == {v.ref for v in second}
        assert len(plan.plan.skipped_already_replayed) == 3
        assert not plan.plan.skipped_loop_guard
        code, out = await _cli(capsys, settings, "replay", "--max-replays", "2")
        assert code == 0
        assert "DRY RUN" in out and "would replay 3, skip 0" in out
        assert len(await _dead_letters(settings)) == 6


def _offsets_of(sent: list[RecordMetadata], partition: int) -> set[int]:
    return {m.offset for m in sent if m.partition == partition}


async def _has_rows(database_url: str, exam_id: str, n: int) -> bool:
    return await _count_rows(database_url, exam_id) >= n


async def _dead_letter_mix(
    kafka_bootstrap: str, settings: Settings, topics: Topics, worker: Worker
) -> tuple[list[RecordMetadata], list[RecordMetadata]]:
    """Four proctoring dead letters (one key: one partition, consecutive offsets) and two
    interview ones; returns the produce metadata of each topic."""
    proctoring = [
        (b"k", b"{not json"),
        (b"k", b""),
        (b"k", json.dumps({"examId": "e", "candidateId": "c", "type": "NOPE"}).encode()),
        (b"k", json.dumps({"candidateId": "c", "type": "STARTED", "createdAt": "x"}).encode()),
    ]
    interview = [
        (b"c", json.dumps({"event": "nope.happened", "data": {}}).encode()),
        (b"c", json.dumps({"event": "applicant.created", "data": {}}).encode()),
    ]
    sent_p = await produce(kafka_bootstrap, topics.proctoring, proctoring)
    sent_i = await produce(kafka_bootstrap, topics.interview, interview)
    await eventually(_stat_at_least(worker, "dead_lettered", 6), "six dead letters")
    return sent_p, sent_i


async def test_inspect_filters_and_output(
    kafka_bootstrap: str,
    database_url: str,
    topics: Topics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _settings(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        sent_p, sent_i = await _dead_letter_mix(kafka_bootstrap, settings, topics, worker)

    everything = await _dead_letters(settings)
    assert len(everything) == 6
    # Idleness counts from the first fetch answer, not from the start of the read.
    assert len(await read_dead_letters(settings, timeout_s=WAIT_S, idle_s=0.05)) == 6
    reasons = {(v.original_topic, v.original_offset): v.reason for v in everything}
    p, offsets = sent_p[0].partition, [m.offset for m in sent_p]
    assert {m.partition for m in sent_p} == {p}
    assert [reasons[(topics.proctoring, o)] for o in offsets] == [
        "invalid_json",
        "empty_payload",
        "unknown_event_type",
        "schema_violation",
    ]
    assert [reasons[(topics.interview, m.offset)] for m in sent_i] == [
        "unknown_event_type",
        "schema_violation",
    ]

    unknown = await _dead_letters(settings, reason={"unknown_event_type"})
    assert {v.original_topic for v in unknown} == {topics.proctoring, topics.interview}
    two = await _dead_letters(settings, reason={"invalid_json", "empty_payload"})
    assert {v.original_offset for v in two} == set(offsets[:2])
    interview = await _dead_letters(settings, topic=topics.interview)
    assert {v.original_offset for v in interview} == {m.offset for m in sent_i}
    assert {v.original_topic for v in interview} == {topics.interview}
    middle = await _dead_letters(
        settings, topic=topics.proctoring, offsets=(offsets[1], offsets[2]), partition=p
    )
    assert [v.original_offset for v in middle] == offsets[1:3]
    assert [v.reason for v in middle] == ["empty_payload", "unknown_event_type"]
    assert await _dead_letters(settings, topic=topics.proctoring, partition=(p + 1) % 4) == []
    assert len(await _dead_letters(settings, limit=2)) == 2

    # The table: one row per dead letter with the reason and the original coordinates.
    code, out = await _cli(
        capsys, settings, "inspect", "--topic", topics.proctoring, "--reason", "invalid_json"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["DLQ", "POS", "REASON"]
    assert len(lines) == 3  # header, one row, summary
    assert "invalid_json" in lines[1]
    assert f"{topics.proctoring}[{p}]@{offsets[0]}" in lines[1]
    assert "b'{not json'" in lines[1]
    assert "1 dead letters shown (6 read" in lines[2]

    # JSON lines, filtered by an offset range.
    code, out = await _cli(
        capsys,
        settings,
        "inspect",
        "--json",
        "--topic",
        topics.proctoring,
        "--from-offset",
        str(offsets[2]),
        "--to-offset",
        str(offsets[3]),
    )
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(d["reason"], d["original_offset"]) for d in docs] == [
        ("unknown_event_type", offsets[2]),
        ("schema_violation", offsets[3]),
    ]
    assert all(d["original_topic"] == topics.proctoring for d in docs)
    assert all(d["original_partition"] == p for d in docs)
    assert docs[0]["value"] == '{"examId": "e", "candidateId": "c", "type": "NOPE"}'
    assert docs[0]["headers"]["dlq.consumer_group"] == topics.group_id

    code, out = await _cli(capsys, settings, "inspect", "--json", "--limit", "1")
    assert code == 0
    assert [json.loads(line)["dlq_offset"] for line in out.splitlines()] == [0]

    code, _ = await _cli(capsys, settings, "inspect", "--from-offset", "5", "--to-offset", "2")
    assert code == 1


async def test_replay_dry_run_publishes_nothing(
    kafka_bootstrap: str,
    database_url: str,
    topics: Topics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _settings(kafka_bootstrap, database_url, topics)
    async with running_worker(settings) as worker:
        sent_p, sent_i = await _dead_letter_mix(kafka_bootstrap, settings, topics, worker)
        consumed = worker.stats["consumed"]

        code, out = await _cli(capsys, settings, "replay", "--reason", "unknown_event_type")
        assert code == 0
        assert "DRY RUN" in out
        assert "would replay 2, skip 0" in out
        assert f"{topics.interview}=1" in out and f"{topics.proctoring}=1" in out
        assert "unknown_event_type" in out  # the first rows

        await asyncio.sleep(3)
        assert worker.stats["consumed"] == consumed

    assert len(await _dead_letters(settings)) == 6
    on_p = await consume_all(
        kafka_bootstrap, topics.proctoring, expected=len(sent_p) + 1, timeout=5
    )
    on_i = await consume_all(kafka_bootstrap, topics.interview, expected=len(sent_i) + 1, timeout=5)
    assert (len(on_p), len(on_i)) == (len(sent_p), len(sent_i))
