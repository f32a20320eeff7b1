"""`worker forget --candidate ID | --email ADDRESS [--execute]`: erase a person so that no replay
brings them back (docs/contract.md §7; the ingest side is worker/erasure.py).

The dry run lists the ids the request links and counts, table by table, the rows that name
them; it changes nothing but the audit trail. `--execute`:

1. reads the end offset of every partition of both consumed topics from the broker, and
   refuses unless each topic has partitions (a mistyped topic would record no end for the
   real one, and no replay of it would be screened);
2. in ONE transaction at READ COMMITTED, with `lock_timeout` and `statement_timeout` set:
   takes `LOCK TABLE erasure_lock, erasure_state IN EXCLUSIVE MODE` (batches arriving later
   queue behind it; it waits for those in flight) and the dead letters' advisory lock (it
   waits for letters being published), links the ids, raises each end to the
   highest `consumer_offsets.next_offset` stored for its partition (so every record whose row
   it deletes is below its end), deletes the rows (collecting the media URLs they held), adds
   one ledger row per subject, counts the erasure in both tables (`erasure_state` for
   replicas of the previous release) and appends the audit row.

The broker is read before the lock so that ingest never waits on it; the lock is held only for
the statements, each bounded. Nothing of the identifiers is written in clear; the command's own
output names them as the operator asked. Exit codes: 0 done, 1 failure (nothing changed), 2
usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import asyncpg

from worker.broker import log_bounds, partitions
from worker.clients import KafkaPostgresClients
from worker.config import Settings
from worker.erasure import LETTERS_LOCK_ID
from worker.retry import describe
from worker.tools import audit
from worker.tools.database import CONNECT_TIMEOUT_S, connect
from worker.tools.person import (
    KEY,
    NAMING,
    Person,
    add_person_arguments,
    count_rows,
    media_urls,
)

LogEnds = dict[str, dict[str, int]]  # {topic: {partition: end offset}}

__all__ = ["Bounds", "ForgetError", "count_rows", "erase", "log_ends"]


class ForgetError(Exception):
    """A refusal the command reports in one line; nothing was erased."""


LOCK_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Bounds:
    """How long an erasure may hold ingest back."""

    lock_timeout_s: float = LOCK_TIMEOUT_S  # waiting for the batches and letters in flight
    statement_timeout_s: float = STATEMENT_TIMEOUT_S  # each statement while the lock is held


@dataclass(slots=True)
class Erasure:
    ids: list[str]
    deleted: dict[str, int]
    urls: list[str]
    log_ends: LogEnds
    request_id: int
    audit_id: int | None = None
    counts: dict[str, Any] = field(default_factory=dict)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds in (0, 3600]")
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "forget",
        help="erase a person: every row naming them, and every replay of what the log held",
        description="Prints the ids the request links and, table by table, the rows that "
        "name them; deletes them and records the erasure (no identifier in clear) only with "
        "--execute.",
    )
    add_person_arguments(parser)
    parser.add_argument("--execute", action="store_true", help="erase (default: a dry run)")
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (with --execute: the URLs)"
    )
    parser.add_argument(
        "--lock-timeout",
        type=_seconds,
        default=LOCK_TIMEOUT_S,
        metavar="S",
        help="give up unless the ledger's lock is granted within S seconds (default %(default)s)",
    )
    parser.add_argument(
        "--statement-timeout",
        type=_seconds,
        default=STATEMENT_TIMEOUT_S,
        metavar="S",
        help="give up if a statement runs longer than S seconds while ingest waits "
        "(default %(default)s)",
    )
    audit.add_audit_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_forget(args, settings, sys.stdout))
    except (ForgetError, asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError) as exc:
        print(f"worker forget: {_refusal(exc, args)}; nothing was erased", file=sys.stderr)
    except Exception as exc:
        print(f"worker forget: {describe(exc)}; nothing was erased", file=sys.stderr)
    return 1


def _refusal(exc: Exception, args: argparse.Namespace) -> str:
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return (
            f"the ledger's lock was not granted within {args.lock_timeout} s (batches or "
            "dead letters in flight hold it); try again, or raise --lock-timeout"
        )
    if isinstance(exc, asyncpg.QueryCanceledError):
        return (
            f"a statement ran longer than {args.statement_timeout} s while ingest waited; "
            "rolled back (raise --statement-timeout)"
        )
    return str(exc)


async def log_ends(settings: Settings) -> LogEnds:
    """{topic: {partition: end offset}} of both consumed topics, read from the broker now."""
    consumer = KafkaPostgresClients(settings).reader("forget", timeout_s=CONNECT_TIMEOUT_S)
    await consumer.start()
    try:
        tps = []
        for topic in settings.topics:
            found = await partitions(consumer, topic)
            if not found:
                raise ForgetError(
                    f"topic {topic!r} has no partitions on the broker (check "
                    "WORKER_PROCTORING_TOPIC and WORKER_INTERVIEW_TOPIC)"
                )
            tps += found
        bounds = await log_bounds(consumer, tps)
    finally:
        await consumer.stop()
    ends: LogEnds = {}
    for tp, (_, end) in sorted(bounds.items()):
        ends.setdefault(tp.topic, {})[str(tp.partition)] = end
    return ends


async def _stored_ends(conn: asyncpg.Connection, ends: LogEnds) -> LogEnds:
    """`ends` with each partition raised to the highest next offset stored for it (any
    group): records below it are in the tables or were discarded, all before this lock."""
    raised = {t: dict(parts) for t, parts in ends.items()}
    rows = await conn.fetch(
        "SELECT topic, partition, max(next_offset) AS stored FROM consumer_offsets "
        "WHERE topic = ANY($1::text[]) GROUP BY topic, partition",
        list(ends),
    )
    for r in rows:
        parts = raised[r["topic"]]
        key = str(r["partition"])
        parts[key] = max(parts.get(key, 0), r["stored"])
    return raised


def _delete_statement() -> str:
    """ONE statement deleting the rows naming the ids $1 from every table of NAMING (one
    snapshot, one round trip while ingest waits): rows (table index, NULL, rows deleted) and
    (table index, URL, NULL) for the URLs the deleted rows held."""
    ctes: list[str] = []
    selects: list[str] = []
    for i, n in enumerate(NAMING):
        returning = ", ".join(n.urls) if n.urls else "1"
        ctes.append(f"d{i} AS (DELETE FROM {n.table} WHERE {n.where} RETURNING {returning})")
        selects.append(f"SELECT {i} AS t, NULL::text AS url, count(*) AS n FROM d{i}")
        if n.urls:
            selects.append(
                f"SELECT {i}, u, NULL FROM d{i} CROSS JOIN LATERAL "
                f"unnest(ARRAY[{', '.join(n.urls)}]) u WHERE u IS NOT NULL"
            )
    return f"WITH {', '.join(ctes)} {' UNION ALL '.join(selects)} ORDER BY 1, 2 NULLS FIRST"


_DELETE = _delete_statement()

# The ledger's rows of one request and its counts, in one statement: the count of erasures
# numbers the request (the lock serialises requests), and `erasure_state` keeps counting for
# replicas of the previous release.
_RECORD = """
WITH counted AS (UPDATE erasure_lock SET erasures = erasures + 1 RETURNING erasures),
     previous AS (UPDATE erasure_state SET erasures = erasures + 1)
INSERT INTO erasures (subject, erased_at, log_ends, rows_deleted, request_id)
SELECT s, $2, $3::jsonb, $4::jsonb, counted.erasures FROM unnest($1::bytea[]) s, counted
RETURNING request_id
"""


async def _delete(conn: asyncpg.Connection, ids: list[str]) -> tuple[dict[str, int], list[str]]:
    """Delete the rows naming `ids`; the rows per table and the URLs they held."""
    deleted: dict[str, int] = {}
    urls: list[str] = []
    for r in await conn.fetch(_DELETE, ids):
        if r["url"] is None:
            deleted[NAMING[r["t"]].table] = r["n"]
        else:
            urls.append(r["url"])
    return deleted, list(dict.fromkeys(urls))


async def erase(
    conn: asyncpg.Connection,
    who: Person | str,
    read_log_ends: Callable[[], Awaitable[LogEnds]],
    bounds: Bounds = Bounds(),
    args: argparse.Namespace | None = None,
) -> Erasure:
    """Erase `who` (a Person, or a candidate id) in one transaction; the log ends are read
    (`await read_log_ends()`) before the ledger's lock is taken. With `args`, the audit row
    is appended in the same transaction."""
    person = Person.of(who)
    ends = await read_log_ends()
    key = await conn.fetchval(KEY)
    async with conn.transaction(isolation="read_committed"):
        # One round trip: the bounds, then the two locks (batches in flight, letters in flight).
        await conn.execute(
            f"SET LOCAL lock_timeout = {int(bounds.lock_timeout_s * 1000)}; "
            f"SET LOCAL statement_timeout = {int(bounds.statement_timeout_s * 1000)}; "
            "LOCK TABLE erasure_lock, erasure_state IN EXCLUSIVE MODE; "
            f"SELECT pg_advisory_xact_lock({LETTERS_LOCK_ID})"
        )
        ids = await person.ids(conn)
        ends = await _stored_ends(conn, ends)
        deleted, urls = await _delete(conn, ids)
        subjects = person.subjects(key, ids)
        request_id = await conn.fetchval(
            _RECORD,
            subjects,
            dt.datetime.now(dt.UTC),
            json.dumps(ends),
            json.dumps(deleted),
        )
        done = Erasure(ids, deleted, urls, ends, request_id)
        done.counts = {"linked_ids": len(ids), "deleted": deleted, "urls": len(urls)}
        if args is not None:
            done.audit_id = await audit.record(
                conn, "forget --execute", args, subjects, done.counts
            )
    return done


async def _forget(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    person = Person.of(args)
    bounds = Bounds(args.lock_timeout, args.statement_timeout)
    conn = await connect(settings)
    try:
        if args.execute:
            done = await erase(conn, person, lambda: log_ends(settings), bounds, args)
            result: dict[str, Any] = {
                "executed": True,
                **person.describe(),
                "linked_ids": done.ids,
                "deleted": done.deleted,
                "urls": done.urls,
                "log_ends": done.log_ends,
            }
        else:
            key = await conn.fetchval(KEY)
            ids = await person.ids(conn)
            would = await count_rows(conn, ids)
            urls = await media_urls(conn, ids)
            counts = {"linked_ids": len(ids), "would_delete": would, "urls": len(urls)}
            await audit.record(conn, "forget", args, person.subjects(key, ids), counts)
            result = {
                "executed": False,
                **person.describe(),
                "linked_ids": ids,
                "would_delete": would,
                "urls": len(urls),
            }
    finally:
        await conn.close()
    if args.json:
        json.dump(result, out, indent=2, ensure_ascii=False)
        out.write("\n")
        return 0
    _print(result, out)
    return 0


def _print(result: dict[str, Any], out: TextIO) -> None:
    executed = result["executed"]
    ids = result["linked_ids"]
    if "email" in result:
        linked = ", ".join(ids) if ids else "none stored"
        out.write(f"email {result['email']} links {len(ids)} candidate ids: {linked}\n")
    counts = result["deleted" if executed else "would_delete"]
    width = max(len(t) for t in counts)
    verb = "deleted" if executed else "would delete"
    for table, n in counts.items():
        out.write(f"{table:<{width}}  {verb} {n}\n")
    urls = len(result["urls"]) if executed else result["urls"]
    if executed:
        out.write(
            f"erased: {sum(counts.values())} rows, {urls} media URLs (--json lists them); "
            "records of this person below these log ends will not be stored again: "
            f"{json.dumps(result['log_ends'])}\n"
        )
    else:
        out.write(
            f"dry run: nothing deleted; the rows hold {urls} media URLs (add --execute to erase)\n"
        )
