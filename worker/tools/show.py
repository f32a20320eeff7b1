"""`worker show --candidate ID | --email ADDRESS`: every stored row that names the person, as one
JSON document grouped by table (a data subject's access request, GDPR Art. 15), the ids an
email links, and the erasures that covered them.

Reads only, with plain SELECTs (no lock: a role with SELECT on the tables can run it), and
appends its audit row through the SECURITY DEFINER function before printing anything (a
request that leaves no trace is not answered). Exit codes: 0 done, 1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import asyncpg

from worker.config import Settings
from worker.retry import describe
from worker.tools import audit
from worker.tools.database import connect
from worker.tools.person import KEY, Person, add_person_arguments, stored_rows


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "show", help="print every stored row naming a person, as JSON, grouped by table"
    )
    add_person_arguments(parser)
    audit.add_audit_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_show(args, settings, sys.stdout))
    except Exception as exc:
        print(f"worker show: {describe(exc)}", file=sys.stderr)
        return 1


async def erasures_of(
    conn: asyncpg.Connection, subjects: Sequence[bytes], labels: Sequence[str]
) -> list[dict[str, Any]]:
    """The ledger rows of `subjects`, each saying which of `labels` (same order) it covers."""
    label_of = dict(zip(subjects, labels, strict=True))
    rows = await conn.fetch(
        "SELECT subject, request_id, erased_at, log_ends::text, rows_deleted::text "
        "FROM erasures WHERE subject = ANY($1::bytea[]) ORDER BY erasure_id",
        list(subjects),
    )
    return [
        {
            "erased_at": r["erased_at"].isoformat(),
            "request_id": r["request_id"],
            "covers": label_of[r["subject"]],
            "log_ends": json.loads(r["log_ends"]),
            "rows_deleted": json.loads(r["rows_deleted"]),
        }
        for r in rows
    ]


async def _show(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    person = Person.of(args)
    conn = await connect(settings)
    try:
        key = await conn.fetchval(KEY)
        ids = await person.ids(conn)
        subjects = person.subjects(key, ids)
        labels = [*ids, *(["email"] if person.email is not None else [])]
        tables = await stored_rows(conn, ids)
        doc = {
            **person.describe(),
            **({"linked_ids": ids} if person.email is not None else {}),
            "tables": tables,
            "erasures": await erasures_of(conn, subjects, labels),
        }
        counts = {"linked_ids": len(ids), "rows": {t: len(rows) for t, rows in tables.items()}}
        await audit.record(conn, "show", args, subjects, counts)
    finally:
        await conn.close()
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")
    return 0
