"""The audit trail of access and erasure requests (docs/contract.md §7), and `worker audit`.

`show`, `forget` and `dlq inspect --candidate` each append one row to `erasure_audit` through
`erasure_audit_append` (sql/008; SECURITY DEFINER, so a SELECT-only role can append): the
server's time, the command, the operator (`--by NAME`, else the OS user), an optional
`--ticket REF`, the counts, and the subjects asked about (the ledger's keyed hashes, never an
identifier in clear). The row is written before anything is printed (or, for
`forget --execute`, in the erasure's own transaction): a request that leaves no trace is not
answered. The table refuses UPDATE, DELETE and TRUNCATE.

`worker audit [--candidate ID | --email ADDRESS] [--limit N] [--json]` lists the rows, newest
first; the person options select the rows whose subjects include the id, or the email or an
id it links now. Exit codes: 0 done,
1 failure, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import asyncpg

from worker.config import Settings
from worker.retry import describe
from worker.tools.database import connect
from worker.tools.person import KEY, Person, add_person_arguments, identifier

_APPEND = "SELECT erasure_audit_append($1, $2, $3, $4::bytea[], $5::jsonb)"
_LIST = (
    "SELECT audit_id, at, command, operator, ticket, subjects, counts::text FROM erasure_audit "
    "WHERE $1::bytea[] IS NULL OR subjects && $1::bytea[] ORDER BY audit_id DESC LIMIT $2"
)


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """`--by NAME` and `--ticket REF`, recorded in the audit row."""
    parser.add_argument(
        "--by", type=identifier, metavar="NAME", help="who asks (default: the OS user)"
    )
    parser.add_argument(
        "--ticket", type=identifier, metavar="REF", help="the request's reference, e.g. a ticket"
    )


def operator(args: argparse.Namespace) -> str:
    by = getattr(args, "by", None)
    if by:
        return str(by)
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment: say so rather than guess
        return "unknown"


async def record(
    conn: asyncpg.Connection,
    command: str,
    args: argparse.Namespace,
    subjects: Sequence[bytes],
    counts: dict[str, Any],
) -> int:
    """Append the audit row of one request; its id."""
    return int(
        await conn.fetchval(
            _APPEND,
            command,
            operator(args),
            getattr(args, "ticket", None),
            list(subjects),
            json.dumps(counts, sort_keys=True),
        )
    )


# -- `worker audit` ----------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="list the audit trail of show, forget and dlq inspect --candidate",
        description="One row per request, newest first; identifiers appear only as the "
        "ledger's keyed hashes (their first 8 bytes, in hex).",
    )
    add_person_arguments(parser, required=False)  # the rows about this person only
    parser.add_argument("--limit", type=int, default=100, help="at most N rows (default 100)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_list(args, settings, sys.stdout))
    except Exception as exc:
        print(f"worker audit: {describe(exc)}", file=sys.stderr)
        return 1


async def _list(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    conn = await connect(settings)
    try:
        subjects: list[bytes] | None = None
        if args.candidate or args.email:
            person = Person.of(args)
            subjects = person.subjects(await conn.fetchval(KEY), await person.ids(conn))
        rows = await conn.fetch(_LIST, subjects, args.limit)
    finally:
        await conn.close()
    docs = [
        {
            "audit_id": r["audit_id"],
            "at": r["at"].isoformat(),
            "command": r["command"],
            "operator": r["operator"],
            "ticket": r["ticket"],
            "subjects": [s[:8].hex() for s in r["subjects"]],
            "counts": json.loads(r["counts"]),
        }
        for r in rows
    ]
    if args.json:
        for doc in docs:
            out.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return 0
    header = ("ID", "AT", "COMMAND", "OPERATOR", "TICKET", "SUBJECTS", "COUNTS")
    table = [
        (
            str(d["audit_id"]),
            d["at"][:19],
            d["command"],
            d["operator"],
            d["ticket"] or "-",
            " ".join(d["subjects"]),
            json.dumps(d["counts"], sort_keys=True),
        )
        for d in docs
    ]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header) - 1)]
    for r in [header, *table]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        out.write("  ".join([*cells, r[-1]]).rstrip() + "\n")
    out.write(f"{len(docs)} audit rows shown\n")
    return 0
