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
  once per transaction (`worker.handlers.people.Registers.at`).

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


def _distributed(column: str, group: str) -> Placement:
    return Placement(Kind.DISTRIBUTED, column, group)


REFERENCE = Placement(Kind.REFERENCE)

# The candidate is the data subject (CONTRACT §7): an erasure, an access request and a
# session's summary all name it, so its proctoring rows share one shard per candidate.
# interview_reports cannot join that group: its candidate_id is not known until the report
# event arrives (the part events only propose the smallest value) and a distribution column
# never changes, so reports are sharded by report_id with their violations.
PLACEMENTS: dict[str, Placement] = {
    "proctoring_events": _distributed("candidate_id", "candidates"),
    "proctoring_sessions": _distributed("candidate_id", "candidates"),
    "system_checks": _distributed("candidate_id", "candidates"),
    "candidates": _distributed("candidate_id", "candidates"),
    "jobs": _distributed("job_id", "jobs"),
    "applicants": _distributed("job_application_id", "applicants"),
    "interviews": _distributed("interview_id", "interviews"),
    "interview_reports": _distributed("report_id", "interview_reports"),
    "proctoring_violations": _distributed("report_id", "interview_reports"),
    # One row per (group, topic, partition): each batch transaction writes the rows of its
    # own partitions, which by partition number spread over the shards like the data does.
    "consumer_offsets": _distributed("partition", "consumer_offsets"),
    # Written by `worker migrate` only, read at start: the same on every node.
    "schema_migrations": REFERENCE,
}


def distribution_column(table: str) -> str | None:
    """The column `table` is sharded by; None for a reference table. KeyError if undeclared."""
    return PLACEMENTS[table].column
