"""`worker show --candidate ID`: every stored row that names the candidate, as one JSON document
grouped by table (a data subject's access request, GDPR Art. 15), and whether and when the
candidate was erased. Reads only; exit codes: 0 done, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

import asyncpg

from worker import erasure
from worker.config import Settings
from worker.retry import describe
from worker.tools.database import connect


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "show", help="print every stored row naming a candidate, as JSON, grouped by table"
    )
    parser.add_argument("--candidate", required=True, metavar="ID", help="the candidate's id")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not args.candidate.strip():
        print("worker show: --candidate must not be empty", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_show(args.candidate, settings, sys.stdout))
    except Exception as exc:
        print(f"worker show: {describe(exc)}", file=sys.stderr)
        return 1


async def stored_rows(conn: asyncpg.Connection, candidate: str) -> dict[str, list[Any]]:
    """{table: [row as a JSON document]} for every table with rows naming `candidate`."""
    found: dict[str, list[Any]] = {}
    for table, where in erasure.NAMING:
        rows = await conn.fetch(
            f"SELECT to_jsonb(t)::text FROM {table} t WHERE {where} ORDER BY 1", candidate
        )
        found[table] = [json.loads(r[0]) for r in rows]
    return found


async def erasures_of(conn: asyncpg.Connection, candidate: str) -> list[dict[str, Any]]:
    _, key = await erasure.erasure_count(conn)
    rows = await conn.fetch(
        "SELECT erased_at, log_ends::text, rows_deleted::text FROM erasures "
        "WHERE subject = $1 ORDER BY erasure_id",
        erasure.subject(key, candidate),
    )
    return [
        {
            "erased_at": r["erased_at"].isoformat(),
            "log_ends": json.loads(r["log_ends"]),
            "rows_deleted": json.loads(r["rows_deleted"]),
        }
        for r in rows
    ]


async def _show(candidate: str, settings: Settings, out: TextIO) -> int:
    conn = await connect(settings)
    try:
        doc = {
            "candidate_id": candidate,
            "tables": await stored_rows(conn, candidate),
            "erasures": await erasures_of(conn, candidate),
        }
    finally:
        await conn.close()
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")
    return 0
