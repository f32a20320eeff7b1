"""A person as an operator names them in an access or erasure request (docs/contract.md §7):
one candidate id (`--candidate`), or an email (`--email`) that links every id it is known by.

An email is compared by its normal form (trimmed, lower-cased: `erasure.normal_email`) and
links the candidate ids that are the same email (a Proctorme `candidateId` or a micro1
`candidate_id` that is an address: the partial indexes of sql/010 hold exactly the ids with
an `@`) and the micro1 ids whose stored email is (`candidates.email` from
`candidate_email_id`, `applicants.email` from `email_id`). PostgreSQL's `lower()` follows the
database's collation, so the database only narrows the rows down (sql/010: a usual name by
its key, every unusual one) and Python compares the normal forms.

`NAMING` declares, once, every table with rows that name a candidate, the condition that
selects the rows of the ids `$1` (text[]), and the columns that hold URLs of media kept
elsewhere; `forget` and `show` read and delete through it. Every table is reached by its own
`candidate_id` except `proctoring_violations` (through its report) and `proctoring_events`,
which has no index by candidate and is reached through the candidate's sessions (a stored
event always has its session: see docs/contract.md §7).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

from worker import erasure


class Naming(NamedTuple):
    table: str
    where: str  # selects the rows naming the ids $1 (text[])
    urls: tuple[str, ...] = ()  # columns holding URLs of media kept elsewhere


# In the order an erasure deletes them (a report's violations before the report; events
# before the sessions that lead to them).
NAMING: tuple[Naming, ...] = (
    Naming(
        "proctoring_violations",
        "report_id IN (SELECT report_id FROM interview_reports WHERE candidate_id = ANY($1))",
    ),
    Naming(
        "interview_reports",
        "candidate_id = ANY($1)",
        (
            "report_url",
            "recording_url_from_report",
            "recording_url_from_event",
            "interview_recording_player_url",
            "interview_webcam_recording_url",
            "interview_webcam_recording_player_url",
        ),
    ),
    Naming("interviews", "candidate_id = ANY($1)"),
    Naming("applicants", "candidate_id = ANY($1)", ("resume_url",)),
    Naming("candidates", "candidate_id = ANY($1)"),
    Naming(
        "proctoring_events",
        "(exam_id, candidate_id) IN "
        "(SELECT exam_id, candidate_id FROM proctoring_sessions WHERE candidate_id = ANY($1))",
        ("media_url",),
    ),
    Naming("system_checks", "candidate_id = ANY($1)"),
    Naming("proctoring_sessions", "candidate_id = ANY($1)"),
)

# What an email may link: (candidate_id, the stored email or the id that is an address) of the
# rows whose name is usual with the normal form's key ($1), and of every row whose name is
# unusual (sql/010: each kind through an index of its own). `linked_ids` keeps those whose
# name's normal form is the address.
_EMAILS = ("candidates", "applicants")
_ADDRESSES = (
    "proctoring_sessions",
    "system_checks",
    "candidates",
    "applicants",
    "interviews",
    "interview_reports",
)
_USUAL_OR_NOT = ("worker_email_key({}) = $1", "worker_email_unusual({})")
LINK_CANDIDATES = " UNION ALL ".join(
    [
        *(
            f"SELECT candidate_id, email FROM {t} WHERE {where.format('email')}"
            for t in _EMAILS
            for where in _USUAL_OR_NOT
        ),
        *(
            f"SELECT candidate_id, candidate_id FROM {t} "
            f"WHERE candidate_id LIKE '%@%' AND {where.format('candidate_id')}"
            for t in _ADDRESSES
            for where in _USUAL_OR_NOT
        ),
    ]
)
KEY = "SELECT key FROM erasure_state"


def identifier(text: str) -> str:
    """An argparse type: the value trimmed of surrounding white space, never empty."""
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def add_person_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """`--candidate ID | --email ADDRESS` (one of them; or neither unless `required`)."""
    who = parser.add_mutually_exclusive_group(required=required)
    who.add_argument("--candidate", type=identifier, metavar="ID", help="the candidate's id")
    who.add_argument(
        "--email",
        type=identifier,
        metavar="ADDRESS",
        help="a person by their email (any case): every id it is linked to",
    )


@dataclass(frozen=True, slots=True)
class Person:
    candidate: str | None = None
    email: str | None = None

    @classmethod
    def of(cls, who: Person | str | argparse.Namespace) -> Person:
        if isinstance(who, Person):
            return who
        if isinstance(who, str):
            return cls(candidate=who)
        return cls(candidate=who.candidate, email=who.email)

    async def ids(self, conn: asyncpg.Connection) -> list[str]:
        """The candidate ids the request covers: the one named, or those the email links."""
        if self.email is None:
            assert self.candidate is not None
            return [self.candidate]
        return await linked_ids(conn, self.email)

    def subjects(self, key: bytes, ids: Sequence[str]) -> list[bytes]:
        """The ledger's subjects of the request: each id, and the email."""
        found = [erasure.subject(key, i) for i in ids]
        if self.email is not None:
            found.append(erasure.email_subject(key, self.email))
        return list(dict.fromkeys(found))

    def describe(self) -> dict[str, Any]:
        return {"candidate_id": self.candidate} if self.email is None else {"email": self.email}


async def linked_ids(conn: asyncpg.Connection, email: str) -> list[str]:
    """The candidate ids `email` links, sorted: ids that are the same email, and ids whose
    stored email is (docs/contract.md §7: the same by normal form)."""
    address = erasure.normal_email(email)
    rows = await conn.fetch(LINK_CANDIDATES, address)
    return sorted({cid for cid, name in rows if erasure.normal_email(name) == address})


async def count_rows(conn: asyncpg.Connection, ids: Sequence[str] | str) -> dict[str, int]:
    """Rows that name any of `ids`, per table."""
    ids = [ids] if isinstance(ids, str) else list(ids)
    return {
        n.table: await conn.fetchval(f"SELECT count(*) FROM {n.table} WHERE {n.where}", ids)
        for n in NAMING
    }


async def media_urls(conn: asyncpg.Connection, ids: Sequence[str]) -> list[str]:
    """The URLs the rows naming `ids` hold, once each, in table order."""
    found: list[str] = []
    for n in NAMING:
        for column in n.urls:
            rows = await conn.fetch(
                f"SELECT DISTINCT {column} FROM {n.table} WHERE {n.where} "
                f"AND {column} IS NOT NULL ORDER BY 1",
                list(ids),
            )
            found.extend(r[0] for r in rows)
    return list(dict.fromkeys(found))


async def stored_rows(conn: asyncpg.Connection, ids: Sequence[str] | str) -> dict[str, list[Any]]:
    """{table: [row as a JSON document]} of the rows naming `ids`."""
    ids = [ids] if isinstance(ids, str) else list(ids)
    found: dict[str, list[Any]] = {}
    for n in NAMING:
        rows = await conn.fetch(
            f"SELECT to_jsonb(t)::text FROM {n.table} t WHERE {n.where} ORDER BY 1", ids
        )
        found[n.table] = [json.loads(r[0]) for r in rows]
    return found
