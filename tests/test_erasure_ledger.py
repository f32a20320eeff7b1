"""The erasure ledger against every path a record can take back into the tables or the
dead-letter topic (docs/contract.md §6, §7), on the real Worker with a scripted Kafka
(tests/support/scripted_kafka.py) and a REAL PostgreSQL; and the commands' rules that need no
broker (roles, trimming, retention's orphans).

Each test is one of issue 25's defects, written to fail on a754101:

- a forged `dlq.replay.origin` (a producer's header kept in a dead letter, or set on a new
  record) can neither bring an erased candidate's old record back nor drop a new one;
- a dead letter of an erased candidate (a replay from offset 0, a dead letter replayed) is not
  published again, and counts as erased;
- a system check whose session retention deleted is still found by `show` and erased by
  `forget`; a proctoring event never outlives its session;
- `show` works for a role with SELECT only, and the worker for a role that cannot UPDATE the
  table holding the ledger's key;
- identifiers are trimmed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from support import infra
from support.e2e import stored_text
from support.scripted_kafka import ScriptedBroker, ScriptedClients, start_worker
from support.storage import apply, db, interview_item, proctoring_item  # noqa: F401  (fixture)
from test_erasure import cli as worker_cli
from test_interleavings import (
    ERASED,
    I0,
    P0,
    Db,
    accounted,
    applicant_of,
    check_common,
    ends_now,
    rows_naming,
    scenario,
    settings,
)

from worker import retention
from worker.config import Settings
from worker.migrate import migrate_url
from worker.tools.dlq.publish import replay_headers
from worker.tools.dlq.read import parse_dead_letter
from worker.tools.forget import count_rows, erase
from worker.tools.person import Person

pytestmark = pytest.mark.integration

ORIGIN = "dlq.replay.origin"
MALFORMED = b'{"event": "applicant.created", "data": {"candidate_id": "' + ERASED.encode() + b'", '
# Invalid JSON whose quotes pair wrongly before the id: an unescaped quote in free text, and a
# backslash before a raw line break (what hand-written producers send; the review of main
# after issue 25 found both published again after an erasure).
STRAY_QUOTE = (
    b'{"event": "applicant.created", "data": {"stage": "5" screen", '
    b'"micro1_job_application_id": "app-1", "candidate_id": "' + ERASED.encode() + b'"}}'
)
BROKEN_ESCAPE = (
    b'{"event": "applicant.created", "data": {"note": "x\\\n", '
    b'"micro1_job_application_id": "app-1", "candidate_id": "' + ERASED.encode() + b'"}}'
)


def dead_letters_naming(broker: ScriptedBroker, dlq: str, candidate: str) -> list[Any]:
    """Records of the dead-letter topic whose value names `candidate`."""
    from aiokafka import TopicPartition

    return [
        r for r in broker.logs[TopicPartition(dlq, 0)] if r.value and candidate.encode() in r.value
    ]


def replay(broker: ScriptedBroker, record: Any) -> int:
    """What `worker dlq replay --execute` sends for the dead letter `record`: its value and
    key back to its original topic and partition, with the replay headers. The offset."""
    from aiokafka import TopicPartition

    view = parse_dead_letter(record)
    assert view.original_topic is not None and view.original_partition is not None
    tp = TopicPartition(view.original_topic, view.original_partition)
    return broker.append(tp, view.value, view.key, replay_headers(view))


# -- 1. forged replay origins -------------------------------------------------------------------


async def test_a_forged_replay_origin_neither_revives_an_erased_record_nor_drops_a_new_one(
    database_url: str,
) -> None:
    """An applicant of the candidate carries a producer's `dlq.replay.origin` pointing far
    ahead, and the database refuses it: it is dead-lettered with that header kept. The
    candidate is erased; the cause is removed; the dead letter is replayed. The replay is the
    candidate's old record: it must store nothing. Then a new record of the candidate, produced
    after the erasure, carries a forged origin at offset 0: it must be stored."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    c = clients.scripted_consumer
    forged_high = f"{I0.topic}:0:999999999".encode()
    forged_low = f"{I0.topic}:0:0".encode()
    async with scenario(database_url, s, clients) as (run, pg, watch):
        await pg._c().execute(
            "ALTER TABLE applicants ADD CONSTRAINT refused "
            "CHECK (candidate_name IS DISTINCT FROM 'Refused') NOT VALID"
        )
        await c.assign({P0, I0})
        refused = applicant_of(ERASED, "app-1").replace(b"Someone", b"Refused")
        c.append(I0, refused, headers=[(ORIGIN, forged_high)])
        await pg.wait_offsets({I0: 1}, run)
        (letter,) = dead_letters_naming(clients.broker, s.dlq_topic, ERASED)
        await pg._c().execute("ALTER TABLE applicants DROP CONSTRAINT refused")

        await erase(await pg.connect(), ERASED, ends_now(clients.broker))
        replayed_at = replay(clients.broker, letter)
        c.append(I0, applicant_of(ERASED, "app-2"), headers=[(ORIGIN, forged_low)])
        await pg.wait_offsets({I0: replayed_at + 2}, run)

        problems: list[str] = []
        apps = {
            r["job_application_id"]
            for r in await pg._c().fetch(
                "SELECT job_application_id FROM applicants WHERE candidate_id = $1", ERASED
            )
        }
        if "app-1" in apps:
            problems.append("the replay of the erased candidate's old record was stored")
        if "app-2" not in apps:
            problems.append("a new record with a forged low origin was dropped")
        check_common(problems, run, watch)
        assert not problems, "\n".join(problems)


# -- 4. dead letters and the ledger -------------------------------------------------------------


@pytest.mark.parametrize(
    "malformed", [MALFORMED, STRAY_QUOTE, BROKEN_ESCAPE], ids=["cut", "stray-quote", "escape"]
)
async def test_b_an_erased_candidates_dead_letter_is_not_published_again(
    database_url: str, malformed: bytes
) -> None:
    """A malformed record naming the candidate is dead-lettered, then the candidate is
    erased. Neither a replay from offset 0 (a new worker, no stored offsets) nor a replay of
    the dead letter may put a new copy of it on the dead-letter topic: both are counted as
    erased, and every record ends in exactly one place. Whatever the value's quotes pair
    into (a cut record, a stray quote, a broken escape before the id)."""
    await migrate_url(database_url)
    s = settings(database_url, db_lanes=1)
    clients = ScriptedClients(s, partitions=1)
    async with scenario(database_url, s, clients) as (run, pg, watch):
        await clients.scripted_consumer.assign({P0, I0})
        clients.scripted_consumer.append(I0, malformed, key=ERASED.encode())
        await pg.wait_offsets({I0: 1}, run)
        (letter,) = dead_letters_naming(clients.broker, s.dlq_topic, ERASED)
        await erase(await pg.connect(), ERASED, ends_now(clients.broker))
        await pg._c().execute("DELETE FROM consumer_offsets")
        problems: list[str] = []
        check_common(problems, run, watch)

    # A replay from offset 0 by a fresh worker, then the dead letter replayed.
    again = ScriptedClients(s, broker=clients.broker)
    async with scenario(database_url, s, again) as (run, pg, watch):
        await again.scripted_consumer.assign({P0, I0})
        end = replay(clients.broker, letter) + 1
        await pg.wait_offsets({I0: end}, run)
        copies = dead_letters_naming(clients.broker, s.dlq_topic, ERASED)
        if len(copies) != 1:
            problems.append(
                f"the dead-letter topic holds {len(copies)} copies of the erased candidate's "
                "record: the replays published it again"
            )
        stats = await accounted(run, end)
        if stats["erased"] != 2:
            problems.append(f"records counted as erased: {stats['erased']}, expected 2")
        placed = stats["stored"] + stats["dead_lettered"] + stats["erased"]
        if placed != stats["consumed"]:
            problems.append(f"not every record ended in one place: {stats}")
        check_common(problems, run, watch)
    assert not problems, "\n".join(problems)


# -- 2. what retention leaves behind -----------------------------------------------------------


def _proctoring(kind: str, created: str, **extra: Any) -> bytes:
    doc = {"examId": "exam-1", "candidateId": ERASED, "type": kind, "createdAt": created}
    return json.dumps({**doc, **extra}).encode()


async def test_c_a_system_check_outliving_its_session_is_shown_and_erased(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    """The browser's clock said 2099, so the system check lives in the far-future partition
    while its session (by the events' createdAt, January 2025) is deleted by retention. `show`
    must still list the check and `forget` must delete it. And no proctoring event may be left
    without its session (events are reached through sessions)."""
    check = {
        "success": True,
        "timestamp": "2099-01-01T00:00:00Z",
        "data": [{"name": "webcam", "status": "success", "finished": True}],
    }
    await apply(
        db,
        [
            proctoring_item(_proctoring("STARTED", "2025-01-10T10:00:00Z"), 0),
            proctoring_item(
                _proctoring("SYSTEM_CHECK_COMPLETED", "2025-01-10T10:01:00Z", systemCheck=check),
                1,
            ),
        ],
    )
    await retention.apply(db, 30)
    assert not await db.fetchval("SELECT count(*) FROM proctoring_sessions"), "not deleted"
    assert await db.fetchval("SELECT count(*) FROM system_checks") == 1, "precondition"
    orphans = await db.fetchval(
        "SELECT count(*) FROM proctoring_events e WHERE NOT EXISTS (SELECT 1 FROM "
        "proctoring_sessions s WHERE (s.exam_id, s.candidate_id) = (e.exam_id, e.candidate_id))"
    )
    problems: list[str] = []
    if orphans:
        problems.append(f"{orphans} proctoring events outlive their session")
    if (await count_rows(db, ERASED))["system_checks"] != 1:
        problems.append("forget's dry run does not count the orphaned system check")
    code, out, err = await cli(database_url, "show", "--candidate", ERASED)
    if code != 0 or len(json.loads(out or "{}").get("tables", {}).get("system_checks", [])) != 1:
        problems.append(f"show does not list the orphaned system check: {code} {out} {err}")
    await erase(db, ERASED, _no_topics)
    left = await db.fetchval("SELECT count(*) FROM system_checks")
    if left:
        problems.append(f"{left} system check of the erased candidate survived the erasure")
    assert not problems, "\n".join(problems)


async def _no_topics() -> dict[str, dict[str, int]]:
    return {"proctoring.events": {"0": 10}, "interview.events": {"0": 10}}


# -- the commands' identifiers and roles -------------------------------------------------------


async def cli(database_url: str, *args: str, user: str | None = None) -> tuple[int, str, str]:
    """`python -m worker ARGS` against `database_url` (as `user` when given) and no broker:
    none of these commands may need one."""
    url = database_url if user is None else as_role(database_url, user)
    return await worker_cli(
        dataclasses.replace(Settings(), database_url=url, bootstrap_servers="127.0.0.1:1"), *args
    )


def as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{role}-pw@{host}"))


async def _role(url: str, *grants: str) -> AsyncIterator[str]:
    name = infra.unique_name("role_")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{name}-pw'")
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {name}')
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {name}")
        for grant in grants:
            await conn.execute(grant.format(role=name))
        yield name
    finally:
        await conn.execute(f"DROP OWNED BY {name}")
        await conn.execute(f"DROP ROLE {name}")
        await conn.close()


@pytest.fixture
async def reader_role(database_url: str) -> AsyncIterator[str]:
    """A role that can only read every table (and run functions, as PUBLIC may)."""
    await migrate_url(database_url)
    async for name in _role(database_url, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"):
        yield name


async def test_d_show_works_for_a_role_that_can_only_select(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
    reader_role: str,
) -> None:
    await apply(db, [interview_item(applicant_of(ERASED, "app-1"))])
    await erase(db, "someone-else", _no_topics)  # the ledger is not empty
    code, out, err = await cli(database_url, "show", "--candidate", ERASED, user=reader_role)
    assert code == 0, f"show failed for a SELECT-only role: {err.strip()}"
    assert len(json.loads(out)["tables"]["applicants"]) == 1


async def test_e_identifiers_are_trimmed(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    await apply(db, [interview_item(applicant_of(ERASED, "app-1"))])
    code, out, err = await cli(database_url, "show", "--candidate", f"  {ERASED}\t")
    assert code == 0, err
    assert len(json.loads(out)["tables"]["applicants"]) == 1, "the id was not trimmed"
    code, out, err = await cli(database_url, "forget", "--candidate", "   ")
    assert code == 2 and "empty" in err and not out, (code, out, err)


async def test_f_the_worker_needs_no_update_on_the_ledgers_key(database_url: str) -> None:
    """The worker's role may write every table but the one holding the ledger's key, which it
    may only read: it stores records, and keeps an erased candidate's old records out."""
    await migrate_url(database_url)
    grants = (
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        "REVOKE INSERT, UPDATE, DELETE ON erasure_state FROM {role}",
    )
    async for role in _role(database_url, *grants):
        s = settings(as_role(database_url, role), db_lanes=1, auto_migrate=False)
        clients = ScriptedClients(s, partitions=1)
        async with start_worker(s, clients) as run, Db(database_url, s.group_id) as pg:
            await erase(await pg.connect(), ERASED, ends_now(clients.broker))
            await run.consumer.assign({P0, I0})
            run.consumer.append(I0, applicant_of("someone", "app-1"))
            problems: list[str] = []
            try:
                await pg.wait_offsets({I0: 1}, run, timeout=10)
            except AssertionError as exc:
                problems.append(str(exc))
            if await rows_naming(pg, "someone") != {"applicants": 1, "candidates": 1}:
                problems.append(f"not stored: {await rows_naming(pg, 'someone')}")
            if run.producer.sent:
                problems.append(
                    f"dead letters: {[s.header('dlq.error') for s in run.producer.sent]}"
                )
            check_common(problems, run, None)
            assert not problems, "\n".join(problems)


# -- the rest of the rules ---------------------------------------------------------------------


async def test_g_every_url_column_is_declared_for_the_storage_job(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    """`forget --execute --json` lists the URLs of the rows it deletes, from the columns
    NAMING declares: every column of the schema that holds a URL must be one of them."""
    from worker.tools.person import NAMING

    rows = await db.fetch(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN pg_class k ON k.relname = c.table_name AND NOT k.relispartition "
        "WHERE c.table_schema = current_schema() AND c.column_name LIKE '%url%' "
        "AND c.is_generated = 'NEVER'"
    )
    columns = {(r["table_name"], r["column_name"]) for r in rows}
    declared = {(n.table, c) for n in NAMING for c in n.urls}
    assert columns, "no URL column found: the query is wrong"
    assert columns == declared


async def test_h_the_audit_trail_is_append_only(
    db: asyncpg.Connection,  # noqa: F811
) -> None:
    await db.fetchval(
        "SELECT erasure_audit_append('show', 'me', NULL, ARRAY['\\x00'::bytea], '{}'::jsonb)"
    )
    for statement in (
        "UPDATE erasure_audit SET operator = 'someone else'",
        "DELETE FROM erasure_audit",
        "TRUNCATE erasure_audit",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
    assert await db.fetchval("SELECT operator FROM erasure_audit") == "me"


async def test_i_an_erasure_gives_up_within_its_lock_timeout_and_changes_nothing(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    """A batch transaction that never ends holds the ledger's lock in share mode: the erasure
    gives up after its lock timeout, deletes nothing and records nothing."""
    from worker.tools.forget import Bounds

    await apply(db, [interview_item(applicant_of(ERASED, "app-1"))])
    batch = await asyncpg.connect(database_url)
    try:
        tx = batch.transaction()
        await tx.start()
        await batch.fetchval("SELECT erasures FROM erasure_lock FOR SHARE")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(erase(db, ERASED, _no_topics, Bounds(0.3, 5.0)), 10)
        await tx.rollback()
    finally:
        await batch.close()
    assert await rows_naming_conn(db, ERASED) == {"applicants": 1, "candidates": 1}
    assert not await db.fetchval("SELECT count(*) FROM erasures")
    assert not await db.fetchval("SELECT erasures FROM erasure_lock")


async def rows_naming_conn(conn: asyncpg.Connection, candidate: str) -> dict[str, int]:
    return {t: n for t, n in (await count_rows(conn, candidate)).items() if n}


async def test_j_show_by_email_links_every_id_and_audits_without_identifiers(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    """An address links the micro1 ids whose stored email it is (any case) and a Proctorme id
    that is the address; another address links nothing. `show` and `worker audit` agree, and
    the audit rows name nobody in clear."""
    applicant = json.loads(applicant_of("m1-a", "app-1"))
    applicant["data"]["email_id"] = "Jo@Example.org"
    started = {
        "event": "interview.started",
        "data": {
            "interview_id": "i-1",
            "candidate_id": "m1-b",
            "candidate_email_id": "JO@example.ORG",
        },
    }
    await apply(
        db,
        [
            interview_item(json.dumps(applicant).encode(), 0),
            interview_item(json.dumps(started).encode(), 1),
            interview_item(applicant_of("m1-c", "app-2"), 2),  # no email
            proctoring_item(
                _proctoring("STARTED", "2025-01-10T10:00:00Z").replace(
                    ERASED.encode(), b"jo@example.org"
                ),
                3,
            ),
        ],
    )
    code, out, err = await cli(database_url, "show", "--email", " jo@EXAMPLE.org ", "--by", "dpo")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["linked_ids"] == ["jo@example.org", "m1-a", "m1-b"]
    assert len(doc["tables"]["proctoring_sessions"]) == 1
    code, out, err = await cli(database_url, "show", "--email", "nobody@example.org")
    assert code == 0 and json.loads(out)["linked_ids"] == [], (out, err)
    code, out, err = await cli(database_url, "audit", "--candidate", "m1-b", "--json")
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["command"] == "show" and row["operator"] == "dpo"
    assert row["counts"]["linked_ids"] == 3
    for stored in await db.fetch("SELECT * FROM erasure_audit"):
        text = " ".join(stored_text(v) for v in stored.values())
        assert "jo@" not in text.lower() and "m1-" not in text, text


async def _no_log_ends() -> dict[str, dict[str, int]]:
    return {}


@pytest.mark.parametrize(
    "stored",
    ["ann@example.com ", "\tAnn@Example.com", "ÄNN@example.com", "änn@example.com\u00a0"],
    ids=["blank-after", "tab-before", "non-ascii-capital", "nbsp-after"],
)
async def test_k_an_email_links_every_stored_form_the_ledger_calls_the_same(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
    stored: str,
) -> None:
    """The ledger calls two emails the same when their normal forms (trimmed, lower-cased as
    Python does) are equal, so `show` and `forget --email` must link by that form too,
    whatever PostgreSQL's lower() does in the database's locale (C here: ASCII only) and with
    blanks around a stored email or an id that is an address. Failed on main after issue 25:
    `show` linked [] and `forget` left the applicant and candidate rows."""
    asked = "änn@example.com" if "Ä" in stored or "ä" in stored else "ann@example.com"
    applicant = json.loads(applicant_of("m1-odd", "app-odd"))
    applicant["data"]["email_id"] = stored
    await apply(
        db,
        [
            interview_item(json.dumps(applicant).encode(), 0),
            proctoring_item(
                _proctoring("STARTED", "2025-01-10T10:00:00Z").replace(
                    ERASED.encode(), f" {asked.upper()}".encode()
                ),
                1,
            ),
            interview_item(applicant_of("m1-other", "app-other"), 2),
        ],
    )
    code, out, err = await cli(database_url, "show", "--email", asked)
    assert code == 0, err
    address_id = f" {asked.upper()}"
    assert json.loads(out)["linked_ids"] == sorted([address_id, "m1-odd"]), out
    conn = await asyncpg.connect(database_url)
    try:
        done = await erase(conn, Person(email=asked), _no_log_ends)
    finally:
        await conn.close()
    assert done.ids == sorted([address_id, "m1-odd"])
    left = {t: n for t, n in (await count_rows(db, done.ids)).items() if n}
    assert not left, f"rows of the linked ids left: {left}"
    assert (await count_rows(db, "m1-other"))["applicants"] == 1
