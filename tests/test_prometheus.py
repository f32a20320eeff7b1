"""The dashboard and the alert rules against a real Prometheus scraping a real worker under
load (docs/contract.md §8, issue 20 acceptance 1).

Prometheus (Debian's `prometheus` package; skipped naming it where absent) runs on a free port
with its own storage, scraping the worker's /metrics every second and evaluating the rules of
deploy/prometheus/alerts.yml every second, with every `for:` shortened to 0s (the durations
are the production file's; the expressions are the same text).

While records flow, the test makes happen what the alerts name:

- partition 0 stores records produced an hour ago (their Kafka timestamps say so), then meets
  a snappy batch this process cannot read (the codec refused, as in tests/test_codecs.py) with
  records behind it: stuck, its lag not shrinking, its data late;
- a burst of malformed records on partition 2: dead letters flowing;
- the worker's database refuses connections for a few seconds: retries of the database;
- an operator pauses partition 1 (`worker pause`, the real command line);
- at the end the worker stops: down, and no member left.

Every dashboard query and every rule's expression must return data (through the HTTP API), and
each alert must be firing for the partition or reason it names (/api/v1/alerts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiokafka.codec
import asyncpg
import confluent_kafka
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.errors import UnsupportedCodecError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from prometheus_support import JOB, RULES, binary, panel_queries, rules
from support.e2e import REPO_ROOT, running_worker, settings_for, wait_for, worker_env
from support.event_builders import encode, proctoring
from support.infra import TopicFactory, Topics, unique_name

from worker.dev.stack import free_port

pytestmark = pytest.mark.integration

# Grafana's $__rate_interval: at least four scrape intervals.
RATE_INTERVAL = "10s"
HOUR_AGO_MS = int((time.time() - 3600) * 1000)


# -- Prometheus ---------------------------------------------------------------------------


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def _get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await asyncio.to_thread(self._get, "/api/v1/query", query=expr)
        return list(data["result"])

    async def firing(self) -> list[dict[str, str]]:
        data = await asyncio.to_thread(self._get, "/api/v1/alerts")
        return [a["labels"] for a in data["alerts"] if a["state"] == "firing"]

    async def wait_firing(self, alertname: str, timeout: float = 30, **labels: str) -> None:
        async def fired() -> bool:
            return any(
                a["alertname"] == alertname and all(a.get(k) == v for k, v in labels.items())
                for a in await self.firing()
            )

        await wait_for(fired, timeout, f"alert {alertname} {labels} to fire", interval=0.5)


def _test_rules(path: Path) -> None:
    """The production rules with every `for:` shortened to 0s."""
    loaded = yaml.safe_load(RULES.read_text())
    for group in loaded["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    path.write_text(yaml.safe_dump(loaded, sort_keys=False))


@contextlib.contextmanager
def prometheus_scraping(metrics_port: int, work: Path) -> Iterator[Prometheus]:
    exe = binary("prometheus")
    _test_rules(work / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(work / "rules.yml")],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((work / "prometheus.log").read_text()[-3000:])
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


# -- what the worker meets ----------------------------------------------------------------


def _refuse_snappy(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process cannot read snappy batches from now on, as without the codec library."""
    builder = DefaultRecordBatchBuilder(2, 2, 0, -1, -1, -1, 1 << 20)  # codec 2: snappy
    builder.append(0, timestamp=None, key=None, value=b"v" * 100, headers=[])
    raw = bytes(builder.build())
    monkeypatch.setattr(aiokafka.codec, "has_snappy", lambda: False)
    batch = MemoryRecords(raw).next_batch()
    assert batch is not None
    with pytest.raises(UnsupportedCodecError):
        list(batch)


def _produce_snappy(bootstrap: str, topic: str, partition: int, values: list[bytes]) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "snappy",
            "enable.idempotence": False,
            "acks": "all",
            "linger.ms": 50,
        }
    )
    for value in values:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0


def _event(n: int, exam: str) -> bytes:
    return encode(proctoring(examId=exam, candidateId=f"cand-{n % 7}", description=f"n{n}"))


@contextlib.asynccontextmanager
async def _load(bootstrap: str, topics: Topics, per_s: float = 200) -> AsyncIterator[list[int]]:
    """Records on partitions 1 and 2 and the interview topic until the block exits."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False)
    await producer.start()
    sent = [0]

    async def run() -> None:
        n = 0
        while True:
            for partition in (1, 2):
                await producer.send(topics.proctoring, _event(n, "exam-load"), partition=partition)
            n += 1
            sent[0] = n
            await asyncio.sleep(2 / per_s)

    task = asyncio.create_task(run())
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await producer.stop()


@contextlib.asynccontextmanager
async def _database_refusing(admin_url: str, database_url: str) -> AsyncIterator[None]:
    """The worker's database refuses new connections and drops the open ones."""
    name = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        try:
            yield
        finally:
            await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        await conn.close()


# -- the test -----------------------------------------------------------------------------


async def _returns_data(prom: Prometheus, what: str, expr: str) -> None:
    async def data() -> list[dict[str, Any]]:
        return await prom.query(expr)

    await wait_for(data, 15, f"{what} to return data: {expr}", interval=0.5)


async def test_dashboard_and_alerts_against_a_real_prometheus(
    kafka_bootstrap: str,
    database_url: str,
    pg_admin_url: str,
    topic_factory: TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    binary("prometheus")
    proctoring_topic, interview, dlq = await asyncio.gather(
        topic_factory(3), topic_factory(1), topic_factory(1)
    )
    topics = Topics(proctoring_topic, interview, dlq, unique_name("g_"))
    t = topics.proctoring

    # Partition 0: records produced an hour ago, then a batch this process cannot read, then
    # records behind it.
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        for n in range(20):
            await producer.send(t, _event(n, "exam-old"), partition=0, timestamp_ms=HOUR_AGO_MS)
        await producer.flush()
        await asyncio.to_thread(
            _produce_snappy, kafka_bootstrap, t, 0, [_event(n, "exam-snappy") for n in range(5)]
        )
        for n in range(20):
            await producer.send(t, _event(n, "exam-behind"), partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    _refuse_snappy(monkeypatch)

    metrics_port = free_port()
    settings = settings_for(
        kafka_bootstrap,
        database_url,
        topics,
        metrics_port=metrics_port,
        metrics_host="127.0.0.1",
        retry_max_s=0.5,
    )
    alerts = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    with prometheus_scraping(metrics_port, tmp_path) as prom:
        async with running_worker(settings) as worker, _load(kafka_bootstrap, topics) as sent:
            stuck = {"topic": t, "partition": "0"}
            await prom.wait_firing("EventWorkerPartitionStuck", 60, **stuck)

            # An operator pauses partition 1 with the real command.
            paused = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "worker", "pause", "--topic", t, "--partition", "1"],
                cwd=REPO_ROOT,
                env=worker_env(settings),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert paused.returncode == 0, paused.stdout + paused.stderr

            # A burst of dead letters on partition 2.
            bad = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
            await bad.start()
            try:
                for n in range(30):
                    await bad.send(t, b"not json %d" % n, partition=2)
                await bad.flush()
            finally:
                await bad.stop()

            # The database refuses connections until the worker has retried it a few times.
            async with _database_refusing(pg_admin_url, database_url):

                async def retried() -> bool:
                    labels = {"dependency": "database"}
                    value = worker.metrics.registry.get_sample_value("worker_retries_total", labels)
                    return (value or 0) >= 3

                await wait_for(retried, 30, "the worker to retry the database")
                await asyncio.sleep(2)  # scraped while it fails

            for name, labels in [
                ("EventWorkerLagNotShrinking", stuck),
                ("EventWorkerDataLate", stuck),
                ("EventWorkerDeadLetters", {"reason": "invalid_json"}),
                ("EventWorkerDependencyFailing", {"dependency": "database"}),
                ("EventWorkerPartitionPaused", {"topic": t, "partition": "1"}),
            ]:
                await prom.wait_firing(name, 30, **labels)

            # While the worker runs: every panel, every recording rule, every alert but the
            # two about a stopped worker.
            for title, expr in panel_queries(RATE_INTERVAL):
                await _returns_data(prom, f"panel {title!r}", expr)
            for name, expr in recorded.items():
                await _returns_data(prom, f"recording rule {name}", expr)
            for name, expr in alerts.items():
                if name not in ("EventWorkerDown", "EventWorkerNoneUp"):
                    await _returns_data(prom, f"alert {name}", expr)
            assert sent[0] > 0
            assert worker.stats["stored"] > 0

        # The worker stopped: down, and no member left.
        await prom.wait_firing("EventWorkerDown", 30, job=JOB)
        await prom.wait_firing("EventWorkerNoneUp", 30)
        for name in ("EventWorkerDown", "EventWorkerNoneUp"):
            await _returns_data(prom, f"alert {name}", alerts[name])
