"""Each table's place in a Citus cluster (docs/scaling.md), declared once.

Citus cannot be installed here, so the layout is a design the code is checked against rather
than a deployment: tests/test_citus_ready.py reads this map, the migrated catalogue and every
statement the worker sends, and fails when

- a table of the schema is missing here (a new table needs a decision, not a default);
- a primary key or unique constraint of a distributed table lacks its distribution column
  (Citus enforces uniqueness per shard, so it can only promise it when the key pins a shard);
- an `ON CONFLICT ... DO UPDATE`, `UPDATE ... SET` or `RETURNING` holds a function that is not
  immutable (Citus evaluates those on the shards and refuses anything the shards could
  evaluate differently: "functions used in the DO UPDATE SET clause of INSERTs on distributed
  tables must be marked IMMUTABLE"). The worker binds times such as `updated_at` itself, taken
  once per transaction (`worker.clock.transaction_time`).

The table of docs/scaling.md is `python -m worker.distribution`; the test checks it is current.

Co-location: tables in one group share their shard placement, so a statement or transaction
that touches the same distribution value in all of them stays on one node.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    # Sharded by `column`: create_distributed_table(table, column, colocate_with => group).
    DISTRIBUTED = "distributed"
    # A full copy on every node: create_reference_table(table). For small tables that every
    # node joins against and that change rarely.
    REFERENCE = "reference"


@dataclass(frozen=True, slots=True)
class Placement:
    kind: Kind
    column: str | None = None
    group: str | None = None  # co-location group (named after its first table)
    why: str = ""


def _distributed(column: str, group: str, why: str) -> Placement:
    return Placement(Kind.DISTRIBUTED, column, group, why)


# The candidate is the data subject (docs/contract.md §7): an erasure, an access request and a
# session's summary all name it, so its proctoring rows share one shard per candidate.
PLACEMENTS: dict[str, Placement] = {
    "proctoring_events": _distributed(
        "candidate_id",
        "candidates",
        "the candidate is the data subject: an erasure (§7), an access request, a session "
        "are one shard",
    ),
    "proctoring_sessions": _distributed(
        "candidate_id", "candidates", "written with the events (the staged path's CTE joins them)"
    ),
    "system_checks": _distributed("candidate_id", "candidates", "as the events"),
    "candidates": _distributed("candidate_id", "candidates", "the register row of the person"),
    "applicants": _distributed(
        "job_application_id",
        "applicants",
        "its key; its candidate_id is a column an event can replace, and a distribution "
        "column never changes",
    ),
    "interviews": _distributed(
        "interview_id", "interviews", "its key; its candidate_id is a register there too"
    ),
    "interview_reports": _distributed(
        "report_id",
        "interview_reports",
        "its key; its candidate_id is only proposed by the part events until the report "
        "event arrives",
    ),
    "proctoring_violations": _distributed(
        "report_id", "interview_reports", "replaced with its report, in the same transaction"
    ),
    "jobs": _distributed(
        "job_id",
        "jobs",
        "written by every applicant and interview event: too busy for a reference table "
        "(a write to one is a write to every node)",
    ),
    "consumer_offsets": _distributed(
        "partition",
        "consumer_offsets",
        "one row per (group, topic, partition); a batch writes the rows of its own partitions",
    ),
    "schema_migrations": Placement(
        Kind.REFERENCE, why="written by `worker migrate` only, read at start"
    ),
    "erasures": Placement(
        Kind.REFERENCE,
        why="the erasure ledger: one row per subject an erasure covers, read by the checks",
    ),
    "erasure_state": Placement(
        Kind.REFERENCE,
        why="one row: the ledger's key, read once by each worker",
    ),
    "erasure_lock": Placement(
        Kind.REFERENCE,
        why="one row: the ledger's lock and count, read FOR SHARE by every batch",
    ),
    "erasure_audit": Placement(
        Kind.REFERENCE,
        why="append-only: one row per `show`, `forget`, `dlq inspect --candidate`",
    ),
    "retention_state": Placement(
        Kind.REFERENCE, why="one row: what retention has dropped, read by every worker"
    ),
    "partition_pauses": Placement(
        Kind.REFERENCE,
        why="a few rows per group, written by `worker pause`, read every 2 s and by every "
        "batch's offset compare-and-set",
    ),
}


def distribution_column(table: str) -> str | None:
    """The column `table` is sharded by; None for a reference table. KeyError if undeclared."""
    return PLACEMENTS[table].column


def markdown() -> str:
    """The layout table of docs/scaling.md (tests/test_citus_ready.py checks it is current)."""
    lines = [
        "| table | placement | distribution column | co-location group | why |",
        "|---|---|---|---|---|",
    ]
    for table, p in PLACEMENTS.items():
        lines.append(f"| {table} | {p.kind.value} | {p.column or ''} | {p.group or ''} | {p.why} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
