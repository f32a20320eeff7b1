"""End to end: one stream, two workers, two databases, the same tables, the model's tables.

One stream is produced once to real topics: the seed samples of both documents
(worker.dev.seeds) and generated interview, applicant, report and proctoring events from the
property tests' builders (varying names, emails, scores, timestamp forms, stale applicant
events, shared jobs and candidates across partitions, redelivered records). The events of one
application, one report's `interview_report.created` events and one proctoring session are
keyed so that they share a partition; everything else is sent without a key and lands on any
partition.

Two workers consume it at the same time, in two consumer groups, into two databases: one with
the default settings (two commit lanes, large batches), one with `max_batch_records=7` and one
lane, so their batches, lanes and transactions differ throughout. Half the stream is produced
before they start, the rest while they run. When both have committed every offset:

- every table (without the columns that say when a row was written) is identical in the two
  databases, consumer offsets included;
- every table equals `reference_model.Model` applied to each partition's records in offset
  order, including the Kafka coordinates of the first record of each proctoring event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from support import infra
from support.e2e import (
    expected_offsets,
    running_worker,
    settings_for,
    snapshot_diff,
    table_snapshot,
    wait_for_offsets,
)
from support.infra import Topics, produce
from support.reference_model import database_tables, diff_tables, model_tables
from support.storage import PROCTORING_TOPIC
from test_model_properties import ALL_KINDS, Ev, RandomChooser, build_events

from schemas.proctoring import ProctoringEvent
from worker.decode import interview_decoder, proctoring_decoder
from worker.dev.seeds import interview_samples, proctoring_samples
from worker.dlq import DecodeFailure

pytestmark = pytest.mark.integration

SEED = 20261201
GENERATED = 260
REDELIVERED = 20


def _key(ev: Ev) -> bytes | None:
    """The record key: one partition per affinity (application, report, session); none for
    the events the contract lets land anywhere."""
    return None if ev.affinity is None else ":".join(ev.affinity).encode()


def _seed_records() -> list[tuple[str, bytes | None, bytes]]:
    records: list[tuple[str, bytes | None, bytes]] = []
    for body in interview_samples():
        data = json.loads(body)["data"]
        if "micro1_job_application_id" in data:
            key = f"application:{data['micro1_job_application_id']}".encode()
        elif json.loads(body)["event"] == "interview_report.created":
            key = f"report:{data['report_id']}".encode()
        else:
            key = None
        records.append(("interview", key, body))
    for body in proctoring_samples("exam-demo", "cand-demo"):
        records.append(("proctoring", b"session:exam-demo:cand-demo", body))
    return records


def stream_records(seed: int = SEED) -> list[tuple[str, bytes | None, bytes]]:
    """(topic kind, key, value) in production order: seeds, generated events, redeliveries."""
    rnd = random.Random(seed)
    records = _seed_records()
    for ev in build_events(RandomChooser(rnd), ALL_KINDS, GENERATED):
        kind = "proctoring" if ev.topic == PROCTORING_TOPIC else "interview"
        records.append((kind, _key(ev), ev.body))
    for _ in range(REDELIVERED):
        # The same record again, later: same key, so the same partition when keyed.
        records.append(records[rnd.randrange(len(records))])
    return records


def _decode(kind: str, value: bytes) -> Any:
    event = (proctoring_decoder if kind == "proctoring" else interview_decoder).decode(value)
    assert not isinstance(event, DecodeFailure), f"{value[:200]!r}: {event}"
    return event


@pytest.fixture
async def second_database(pg_admin_url: str) -> AsyncIterator[str]:
    url = await infra.create_database(pg_admin_url)
    yield url
    await infra.drop_database(pg_admin_url, url)


async def _produce(
    kafka_bootstrap: str, topics: Topics, records: list[tuple[str, bytes | None, bytes]]
) -> list[tuple[str, bytes, Any]]:
    """Produce per topic in order; (kind, value, delivery metadata) of each record."""
    out: list[tuple[str, bytes, Any]] = []
    for kind, topic in (("interview", topics.interview), ("proctoring", topics.proctoring)):
        mine = [(key, value) for k, key, value in records if k == kind]
        if mine:
            metas = await produce(kafka_bootstrap, topic, mine)
            out += [(kind, value, md) for (_, value), md in zip(mine, metas, strict=True)]
    return out


async def _tables(url: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await database_tables(conn)
    finally:
        await conn.close()


@pytest.mark.timeout(420)
async def test_two_workers_in_two_groups_store_the_models_tables(
    kafka_bootstrap: str, database_url: str, second_database: str, topics: Topics
) -> None:
    records = stream_records()
    other = dataclasses.replace(topics, group_id=infra.unique_name("g_"))
    default = settings_for(kafka_bootstrap, database_url, topics, db_lanes=2)
    small = settings_for(
        kafka_bootstrap, second_database, other, max_batch_records=7, db_lanes=1, db_pool_size=2
    )

    # Half the stream before the workers start; the rest in slices once both have stored
    # the first half, so that the default worker's batches do not cover everything at once.
    half = len(records) // 2
    produced = await _produce(kafka_bootstrap, topics, records[:half])
    async with running_worker(default) as a, running_worker(small) as b:
        first = expected_offsets([md for _, _, md in produced])
        await asyncio.gather(
            wait_for_offsets(database_url, topics.group_id, first, timeout=120),
            wait_for_offsets(second_database, other.group_id, first, timeout=120),
        )
        rest = records[half:]
        step = max(1, len(rest) // 6)
        for start in range(0, len(rest), step):
            produced += await _produce(kafka_bootstrap, topics, rest[start : start + step])
            await asyncio.sleep(0.2)
        offsets = expected_offsets([md for _, _, md in produced])
        assert sum(offsets.values()) == len(records)
        await asyncio.gather(
            wait_for_offsets(database_url, topics.group_id, offsets, timeout=240),
            wait_for_offsets(second_database, other.group_id, offsets, timeout=240),
        )
        for worker in (a, b):
            assert worker.stats["dead_lettered"] == 0, worker.stats
            assert worker.stats["stored"] == len(records), worker.stats
        # The small worker committed at most 7 records a transaction; the default one more.
        assert b.stats["batches"] >= -(-len(records) // 7), b.stats
        assert a.stats["batches"] < b.stats["batches"], (a.stats, b.stats)

    # The two databases hold the same rows, whatever their batches and lanes were.
    first, second = await table_snapshot(database_url), await table_snapshot(second_database)
    assert first == second, "the two workers' tables differ:\n" + snapshot_diff(first, second)

    # And they are the model's: each partition's records applied in offset order.
    items = sorted(
        ((_decode(kind, value), md.topic, md.partition, md.offset) for kind, value, md in produced),
        key=lambda item: (item[1], item[2], item[3]),
    )
    expected = model_tables(items)
    assert any(isinstance(event, ProctoringEvent) for event, *_ in items)
    assert all(expected[t] for t in expected), {t: len(rows) for t, rows in expected.items()}
    for url, name in ((database_url, "default worker"), (second_database, "small-batch worker")):
        diff = diff_tables(expected, await _tables(url), names=("model", name))
        assert not diff, f"{name}'s tables differ from the reference model:\n{diff}"
