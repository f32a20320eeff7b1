"""`worker forget --candidate ID [--execute]`: erase a candidate so that no replay brings them
back (contract §7; the ingest side is worker/erasure.py).

The dry run counts, table by table, the rows that name the candidate, and changes nothing.
`--execute` does it in ONE transaction: it takes the ledger's lock row (`erasure_state`, which
makes it wait for the batches in flight and holds new ones back), reads the end offset of
every partition of both consumed topics from the broker (fresh, worker/logbounds.py), deletes
the rows, and adds the ledger entry: the candidate's HMAC subject, the time, the log ends and
the counts. Nothing of the identifier is written in clear, and the command's own output names
it only as the operator typed it. Exit codes: 0 done, 1 failure (nothing changed), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any, TextIO

import asyncpg

from worker import erasure
from worker.broker import log_bounds, partitions
from worker.clients import KafkaPostgresClients
from worker.config import Settings
from worker.retry import describe
from worker.tools.database import CONNECT_TIMEOUT_S, connect


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "forget",
        help="erase a candidate: every row naming them, and every replay of what the log held",
        description="Prints, table by table, the rows that name the candidate; deletes them "
        "and records the erasure (no identifier in clear) only with --execute.",
    )
    parser.add_argument("--candidate", required=True, metavar="ID", help="the candidate's id")
    parser.add_argument("--execute", action="store_true", help="erase (default: a dry run)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.candidate.strip():
        print("worker forget: --candidate must not be empty", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_forget(args, settings, sys.stdout))
    except Exception as exc:
        print(f"worker forget: {describe(exc)}; nothing was erased", file=sys.stderr)
        return 1


async def count_rows(conn: asyncpg.Connection, candidate: str) -> dict[str, int]:
    """Rows that name `candidate`, per table."""
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", candidate)
        for table, where in erasure.NAMING
    }


async def log_ends(settings: Settings) -> dict[str, dict[str, int]]:
    """{topic: {partition: end offset}} of both consumed topics, read from the broker now."""
    consumer = KafkaPostgresClients(settings).reader("forget", timeout_s=CONNECT_TIMEOUT_S)
    await consumer.start()
    try:
        tps = [tp for topic in settings.topics for tp in await partitions(consumer, topic)]
        bounds = await log_bounds(consumer, tps)
    finally:
        await consumer.stop()
    ends: dict[str, dict[str, int]] = {}
    for tp, (_, end) in sorted(bounds.items()):
        ends.setdefault(tp.topic, {})[str(tp.partition)] = end
    return ends


async def erase(
    conn: asyncpg.Connection, candidate: str, read_log_ends: Any
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Delete every row naming `candidate` and record the erasure, in one transaction; the
    log ends are read (`await read_log_ends()`) once the ledger's lock row is held."""
    async with conn.transaction():
        key = await conn.fetchval("UPDATE erasure_state SET erasures = erasures + 1 RETURNING key")
        ends = await read_log_ends()
        deleted: dict[str, int] = {}
        for table, where in erasure.NAMING:
            status = await conn.execute(f"DELETE FROM {table} WHERE {where}", candidate)
            deleted[table] = int(status.rsplit(" ", 1)[1])
        await conn.execute(
            "INSERT INTO erasures (subject, erased_at, log_ends, rows_deleted) "
            "VALUES ($1, $2, $3::jsonb, $4::jsonb)",
            erasure.subject(key, candidate),
            dt.datetime.now(dt.UTC),
            json.dumps(ends),
            json.dumps(deleted),
        )
    return deleted, ends


async def _forget(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    conn = await connect(settings)
    try:
        if args.execute:
            deleted, ends = await erase(conn, args.candidate, lambda: log_ends(settings))
            result: dict[str, Any] = {"executed": True, "deleted": deleted, "log_ends": ends}
        else:
            result = {"executed": False, "would_delete": await count_rows(conn, args.candidate)}
    finally:
        await conn.close()
    if args.json:
        json.dump(result, out, indent=2)
        out.write("\n")
        return 0
    counts = result["deleted" if args.execute else "would_delete"]
    width = max(len(t) for t in counts)
    verb = "deleted" if args.execute else "would delete"
    for table, n in counts.items():
        out.write(f"{table:<{width}}  {verb} {n}\n")
    if args.execute:
        out.write(
            f"erased: {sum(counts.values())} rows; records of this candidate below these log "
            f"ends will not be stored again: {json.dumps(result['log_ends'])}\n"
        )
    else:
        out.write("dry run: nothing deleted (add --execute to erase)\n")
    return 0
