"""The erasure ledger at ingest (contract §7): a record that names an erased candidate and was
already in the log when the erasure was made stores nothing.

`worker forget --execute` (worker/tools/forget.py) deletes every row naming the candidate and,
in the same transaction, adds a row to `erasures`: the candidate's *subject* (an HMAC-SHA256 of
the identifier under the database's own random key, never the identifier in clear) and the end
offset of every partition of the consumed topics at that moment. From then on, in every batch:

- a record whose candidate's subject is in the ledger and whose offset is below that erasure's
  end for its partition is old: it was in the log when the erasure was made, so it is dropped
  and counted (`worker_records_erased_total{topic}`); its offset commits with the batch;
- a record `worker dlq replay` sent back is a new record at a new offset, but it carries
  `dlq.replay.origin` (where the record first was): it is old when that origin is;
- anything else is new, produced after the erasure, and stored as usual.

Why the check cannot race an erasure: every batch transaction first reads the one row of
`erasure_state` FOR SHARE (after its offsets' compare-and-set, before it writes any row), and an
erasure transaction first UPDATEs that row. A batch that read it before commits before the
erasure can go on, and the erasure then deletes what it wrote; a batch that comes later waits for
the erasure to commit, and PostgreSQL hands it the row's new version (`erasures` + 1), so its
next statement sees the new ledger entry. The row also says how many erasures there are: with
none, which is every deployment until its first `forget`, the check costs that one read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from schemas import proctoring as pr
from worker.dlq import Header
from worker.handlers.base import Item

# Every table with rows that name a candidate (contract §7), in the order an erasure deletes
# them (a report's violations before the report; events before the sessions that lead to
# them), with the condition that selects the rows of candidate $1. proctoring_events and
# system_checks have no index by candidate: they are reached through the candidate's
# sessions, whose keys lead theirs (every stored event has its session).
NAMING: tuple[tuple[str, str], ...] = (
    (
        "proctoring_violations",
        "report_id IN (SELECT report_id FROM interview_reports WHERE candidate_id = $1)",
    ),
    ("interview_reports", "candidate_id = $1"),
    ("interviews", "candidate_id = $1"),
    ("applicants", "candidate_id = $1"),
    ("candidates", "candidate_id = $1"),
    (
        "proctoring_events",
        "(exam_id, candidate_id) IN "
        "(SELECT exam_id, candidate_id FROM proctoring_sessions WHERE candidate_id = $1)",
    ),
    (
        "system_checks",
        "(exam_id, candidate_id) IN "
        "(SELECT exam_id, candidate_id FROM proctoring_sessions WHERE candidate_id = $1)",
    ),
    ("proctoring_sessions", "candidate_id = $1"),
)

# Read first in every batch transaction (see the module docstring for why FOR SHARE).
_STATE = "SELECT erasures, key FROM erasure_state FOR SHARE"
_ENDS = "SELECT subject, log_ends::text FROM erasures WHERE subject = ANY($1::bytea[])"

Ends = dict[tuple[str, int], int]  # (topic, partition) -> end offset at the erasure
RecordOf = Callable[[Item], Any]  # the ConsumerRecord an item was decoded from


def subject(key: bytes, candidate_id: str) -> bytes:
    """How the ledger names a candidate: HMAC-SHA256 under the database's key."""
    return hmac.new(key, candidate_id.encode(), hashlib.sha256).digest()


def candidate_of(event: Any) -> str:
    """The candidate an event names: every event type of both topics carries one."""
    if isinstance(event, pr.ProctoringEvent):
        return event.candidateId
    return event.data.candidate_id


def parse_ends(log_ends: str) -> Ends:
    """The `log_ends` document ({topic: {partition: end}}, as text) as a lookup."""
    doc = json.loads(log_ends)
    return {(t, int(p)): int(end) for t, parts in doc.items() for p, end in parts.items()}


def parse_origin(record: Any) -> tuple[str, int, int] | None:
    """The `dlq.replay.origin` header of a replayed record: (topic, partition, offset)."""
    for name, value in record.headers or ():
        if name == Header.REPLAY_ORIGIN and value:
            topic, _, rest = value.decode("utf-8", "replace").rpartition(":")
            topic, _, partition = topic.rpartition(":")
            try:
                return topic, int(partition), int(rest)
            except ValueError:
                return None
    return None


async def erasure_count(conn: asyncpg.Connection) -> tuple[int, bytes]:
    row = await conn.fetchrow(_STATE)
    return row["erasures"], row["key"]


async def screen(
    conn: asyncpg.Connection, items: Sequence[Item], record_of: RecordOf
) -> tuple[Sequence[Item], list[Item]]:
    """`items` without the old records of erased candidates, and those records. Run in the
    batch's transaction before anything is written."""
    erasures, key = await erasure_count(conn)
    if not erasures or not items:
        return items, []
    by_candidate = {c: subject(key, c) for c in {candidate_of(i.event) for i in items}}
    rows = await conn.fetch(_ENDS, list(by_candidate.values()))
    if not rows:
        return items, []
    ends_of: dict[bytes, Ends] = {}
    for row in rows:
        ends = ends_of.setdefault(row["subject"], {})
        for tp, end in parse_ends(row["log_ends"]).items():
            ends[tp] = max(end, ends.get(tp, 0))
    kept: list[Item] = []
    erased: list[Item] = []
    for item in items:
        ends = ends_of.get(by_candidate[candidate_of(item.event)])
        (erased if ends is not None and _old(item, ends, record_of) else kept).append(item)
    return kept, erased


def _old(item: Item, ends: Ends, record_of: RecordOf) -> bool:
    if item.offset < ends.get((item.topic, item.partition), 0):
        return True
    origin = parse_origin(record_of(item))
    return origin is not None and origin[2] < ends.get((origin[0], origin[1]), 0)
