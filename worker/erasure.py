"""The erasure ledger at ingest (docs/contract.md §7): a record that names an erased person and
was already in the log when the erasure was made stores nothing, and is not dead-lettered.

`worker forget --execute` (worker/tools/forget.py) deletes every row naming the person and, in
the same transaction, adds one `erasures` row per *subject* it covers: an HMAC-SHA256 under the
database's own random key of each linked candidate id, and of the lower-cased email when the
person was named by one (never an identifier in clear), with the end offset of every partition
of the consumed topics. From then on, in every batch and before every dead letter:

- a record's names are its candidate id and, lower-cased, its email fields
  (`candidate_email_id`, `email_id`) and its candidate id when that is an address; a dead
  letter's are every JSON string of its raw value (it may not parse);
- it is *old* when one of its names' subjects is in the ledger and ANY of its coordinates lies
  below that erasure's end for the coordinate's partition: its own, and those of the records
  it replays, believed only when signed (worker/origin.py). An old record is dropped and
  counted (`worker_records_erased_total{topic}`); its offset commits with the batch;
- anything else is new, produced after the erasure, and stored (or dead-lettered) as usual.

Why the check cannot race an erasure: every batch transaction, at READ COMMITTED (set, never
inherited), first reads the one row of `erasure_lock` FOR SHARE (after its offsets'
compare-and-set, before it writes any row), and an erasure first takes `LOCK TABLE erasure_lock
IN EXCLUSIVE MODE`, which conflicts with that share lock. A batch that read the row first
commits before the erasure goes on, and the erasure then deletes what it wrote; a batch that
comes later waits for the erasure to commit (queued behind it, so a stream of batches cannot
starve it), and its next statement, with a fresh snapshot, sees the new ledger rows. Dead
letters are screened and published while the worker holds the ledger's advisory lock in share
mode (a session lock: no transaction stays open while the broker is slow), and an erasure
takes it exclusively inside its transaction, so it cannot commit between a screen and the
broker's acknowledgement of what passed it. The row also counts the erasures: with none,
which is every deployment until its first `forget`, the check costs that one read. The key is
read once, at start, from `erasure_state`, a table the worker only reads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import asyncpg

from schemas import proctoring as pr
from worker import origin
from worker.dlq import DeadLetter
from worker.handlers.base import Item

# Read first in every batch transaction (see the module docstring for why FOR SHARE).
LOCK_SHARED = "SELECT erasures FROM erasure_lock FOR SHARE"
_COUNT = "SELECT erasures FROM erasure_lock"
# The advisory lock between dead letters in flight (shared) and an erasure (exclusive, taken in
# its transaction): "event-worker" and 2, as worker/migrate.py's is 1.
LETTERS_LOCK_ID = 0x6576_656E_7477_6B02
_KEY = "SELECT key FROM erasure_state"
_ENDS = "SELECT subject, log_ends::text FROM erasures WHERE subject = ANY($1::bytea[])"

# Identity keys are at most 512 characters (docs/contract.md §3): longer strings of a dead
# letter's value name nobody. Escaped, a character takes at most 12 characters (an astral one as
# two \u escapes), so a longer raw string is longer than any identifier.
MAX_NAME = 512
MAX_ESCAPED = 12 * MAX_NAME
# Every JSON string, quote to quote (empty ones too, or the scan would pair the wrong quotes).
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
# Subjects of emails are HMACs in a domain of their own: no id can collide with one.
_EMAIL_DOMAIN = b"\x00email\x00"

Ends = dict[tuple[str, int], int]  # (topic, partition) -> end offset at the erasure
RecordOf = Callable[[Item], Any]  # the ConsumerRecord an item was decoded from
# What a record names: its candidate id, or (id, email) when it carries an email too.
Names = str | tuple[str, str]


def subject(key: bytes, candidate_id: str) -> bytes:
    """How the ledger names a candidate id: HMAC-SHA256 under the database's key."""
    return hmac.digest(key, candidate_id.encode(), hashlib.sha256)


def normal_email(address: str) -> str:
    """An email as the ledger compares it: trimmed and lower-cased."""
    return address.strip().lower()


def email_subject(key: bytes, address: str) -> bytes:
    """How the ledger names an email (any case)."""
    return hmac.digest(key, _EMAIL_DOMAIN + normal_email(address).encode(), hashlib.sha256)


def subjects_of(key: bytes, name: str) -> tuple[bytes, ...]:
    """Every subject a name can match: as an id, and as an email if it has an `@`."""
    found = subject(key, name)
    return (found, email_subject(key, name)) if "@" in name else (found,)


def candidate_of(event: Any) -> str:
    """The candidate an event names: every event type of both topics carries one."""
    if isinstance(event, pr.ProctoringEvent):
        return event.candidateId
    return event.data.candidate_id


def names_of(event: Any) -> Names:
    """The candidate id an event names, with the email it carries (`candidate_email_id` of
    interview.started and interview_report.created, `email_id` of applicant.*) if any."""
    if isinstance(event, pr.ProctoringEvent):
        return event.candidateId
    data = event.data
    email = getattr(data, "candidate_email_id", None) or getattr(data, "email_id", None)
    return data.candidate_id if email is None else (data.candidate_id, email)


def value_names(value: bytes | None) -> set[str]:
    """The JSON strings of a raw value (parsed or not) that could be identifiers: each string
    quote to quote, and the text between any two consecutive quotes, since in a value that is
    not valid JSON a stray quote or a broken escape pairs the quotes wrongly and would hide
    the id after it (docs/contract.md §7)."""
    text = (value or b"").decode("utf-8", "replace")
    raws = [m.group(1) for m in _STRING.finditer(text)]
    raws += text.split('"')[1:-1]
    found: set[str] = set()
    for raw in raws:
        if not raw or len(raw) > MAX_ESCAPED:
            continue
        try:
            name = json.loads(f'"{raw}"')
        except ValueError:
            name = raw
        if name and len(name) <= MAX_NAME:
            found.add(name)
    return found


def parse_ends(log_ends: str) -> Ends:
    """The `log_ends` document ({topic: {partition: end}}, as text) as a lookup."""
    doc = json.loads(log_ends)
    return {(t, int(p)): int(end) for t, parts in doc.items() for p, end in parts.items()}


def _merge(into: Ends, ends: Ends) -> None:
    for tp, end in ends.items():
        into[tp] = max(end, into.get(tp, 0))


def _below(coordinates: Iterable[origin.Coordinate], ends: Ends) -> bool:
    return any(offset < ends.get((topic, partition), 0) for topic, partition, offset in coordinates)


class Ledger:
    """The ledger as the worker reads it: the key (read once) and the screens."""

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        self.key = key

    @classmethod
    async def load(cls, db: asyncpg.Connection | asyncpg.Pool) -> Ledger:
        return cls(await db.fetchval(_KEY))

    def _subjects(
        self, names: Iterable[str], cache: dict[str, tuple[bytes, ...]]
    ) -> tuple[bytes, ...]:
        """The subjects of `names`, each computed once per screen (`cache`)."""
        out: tuple[bytes, ...] = ()
        for name in names:
            found = cache.get(name)
            if found is None:
                found = cache[name] = subjects_of(self.key, name)
            out += found
        return out

    async def _ends(
        self, conn: asyncpg.Connection, cache: dict[str, tuple[bytes, ...]]
    ) -> dict[bytes, Ends]:
        """{subject: the highest end per partition over its erasures}, for those erased."""
        subjects = list({s for found in cache.values() for s in found})
        ends_of: dict[bytes, Ends] = {}
        for row in await conn.fetch(_ENDS, subjects):
            _merge(ends_of.setdefault(row["subject"], {}), parse_ends(row["log_ends"]))
        return ends_of

    async def screen(
        self, conn: asyncpg.Connection, items: Sequence[Item], record_of: RecordOf
    ) -> tuple[Sequence[Item], list[Item]]:
        """`items` without the old records of erased people, and those records. Run in the
        batch's transaction before anything is written."""
        if not await conn.fetchval(LOCK_SHARED) or not items:
            return items, []
        cache: dict[str, tuple[bytes, ...]] = {}
        by_names = {
            n: self._subjects((n,) if type(n) is str else n, cache)
            for n in {names_of(i.event) for i in items}
        }
        ends_of = await self._ends(conn, cache)
        if not ends_of:
            return items, []
        erased_ends = {n: _erased(s, ends_of) for n, s in by_names.items()}
        kept: list[Item] = []
        erased: list[Item] = []
        for item in items:
            ends = erased_ends[names_of(item.event)]
            old = ends is not None and (
                item.offset < ends.get((item.topic, item.partition), 0)
                or _below(origin.believed(self.key, record_of(item)), ends)
            )
            (erased if old else kept).append(item)
        return kept, erased

    async def screen_letters(
        self, conn: asyncpg.Connection, letters: Sequence[DeadLetter]
    ) -> tuple[list[DeadLetter], list[DeadLetter]]:
        """The dead letters to publish, and those of erased people that were in the log when
        they were erased (the names read from each raw value). Run holding the advisory lock
        in share mode, as `publish_screened` does."""
        if not letters or not await conn.fetchval(_COUNT):
            return list(letters), []
        cache: dict[str, tuple[bytes, ...]] = {}
        subjects = [self._subjects(value_names(d.record.value), cache) for d in letters]
        ends_of = await self._ends(conn, cache)
        kept: list[DeadLetter] = []
        erased: list[DeadLetter] = []
        for letter, named in zip(letters, subjects, strict=True):
            ends = _erased(named, ends_of)
            old = ends is not None and _below(origin.chain(self.key, letter.record), ends)
            (erased if old else kept).append(letter)
        return kept, erased

    async def publish_screened(
        self,
        pool: asyncpg.Pool,
        letters: Sequence[DeadLetter],
        publish: Callable[[Sequence[DeadLetter]], Awaitable[None]],
    ) -> list[DeadLetter]:
        """Screen `letters` and `publish` the rest (awaiting the broker's acknowledgement)
        while holding the advisory lock in share mode: an erasure commits either before the
        screen or after the acknowledgement. No transaction is open meanwhile, so a slow
        broker holds no row lock. Returns the letters kept out."""
        if not letters:
            return []
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock_shared($1)", LETTERS_LOCK_ID)
            try:
                kept, erased = await self.screen_letters(conn, letters)
                await publish(kept)
            finally:
                await conn.execute("SELECT pg_advisory_unlock_shared($1)", LETTERS_LOCK_ID)
        return erased


def _erased(subjects: tuple[bytes, ...], ends_of: dict[bytes, Ends]) -> Ends | None:
    """The ends a record with these subjects is old below, or None if none is erased."""
    found = [ends_of[s] for s in subjects if s in ends_of]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    merged: Ends = {}
    for ends in found:
        _merge(merged, ends)
    return merged
