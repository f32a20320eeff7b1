"""The servers the benchmark runs against: embedded (default) or external (environment).

`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL`, when set, name external servers; otherwise the
embedded Tansu broker and an embedded PostgreSQL 18 (with `track_commit_timestamp=on`) are
started in a temporary directory. Every workload gets fresh topics, a fresh consumer group and
a fresh database, all named after the run id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

# Tansu's in-memory storage is fine for a benchmark; a commit timestamp per transaction is
# what the throughput and latency figures are computed from.
PG_SETTINGS = {"track_commit_timestamp": "on"}

# Kept beside the worker's tables: one row per partition per committed batch, written by a
# trigger in the batch's own transaction, so a batch's size and commit time are exact.
OFFSET_LOG_DDL = """
CREATE UNLOGGED TABLE IF NOT EXISTS bench_offset_log (
    group_id    text   NOT NULL,
    topic       text   NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL
);
CREATE OR REPLACE FUNCTION bench_log_offset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_offset_log VALUES (NEW.group_id, NEW.topic, NEW.partition, NEW.next_offset);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_log_offset ON consumer_offsets;
CREATE TRIGGER bench_log_offset AFTER INSERT OR UPDATE ON consumer_offsets
    FOR EACH ROW EXECUTE FUNCTION bench_log_offset();
"""


def database_url_for(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@dataclass
class Stack:
    run_id: str
    bootstrap_servers: str = ""
    admin_url: str = ""
    external_kafka: bool = False
    external_pg: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    _broker: object | None = None
    _postgres: object | None = None
    _databases: list[str] = field(default_factory=list)
    _topics: list[str] = field(default_factory=list)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        from worker.dev.stack import EmbeddedBroker, EmbeddedPostgres

        kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        pg = os.environ.get("DATABASE_URL", "").strip()
        if kafka:
            self.bootstrap_servers, self.external_kafka = kafka, True
        else:
            broker = EmbeddedBroker(log_path=self.workdir / "broker.log")
            self._broker = broker
            broker.start()
            self.bootstrap_servers = broker.bootstrap_servers
        if pg:
            self.admin_url, self.external_pg = pg, True
        else:
            postgres = EmbeddedPostgres(
                self.workdir / "pgdata",
                log_path=self.workdir / "postgres.log",
                settings=PG_SETTINGS,
            )
            self._postgres = postgres
            postgres.start(timeout=60)
            self.admin_url = postgres.url()

    def close(self) -> None:
        """Drop what this run created on external servers; stop embedded ones."""
        if self.external_pg and self._databases:
            with contextlib.suppress(Exception):
                asyncio.run(self._drop_databases())
        if self.external_kafka and self._topics:
            with contextlib.suppress(Exception):
                self._delete_topics()
        if self._postgres is not None:
            with contextlib.suppress(Exception):
                self._postgres.close()  # type: ignore[attr-defined]
            self._postgres = None
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self._broker.stop()  # type: ignore[attr-defined]
            self._broker = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def server_pids(self) -> dict[str, Callable[[], list[int]]]:
        """The embedded servers' processes, for CPU accounting (none when external)."""
        groups: dict[str, Callable[[], list[int]]] = {}
        if self._postgres is not None:
            pg = self._postgres
            groups["postgres"] = lambda: [p] if (p := pg.pid) else []  # type: ignore[attr-defined]
        if self._broker is not None:
            broker = self._broker
            groups["broker"] = lambda: [p] if (p := broker.pid) else []  # type: ignore[attr-defined]
        return groups

    def describe(self) -> dict[str, str]:
        return {
            "kafka": "external " + self.bootstrap_servers
            if self.external_kafka
            else "embedded Tansu (in-memory storage)",
            "postgres": "external (DATABASE_URL)"
            if self.external_pg
            else "embedded PostgreSQL (fsync=off, full_page_writes=off, track_commit_timestamp=on)",
        }

    # -- databases ------------------------------------------------------------------------

    async def fresh_database(self, label: str, *, migrate: bool = True) -> str:
        """Create an empty database; with `migrate`, apply this tree's migrations and add the
        offset log (a worker of another tree migrates with its own: bench/systems.py)."""
        name = f"bench_{self.run_id}_{label}".lower().replace("-", "_")
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self._databases.append(name)
        url = database_url_for(self.admin_url, name)
        if migrate:
            from worker.migrate import migrate_url

            await migrate_url(url)
            await self.add_offset_log(url)
        return url

    async def add_offset_log(self, url: str) -> None:
        """The offset log (OFFSET_LOG_DDL) in a migrated database."""
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(OFFSET_LOG_DDL)
        finally:
            await conn.close()

    async def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        with contextlib.suppress(ValueError):
            self._databases.remove(name)

    async def _drop_databases(self) -> None:
        for name in list(self._databases):
            await self.drop_database(database_url_for(self.admin_url, name))

    async def server_info(self) -> dict[str, str]:
        conn = await asyncpg.connect(self.admin_url)
        try:
            return {
                "server_version": await conn.fetchval("SHOW server_version"),
                "track_commit_timestamp": await conn.fetchval("SHOW track_commit_timestamp"),
                "fsync": await conn.fetchval("SHOW fsync"),
                "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
                "shared_buffers": await conn.fetchval("SHOW shared_buffers"),
            }
        finally:
            await conn.close()

    # -- topics ---------------------------------------------------------------------------

    def create_topics(self, topics: Iterable[tuple[str, int]], timeout: float = 30.0) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        wanted = list(topics)
        admin = AdminClient(self.kafka_config())
        futures = admin.create_topics(
            [NewTopic(name, partitions, 1) for name, partitions in wanted],
            operation_timeout=timeout,
        )
        for future in futures.values():
            future.result(timeout)
        self._topics.extend(name for name, _ in wanted)
        # Wait until every partition has a leader, or the first produce may fail.
        deadline = time.monotonic() + timeout
        for name, partitions in wanted:
            while True:
                md = admin.list_topics(name, timeout=5).topics.get(name)
                if (
                    md is not None
                    and md.error is None
                    and len(md.partitions) == partitions
                    and all(p.leader >= 0 for p in md.partitions.values())
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {name} not ready after {timeout}s")
                time.sleep(0.1)

    def _delete_topics(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.kafka_config())
        for future in admin.delete_topics(self._topics, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(30)

    def kafka_config(self) -> dict[str, object]:
        """librdkafka settings; security from the same variables the worker reads."""
        config: dict[str, object] = {
            "bootstrap.servers": self.bootstrap_servers,
            # Tansu closes idle connections; librdkafka would log every one of them.
            "log.connection.close": False,
        }
        env = os.environ
        if env.get("KAFKA_SECURITY_PROTOCOL"):
            config["security.protocol"] = env["KAFKA_SECURITY_PROTOCOL"].lower()
        if env.get("KAFKA_SASL_MECHANISM"):
            config["sasl.mechanism"] = env["KAFKA_SASL_MECHANISM"].upper()
            config["sasl.username"] = env.get("KAFKA_SASL_USERNAME", "")
            config["sasl.password"] = env.get("KAFKA_SASL_PASSWORD", "")
        if env.get("KAFKA_SSL_CAFILE"):
            config["ssl.ca.location"] = env["KAFKA_SSL_CAFILE"]
        return config

    def log_tails(self) -> str:
        out = []
        for name in ("broker.log", "postgres.log"):
            path = self.workdir / name
            if path.exists():
                text = path.read_text(errors="replace")[-2000:]
                out.append(f"--- {name} ---\n{text}")
        return "\n".join(out)
