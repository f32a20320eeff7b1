"""`python -m bench.sqlcost`: what each part of the proctoring write path costs PostgreSQL.

The proctoring workload of `make bench`, decoded and prepared by the worker's own handler
before the clock starts, is written in batches of the worker's size into a fresh database per
variant; each variant changes one thing from `worker` (the path as shipped). Printed per
variant: rows/s, CPU microseconds per row of the server (the backend's utime+stime from
/proc) and of this client (encoding the COPY), and the ratios to `worker` and to `bare-copy`
of the same run. Then the `worker` variant's statements from
pg_stat_statements and one batch's EXPLAIN (ANALYZE, BUFFERS).

No Kafka and no worker process: this isolates the database, the ceiling the full benchmark
hits first on a small machine. DATABASE_URL points it at a server of your own (it creates and
drops databases named `sqlcost_*`); otherwise it starts the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench import data
from bench.baselines import (
    BARE_COLUMNS,
    BARE_DDL,
    BARE_TABLE,
    COLUMNS,
    copy_row,
    decoded_proctoring,
)
from bench.stack import database_url_for
from worker.clock import transaction_time
from worker.handlers import proctoring as pr
from worker.handlers.base import Item
from worker.handlers.registers import Registers

TOPIC = "proctoring.events"
PARTITIONS = 12


@dataclass
class Workload:
    items: list[Item]
    rows: list[tuple[Any, ...]]  # the COPY baseline's row shape (bench.baselines.COLUMNS)


def workload(scale: float) -> Workload:
    decoded = decoded_proctoring(data.proctoring_spec(scale), PARTITIONS)
    return Workload(
        [Item(ev, TOPIC, partition, offset) for ev, partition, offset in decoded],
        [copy_row(ev, TOPIC, partition, offset) for ev, partition, offset in decoded],
    )


# -- variants ---------------------------------------------------------------------------------

Write = Callable[[asyncpg.Connection, Any], Awaitable[None]]


async def _worker(conn: asyncpg.Connection, prepared: Any) -> None:
    handler = pr.ProctoringHandler()
    await handler.write(conn, prepared, Registers())
    assert handler.direct, "the workload repeats no event: every batch goes direct"


async def _direct_without_sessions(conn: asyncpg.Connection, prepared: Any) -> None:
    await conn.copy_records_to_table(
        "proctoring_events", records=prepared.rows, columns=pr._COLUMNS
    )


def _staged(insert: str) -> Write:
    """The staged way with `insert` as its statement; its payload is the stage's COPY text,
    built before the clock starts (the worker built it in `prepare` before 2026-12-01)."""

    async def write(conn: asyncpg.Connection, stage_text: Any) -> None:
        await conn.execute(pr._STAGE)
        await conn.copy_to_table(
            "stage_proctoring_events",
            source=io.BytesIO(stage_text),
            columns=pr._STAGE_COLUMNS,
            schema_name="pg_temp",
            format="text",
        )
        if insert:
            args = [pr._FLAG_TYPES, transaction_time()] if "$1" in insert else []
            await conn.execute(insert, *args)

    return write


_STAGE_SCAN = "FROM pg_temp.stage_proctoring_events\n"
_EVENTS_ONLY = (
    "INSERT INTO proctoring_events"
    + (pr._INSERT_STAGED.split("INSERT INTO proctoring_events", 1)[1].split("RETURNING")[0])
)
_PLAIN_INSERT = _EVENTS_ONLY.replace("ON CONFLICT DO NOTHING", "")
_KEY = "exam_id, candidate_id, type, created_us"
_SORTED = pr._INSERT_STAGED.replace(_STAGE_SCAN, f"{_STAGE_SCAN}    ORDER BY {_KEY}\n")
_ANTI_JOIN = pr._INSERT_STAGED.replace(
    _STAGE_SCAN + "    ON CONFLICT DO NOTHING\n",
    f"""FROM (SELECT DISTINCT ON ({_KEY}) *, to_timestamp(created_us / 1000000)
                 + (created_us % 1000000) * interval '1 microsecond' AS at
          FROM pg_temp.stage_proctoring_events
          ORDER BY {_KEY}, kafka_topic, kafka_partition, kafka_offset) s
    WHERE NOT EXISTS (SELECT FROM proctoring_events x WHERE x.exam_id = s.exam_id
        AND x.candidate_id = s.candidate_id AND x.type = s.type AND x.created_at = s.at)
""",
)
assert len({pr._INSERT_STAGED, _SORTED, _ANTI_JOIN}) == 3 and "ON CONFLICT" not in _PLAIN_INSERT


async def _copy_direct(conn: asyncpg.Connection, rows: Any) -> None:
    await conn.copy_records_to_table("proctoring_events", records=rows, columns=COLUMNS)


async def _bare_copy(conn: asyncpg.Connection, rows: Any) -> None:
    await conn.copy_records_to_table(BARE_TABLE, records=rows, columns=BARE_COLUMNS)


_NO_INDEX = "DROP INDEX IF EXISTS proctoring_events_candidate_idx"


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    write: Write
    setup: str = ""
    source: str = "prepared"  # "stage": the stage's COPY text; "rows": the baselines' tuples
    batch: int | None = None  # None: --batch


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "worker",
        "the shipped path: binary COPY straight into the table, sessions aggregated in Python",
        _worker,
    ),
    Variant(
        "direct-no-sessions",
        "worker without the proctoring_sessions upsert",
        _direct_without_sessions,
    ),
    Variant(
        "with-candidate-index",
        "worker plus proctoring_events (candidate_id, created_at) (dropped by sql/004)",
        _worker,
        "CREATE INDEX ON proctoring_events (candidate_id, created_at)",
    ),
    Variant(
        "staged",
        "the staged path: text COPY to a temp stage, INSERT..ON CONFLICT.."
        "RETURNING, session aggregate in SQL",
        _staged(pr._INSERT_STAGED),
        source="stage",
    ),
    Variant(
        "staged-candidate-index",
        "staged, with the candidate index (the path and schema before 2026-12-01)",
        _staged(pr._INSERT_STAGED),
        "CREATE INDEX ON proctoring_events (candidate_id, created_at)",
        source="stage",
    ),
    Variant(
        "staged-sorted", "staged, rows inserted in key order", _staged(_SORTED), source="stage"
    ),
    Variant(
        "staged-anti-join",
        "staged, NOT EXISTS + DISTINCT ON instead of ON CONFLICT",
        _staged(_ANTI_JOIN),
        source="stage",
    ),
    Variant(
        "staged-no-sessions",
        "stage + INSERT..ON CONFLICT DO NOTHING, no RETURNING, no sessions",
        _staged(_EVENTS_ONLY),
        source="stage",
    ),
    Variant(
        "staged-no-conflict",
        "stage + plain INSERT (no ON CONFLICT, no sessions)",
        _staged(_PLAIN_INSERT),
        source="stage",
    ),
    Variant("stage-only", "the text COPY into the temp stage alone", _staged(""), source="stage"),
    Variant(
        "copy-direct",
        "binary COPY into proctoring_events (the `copy` row of make bench)",
        _copy_direct,
        source="rows",
    ),
    Variant(
        "bare-copy",
        "binary COPY, 5 columns, primary key only (the `bare-copy` row)",
        _bare_copy,
        BARE_DDL,
        source="rows",
    ),
    *(
        Variant(f"worker-batch-{n}", f"worker, batches of {n} rows", _worker, batch=n)
        for n in (2_000, 5_000, 20_000, 50_000)
    ),
)


def _cpu_s(pid: int) -> float | None:
    """The process's CPU seconds, or None when it is not on this machine."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_variant(url: str, v: Variant, w: Workload, batch: int) -> dict[str, Any]:
    size = v.batch or batch
    conn = await asyncpg.connect(url)
    try:
        if v.setup:
            await conn.execute(v.setup)
        if v.source == "rows":
            payloads: list[Any] = [w.rows[i : i + size] for i in range(0, len(w.rows), size)]
        else:
            handler = pr.ProctoringHandler()
            payloads = [
                handler.prepare(w.items[i : i + size]) for i in range(0, len(w.items), size)
            ]
            if v.source == "stage":
                payloads = [pr._stage_text(p.rows) for p in payloads]
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        cpu0 = _cpu_s(pid)
        started, client0 = time.perf_counter(), time.process_time()
        for payload in payloads:
            async with conn.transaction():
                await v.write(conn, payload)
        seconds, client = time.perf_counter() - started, time.process_time() - client0
        cpu1 = _cpu_s(pid)
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        table = BARE_TABLE if v.name == "bare-copy" else "proctoring_events"
        stored = await conn.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await conn.close()
    n = len(w.items)
    return {
        "variant": v.name,
        "batch": size,
        "rows": n,
        "stored": stored,
        "seconds": round(seconds, 3),
        "rows_per_s": round(n / seconds),
        "server_cpu_us_per_row": None if cpu is None else round(cpu / n * 1e6, 2),
        "client_cpu_us_per_row": round(client / n * 1e6, 2),
    }


async def statements(url: str, w: Workload, batch: int) -> list[tuple[Any, ...]]:
    """The worker variant once more, with pg_stat_statements counting its statements."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
        handler = pr.ProctoringHandler()
        for i in range(0, len(w.items), batch):
            prepared = handler.prepare(w.items[i : i + batch])
            async with conn.transaction():
                await _worker(conn, prepared)
        rows = await conn.fetch(
            "SELECT calls, round(total_exec_time::numeric, 1) AS ms, rows,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 70) AS query"
            " FROM pg_stat_statements WHERE query !~* 'pg_stat_statements'"
            " ORDER BY total_exec_time DESC LIMIT 8"
        )
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


async def explain(url: str, w: Workload, batch: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the staged insert for one batch (a COPY has no plan), on
    a table that already holds half the workload, as in steady state."""
    conn = await asyncpg.connect(url)
    try:
        handler = pr.ProctoringHandler()
        mid = len(w.items) // 2
        for i in range(0, mid, batch):
            async with conn.transaction():
                await _worker(conn, handler.prepare(w.items[i : min(i + batch, mid)]))
        stage_text = pr._stage_text(handler.prepare(w.items[mid : mid + batch]).rows)
        async with conn.transaction():
            await _staged("")(conn, stage_text)
            plan = await conn.fetch(
                "EXPLAIN (ANALYZE, BUFFERS, TIMING ON) " + pr._INSERT_STAGED,
                pr._FLAG_TYPES,
                transaction_time(),
            )
        return "\n".join(r[0] for r in plan)
    finally:
        await conn.close()


async def fresh(admin_url: str, name: str) -> str:
    from worker.migrate import migrate_url

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = database_url_for(admin_url, name)
    await migrate_url(url)
    return url


async def drop(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _table(results: Sequence[dict[str, Any]]) -> str:
    bare = next((r["rows_per_s"] for r in results if r["variant"] == "bare-copy"), None)
    worker = next((r["rows_per_s"] for r in results if r["variant"] == "worker"), None)
    lines = [
        f"{'variant':<22} {'batch':>6} {'rows/s':>9} {'server us':>9} {'client us':>9} "
        f"{'/worker':>8} {'/bare':>6}  what"
    ]
    what = {v.name: v.what for v in VARIANTS}
    for r in results:
        cpu = r["server_cpu_us_per_row"]
        lines.append(
            f"{r['variant']:<22} {r['batch']:>6} {r['rows_per_s']:>9,} "
            f"{'-' if cpu is None else f'{cpu:.2f}':>9} {r['client_cpu_us_per_row']:>9.2f} "
            f"{r['rows_per_s'] / worker if worker else 0:>8.2f} "
            f"{r['rows_per_s'] / bare if bare else 0:>6.2f}  {what[r['variant']]}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    admin = os.environ.get("DATABASE_URL", "").strip()
    server = None
    if not admin:
        from worker.dev.stack import EmbeddedPostgres

        server = EmbeddedPostgres(
            Path(tempfile.mkdtemp(prefix="sqlcost-")) / "pgdata",
            settings={"shared_preload_libraries": "pg_stat_statements"},
        )
        server.start(timeout=60)
        admin = server.url()
    try:
        w = workload(args.scale)
        chosen = [v for v in VARIANTS if not args.only or v.name in args.only]
        results = []
        for round_ in range(args.rounds):
            for v in chosen:
                name = f"sqlcost_{v.name.replace('-', '_')}"
                url = await fresh(admin, name)
                try:
                    r = await run_variant(url, v, w, args.batch)
                finally:
                    await drop(admin, name)
                r["round"] = round_
                print(f"  {v.name}: {r['rows_per_s']:,} rows/s", file=sys.stderr, flush=True)
                results.append(r)
        best: dict[str, dict[str, Any]] = {}
        for r in results:  # best of the rounds: the least disturbed by the rest of the machine
            if r["variant"] not in best or r["rows_per_s"] > best[r["variant"]]["rows_per_s"]:
                best[r["variant"]] = r
        print(
            f"{len(w.items):,} proctoring rows, batches of {args.batch}, "
            f"best of {args.rounds} round(s)"
        )
        print(_table(list(best.values())))
        if args.explain:
            url = await fresh(admin, "sqlcost_profile")
            try:
                print("\npg_stat_statements, worker variant (calls, ms, rows, query):")
                for row in await statements(url, w, args.batch):
                    print("  ", *row)
            finally:
                await drop(admin, "sqlcost_profile")
            url = await fresh(admin, "sqlcost_explain")
            try:
                print(
                    f"\nEXPLAIN ANALYZE, one batch of {args.batch} onto "
                    f"{len(w.items) // 2:,} stored rows:"
                )
                print(await explain(url, w, args.batch))
            finally:
                await drop(admin, "sqlcost_explain")
    finally:
        if server is not None:
            server.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=10_000, help="rows per transaction")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="variant names")
    ap.add_argument("--no-explain", dest="explain", action="store_false")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
