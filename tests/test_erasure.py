"""Erasure end to end (contract §7, issue 19's acceptance): a real broker, a running worker, the
operator's commands as processes.

Three candidates have events in both topics (every seed sample of both documents, once per
candidate), and a dead letter of the erased one waits in the dead-letter topic (a record an
earlier release refused). Under the running worker: `worker forget --execute` of one, then
`worker offsets reset --to-earliest --execute` (a replay of everything), then
`worker dlq replay --execute` (the dead letter comes back as a new record). No table may hold a
row naming the erased candidate, every other row must equal the reference model's, the ledger
must hold no form of the identifier, the worker must count what it kept out, and an event of
the erased candidate produced after the erasure must be stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sys
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from support.e2e import (
    REPO_ROOT,
    expected_offsets,
    running_worker,
    settings_for,
    wait_for,
    wait_for_offsets,
    worker_env,
)
from support.infra import Topics
from support.reference_model import Model, database_tables, diff_tables
from support.storage import decode_ok

from worker.config import Settings
from worker.decode import interview_decoder, proctoring_decoder
from worker.dev.seeds import interview_samples, proctoring_samples
from worker.dlq import SCHEMA_VIOLATION, DeadLetter, DecodeFailure, dead_letter_headers
from worker.migrate import migrate_url
from worker.tools.forget import count_rows

pytestmark = pytest.mark.integration

ERASED = "cand-erased-7f3a"
KEPT = ("cand-kept-1", "cand-kept-2")


def bodies_of(candidate: str) -> list[tuple[str, bytes, bytes]]:
    """(topic kind, key, value) of every seed sample, as events of `candidate`."""
    out = [
        ("proctoring", f"exam-1:{candidate}".encode(), body)
        for body in proctoring_samples("exam-1", candidate)
    ]
    for body in interview_samples():
        doc = json.loads(body)
        data = doc["data"]
        data["candidate_id"] = candidate
        for field in ("report_id", "interview_id", "micro1_job_application_id"):
            if field in data:
                data[field] = f"{data[field]}-{candidate}"
        out.append(("interview", candidate.encode(), json.dumps(doc).encode()))
    return out


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        cwd=REPO_ROOT,
        env=worker_env(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class _Record:
    """What dead_letter_headers reads of a consumed record."""

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int) -> None:
        self.topic, self.partition, self.offset, self.timestamp = (
            topic,
            partition,
            offset,
            timestamp,
        )
        self.headers: tuple[Any, ...] = ()


async def test_forget_survives_a_replay_and_a_dead_letter_replay(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    s = settings_for(kafka_bootstrap, database_url, topics)
    await migrate_url(database_url)
    topic_of = {"proctoring": topics.proctoring, "interview": topics.interview}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    model = Model()
    decoders = {topics.proctoring: proctoring_decoder, topics.interview: interview_decoder}
    try:

        async def produce(kind: str, key: bytes, value: bytes) -> Any:
            md = await (await producer.send(topic_of[kind], value, key=key))
            model.apply(decode_ok(decoders[md.topic], value), md.topic, md.partition, md.offset)
            return md

        sent = [await produce(*b) for c in (*KEPT, ERASED) for b in bodies_of(c)]
        # A record of the erased candidate that an earlier release dead-lettered.
        refused = sent[-1]
        value = bodies_of(ERASED)[-1][2]
        letter = DeadLetter(
            _Record(refused.topic, refused.partition, refused.offset, refused.timestamp),
            DecodeFailure(SCHEMA_VIOLATION, "refused by an older release"),
        )
        await producer.send_and_wait(
            topics.dlq,
            value,
            key=ERASED.encode(),
            headers=dead_letter_headers(letter, topics.group_id, dt.datetime.now(dt.UTC)),
        )
        async with running_worker(s) as worker:
            ends = expected_offsets(sent)
            await wait_for_offsets(database_url, topics.group_id, ends)
            conn = await asyncpg.connect(database_url)
            try:
                assert sum((await count_rows(conn, ERASED)).values()) > 0

                code, out, err = await cli(s, "forget", "--candidate", ERASED)
                assert code == 0 and "dry run" in out, (out, err)
                code, out, err = await cli(s, "forget", "--candidate", ERASED, "--execute")
                assert code == 0, (out, err)
                assert not any((await count_rows(conn, ERASED)).values())
                ledger = await conn.fetchrow("SELECT *, log_ends::text AS ends FROM erasures")
                for column, stored in ledger.items():
                    text = stored.hex() if isinstance(stored, bytes) else str(stored)
                    assert ERASED not in text and ERASED.encode().hex() not in text, column
                log_ends = {
                    (t, int(p)): end
                    for t, ps in json.loads(ledger["ends"]).items()
                    for p, end in ps.items()
                }
                model.forget(ERASED, log_ends)

                code, out, err = await cli(s, "offsets", "reset", "--to-earliest", "--execute")
                assert code == 0, (out, err)
                erased_events = len(bodies_of(ERASED))
                await wait_for(
                    lambda: _true(worker.stats.get("erased", 0) >= erased_events),
                    60,
                    f"{erased_events} records kept out by the ledger",
                )
                await wait_for_offsets(database_url, topics.group_id, ends)

                code, out, err = await cli(s, "dlq", "inspect", "--candidate", ERASED, "--json")
                assert code == 0 and len(out.splitlines()) == 1, (out, err)
                code, out, err = await cli(
                    s, "dlq", "replay", "--candidate", ERASED, "--execute", "--idle", "2"
                )
                assert code == 0, (out, err)
                await wait_for(
                    lambda: _true(worker.stats.get("erased", 0) >= erased_events + 1),
                    60,
                    "the replayed dead letter kept out",
                )
                assert not any((await count_rows(conn, ERASED)).values())

                # Produced after the erasure: a new record, stored as usual.
                later = await produce(
                    "proctoring",
                    b"exam-2:" + ERASED.encode(),
                    json.dumps(
                        {
                            "examId": "exam-2",
                            "candidateId": ERASED,
                            "type": "STARTED",
                            "createdAt": "2026-01-01T00:00:00Z",
                        }
                    ).encode(),
                )
                await wait_for_offsets(database_url, topics.group_id, expected_offsets([later]))
                await wait_for(
                    lambda: _rows(conn, ERASED, "proctoring_events", 1), 30, "the new event"
                )
                diff = diff_tables(model.tables(), await database_tables(conn))
                assert not diff, f"tables differ from the reference model:\n{diff}"
                metric = worker.metrics.erased.labels(topics.proctoring)._value.get()  # type: ignore[attr-defined]
                assert metric >= 1
            finally:
                await conn.close()
    finally:
        await producer.stop()


async def _true(value: bool) -> bool:
    return value


async def _rows(conn: asyncpg.Connection, candidate: str, table: str, n: int) -> bool:
    return (await count_rows(conn, candidate))[table] == n


async def test_forget_refuses_when_a_consumed_topic_is_missing(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    """Another WORKER_INTERVIEW_TOPIC in the operator's shell: the erasure would record no end
    for the real topic, and no replay of it would be screened. It must refuse, change nothing,
    and say which topic in one line."""
    await migrate_url(database_url)
    s = dataclasses.replace(
        settings_for(kafka_bootstrap, database_url, topics), interview_topic="no-such-topic-25"
    )
    code, out, err = await cli(s, "forget", "--candidate", ERASED, "--execute")
    assert code == 1, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "no-such-topic-25" in err, err
    conn = await asyncpg.connect(database_url)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM erasures")
    finally:
        await conn.close()
