"""Erasure end to end (contract §7, issue 19's acceptance): a real broker, a running worker, the
operator's commands as processes.

Three candidates have events in both topics (every seed sample of both documents, once per
candidate), and a dead letter of the erased one waits in the dead-letter topic (a record refused
before the erasure, with the signed origin every dead letter carries). Under the running
worker: `worker forget --execute` of one, then
`worker offsets reset --to-earliest --execute` (a replay of everything), then
`worker dlq replay --execute` (the dead letter comes back as a new record). No table may hold a
row naming the erased candidate, every other row must equal the reference model's, the ledger
must hold no form of the identifier, the worker must count what it kept out, and an event of
the erased candidate produced after the erasure must be stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sys
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from support.e2e import (
    REPO_ROOT,
    expected_offsets,
    running_worker,
    settings_for,
    stored_text,
    wait_for,
    wait_for_offsets,
    worker_env,
)
from support.infra import Topics, consume_all
from support.reference_model import Model, database_tables, diff_tables
from support.storage import decode_ok

from worker import origin
from worker.config import Settings
from worker.decode import interview_decoder, proctoring_decoder
from worker.dev.seeds import interview_samples, proctoring_samples
from worker.dlq import SCHEMA_VIOLATION, DeadLetter, DecodeFailure, Header, dead_letter_headers
from worker.erasure import Ledger
from worker.migrate import migrate_url
from worker.tools.forget import count_rows

pytestmark = pytest.mark.integration

ERASED = "cand-erased-7f3a"
KEPT = ("cand-kept-1", "cand-kept-2")


def bodies_of(candidate: str) -> list[tuple[str, bytes, bytes]]:
    """(topic kind, key, value) of every seed sample, as events of `candidate`."""
    out = [
        ("proctoring", f"exam-1:{candidate}".encode(), body)
        for body in proctoring_samples("exam-1", candidate)
    ]
    for body in interview_samples():
        doc = json.loads(body)
        data = doc["data"]
        data["candidate_id"] = candidate
        for field in ("report_id", "interview_id", "micro1_job_application_id"):
            if field in data:
                data[field] = f"{data[field]}-{candidate}"
        out.append(("interview", candidate.encode(), json.dumps(doc).encode()))
    return out


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        cwd=REPO_ROOT,
        env=worker_env(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class _Record:
    """What dead_letter_headers and the signed origin read of a consumed record."""

    def __init__(
        self, topic: str, partition: int, offset: int, timestamp: int, value: bytes
    ) -> None:
        self.topic, self.partition, self.offset, self.timestamp = (
            topic,
            partition,
            offset,
            timestamp,
        )
        self.value = value
        self.headers: tuple[Any, ...] = ()


async def refused_earlier(
    producer: AIOKafkaProducer, database_url: str, topics: Topics, md: Any, value: bytes, key: bytes
) -> None:
    """Put in the dead-letter topic the letter the worker would have written for the record
    at `md`, had it refused it (with the signed `dlq.origin`)."""
    record = _Record(md.topic, md.partition, md.offset, md.timestamp, value)
    letter = DeadLetter(record, DecodeFailure(SCHEMA_VIOLATION, "refused before the erasure"))
    conn = await asyncpg.connect(database_url)
    try:
        key = (await Ledger.load(conn)).key
    finally:
        await conn.close()
    headers = dead_letter_headers(letter, topics.group_id, dt.datetime.now(dt.UTC))
    headers.append((Header.ORIGIN, origin.sign(key, origin.chain(key, record), value)))
    await producer.send_and_wait(topics.dlq, value, key=key, headers=headers)


async def test_forget_survives_a_replay_and_a_dead_letter_replay(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    s = settings_for(kafka_bootstrap, database_url, topics)
    await migrate_url(database_url)
    topic_of = {"proctoring": topics.proctoring, "interview": topics.interview}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    model = Model()
    decoders = {topics.proctoring: proctoring_decoder, topics.interview: interview_decoder}
    try:

        async def produce(kind: str, key: bytes, value: bytes) -> Any:
            md = await (await producer.send(topic_of[kind], value, key=key))
            model.apply(decode_ok(decoders[md.topic], value), md.topic, md.partition, md.offset)
            return md

        sent = [await produce(*b) for c in (*KEPT, ERASED) for b in bodies_of(c)]
        # A record of the erased candidate that was dead-lettered before the erasure.
        await refused_earlier(
            producer, database_url, topics, sent[-1], bodies_of(ERASED)[-1][2], ERASED.encode()
        )
        async with running_worker(s) as worker:
            ends = expected_offsets(sent)
            await wait_for_offsets(database_url, topics.group_id, ends)
            conn = await asyncpg.connect(database_url)
            try:
                assert sum((await count_rows(conn, ERASED)).values()) > 0

                code, out, err = await cli(s, "forget", "--candidate", ERASED)
                assert code == 0 and "dry run" in out, (out, err)
                code, out, err = await cli(s, "forget", "--candidate", ERASED, "--execute")
                assert code == 0, (out, err)
                assert not any((await count_rows(conn, ERASED)).values())
                ledger = await conn.fetchrow("SELECT *, log_ends::text AS ends FROM erasures")
                for column, stored in ledger.items():
                    text = stored.hex() if isinstance(stored, bytes) else str(stored)
                    assert ERASED not in text and ERASED.encode().hex() not in text, column
                log_ends = {
                    (t, int(p)): end
                    for t, ps in json.loads(ledger["ends"]).items()
                    for p, end in ps.items()
                }
                model.forget(ERASED, log_ends)

                code, out, err = await cli(s, "offsets", "reset", "--to-earliest", "--execute")
                assert code == 0, (out, err)
                erased_events = len(bodies_of(ERASED))
                await wait_for(
                    lambda: _true(worker.stats.get("erased", 0) >= erased_events),
                    60,
                    f"{erased_events} records kept out by the ledger",
                )
                await wait_for_offsets(database_url, topics.group_id, ends)

                code, out, err = await cli(s, "dlq", "inspect", "--candidate", ERASED, "--json")
                assert code == 0 and len(out.splitlines()) == 1, (out, err)
                code, out, err = await cli(
                    s, "dlq", "replay", "--candidate", ERASED, "--execute", "--idle", "2"
                )
                assert code == 0, (out, err)
                await wait_for(
                    lambda: _true(worker.stats.get("erased", 0) >= erased_events + 1),
                    60,
                    "the replayed dead letter kept out",
                )
                assert not any((await count_rows(conn, ERASED)).values())

                # Produced after the erasure: a new record, stored as usual.
                later = await produce(
                    "proctoring",
                    b"exam-2:" + ERASED.encode(),
                    json.dumps(
                        {
                            "examId": "exam-2",
                            "candidateId": ERASED,
                            "type": "STARTED",
                            "createdAt": "2026-01-01T00:00:00Z",
                        }
                    ).encode(),
                )
                await wait_for_offsets(database_url, topics.group_id, expected_offsets([later]))
                await wait_for(
                    lambda: _rows(conn, ERASED, "proctoring_events", 1), 30, "the new event"
                )
                diff = diff_tables(model.tables(), await database_tables(conn))
                assert not diff, f"tables differ from the reference model:\n{diff}"
                metric = worker.metrics.erased.labels(topics.proctoring)._value.get()  # type: ignore[attr-defined]
                assert metric >= 1
            finally:
                await conn.close()
    finally:
        await producer.stop()


async def _true(value: bool) -> bool:
    return value


async def _rows(conn: asyncpg.Connection, candidate: str, table: str, n: int) -> bool:
    return (await count_rows(conn, candidate))[table] == n


async def test_forget_refuses_when_a_consumed_topic_is_missing(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    """Another WORKER_INTERVIEW_TOPIC in the operator's shell: the erasure would record no end
    for the real topic, and no replay of it would be screened. It must refuse, change nothing,
    and say which topic in one line."""
    await migrate_url(database_url)
    s = dataclasses.replace(
        settings_for(kafka_bootstrap, database_url, topics), interview_topic="no-such-topic-25"
    )
    code, out, err = await cli(s, "forget", "--candidate", ERASED, "--execute")
    assert code == 1, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and "no-such-topic-25" in err, err
    conn = await asyncpg.connect(database_url)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM erasures")
    finally:
        await conn.close()


# -- a person by email, under two ids (issue 25's acceptance) ------------------------------------

EMAIL = "Jane.Doe@Example.com"  # as the operator types it
PROCTORED_AS = "jane.doe@example.com"  # the Proctorme widget's candidateId: her address
MICRO1_AS = "m1-7c1e"  # micro1's candidate_id; her events carry the address in another case


def jane_bodies() -> list[tuple[str, bytes, bytes]]:
    """Every seed sample: the proctoring ones under her address as the candidate id, the
    interview ones under her micro1 id with her address (upper-cased) in the email fields."""
    out = [
        ("proctoring", f"exam-9:{PROCTORED_AS}".encode(), body)
        for body in proctoring_samples("exam-9", PROCTORED_AS)
    ]
    for kind, key, value in bodies_of(MICRO1_AS):
        if kind != "interview":
            continue
        doc = json.loads(value)
        for field in ("candidate_email_id", "email_id"):
            if field in doc["data"]:
                doc["data"][field] = EMAIL.upper()
        out.append((kind, key, json.dumps(doc).encode()))
    return out


# Malformed: they go to the dead-letter topic, naming her by either id.
JANE_MALFORMED = (
    ("proctoring", b'{"examId": "exam-9", "candidateId": "' + PROCTORED_AS.encode() + b'", "ty'),
    ("interview", b'{"event": "applicant.created", "data": {"candidate_id": "m1-7c1e"}}'),
)


def urls_in(bodies: list[tuple[str, bytes, bytes]]) -> set[str]:
    """Every URL the bodies carry (`mediaUrl`, and the `*_url` fields of the interview events)."""
    found: set[str] = set()
    for _, _, value in bodies:
        doc = json.loads(value)
        fields = {**doc, **doc.get("data", {})}
        found |= {v for k, v in fields.items() if k == "mediaUrl" or k.endswith("_url") if v}
    return found


def names_jane(value: bytes | None) -> bool:
    text = (value or b"").decode("utf-8", "replace").lower()
    return PROCTORED_AS in text or MICRO1_AS in text


async def test_an_erasure_by_email_holds_against_replays_of_the_log_and_the_dead_letters(
    kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    """Jane is in both topics under two ids, her address as Proctorme's candidateId and a
    micro1 id whose events carry her address (in another case); two malformed records of hers
    are dead-lettered, and an unsigned dead letter of hers (an earlier release's) waits too.
    Erased by email: both ids are linked, nothing of her stays in any table, a replay from
    offset 0 and a replay of the dead letters store nothing of her and put nothing of her in
    the dead-letter topic, every record lands in exactly one place, the media URLs come out
    for the storage job, and the audit rows hold no identifier in clear."""
    s = settings_for(kafka_bootstrap, database_url, topics)
    await migrate_url(database_url)
    topic_of = {"proctoring": topics.proctoring, "interview": topics.interview}
    decoders = {topics.proctoring: proctoring_decoder, topics.interview: interview_decoder}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    model = Model()
    sent: list[Any] = []
    try:

        async def produce(kind: str, key: bytes, value: bytes, valid: bool = True) -> Any:
            md = await (await producer.send(topic_of[kind], value, key=key))
            if valid:
                model.apply(decode_ok(decoders[md.topic], value), md.topic, md.partition, md.offset)
            sent.append(md)
            return md

        for body in (*bodies_of(KEPT[0]), *jane_bodies()):
            await produce(*body)
        for kind, value in JANE_MALFORMED:
            await produce(kind, b"jane", value, valid=False)
        legacy = sent[len(bodies_of(KEPT[0]))]  # her first record, refused by an old release
        letter = DeadLetter(
            _Record(legacy.topic, legacy.partition, legacy.offset, legacy.timestamp, b""),
            DecodeFailure(SCHEMA_VIOLATION, "refused by an earlier release"),
        )
        await producer.send_and_wait(
            topics.dlq,
            jane_bodies()[0][2],
            headers=dead_letter_headers(letter, topics.group_id, dt.datetime.now(dt.UTC)),
        )
        jane_records = len(jane_bodies()) + len(JANE_MALFORMED)
        async with running_worker(s) as worker:
            await wait_for_offsets(database_url, topics.group_id, expected_offsets(sent))
            await wait_for(
                lambda: _true(worker.stats["dead_lettered"] >= len(JANE_MALFORMED)),
                30,
                "her malformed records dead-lettered",
            )
            conn = await asyncpg.connect(database_url)
            try:
                code, out, err = await cli(s, "show", "--email", EMAIL, "--ticket", "DSR-1")
                assert code == 0, err
                shown = json.loads(out)
                assert shown["linked_ids"] == sorted([PROCTORED_AS, MICRO1_AS])
                assert shown["tables"]["proctoring_events"] and shown["tables"]["applicants"]

                code, out, err = await cli(
                    s, "forget", "--email", EMAIL, "--execute", "--json", "--by", "dpo",
                    "--ticket", "DSR-1",
                )  # fmt: skip
                assert code == 0, err
                done = json.loads(out)
                assert done["linked_ids"] == sorted([PROCTORED_AS, MICRO1_AS])
                assert sorted(done["urls"]) == sorted(set(done["urls"]))
                assert set(done["urls"]) == urls_in(jane_bodies()), done["urls"]
                ids = [PROCTORED_AS, MICRO1_AS]
                assert not any((await count_rows(conn, ids)).values())
                ends_doc = json.loads(
                    await conn.fetchval("SELECT log_ends::text FROM erasures LIMIT 1")
                )
                ends = {(t, int(p)): e for t, ps in ends_doc.items() for p, e in ps.items()}
                assert model.forget_email(EMAIL, ends) == sorted(ids)
                letters_before = len(await consume_all(kafka_bootstrap, topics.dlq, 99, 3))

                # A replay from offset 0, then the dead letters replayed.
                code, out, err = await cli(s, "offsets", "reset", "--to-earliest", "--execute")
                assert code == 0, (out, err)
                await wait_for(
                    lambda: _true(worker.stats["erased"] >= jane_records),
                    60,
                    f"{jane_records} records of hers kept out by the ledger",
                )
                code, out, err = await cli(s, "dlq", "replay", "--execute", "--idle", "2")
                assert code == 0, (out, err)
                assert "held back 1 (no signed dlq.origin" in out, out
                await wait_for(
                    lambda: _true(worker.stats["erased"] >= jane_records + len(JANE_MALFORMED)),
                    60,
                    "her replayed dead letters kept out",
                )
                replayed = expected_offsets(sent)
                for md in sent[-len(JANE_MALFORMED) :]:
                    replayed[(md.topic, md.partition)] += 1
                await wait_for_offsets(database_url, topics.group_id, replayed, 30)
                letters = await consume_all(kafka_bootstrap, topics.dlq, 99, 3)
                new = [r for r in letters[letters_before:] if names_jane(r.value)]
                assert not new, f"new dead letters of hers after the erasure: {new}"
                assert not any((await count_rows(conn, ids)).values())
                diff = diff_tables(model.tables(), await database_tables(conn))
                assert not diff, f"tables differ from the reference model:\n{diff}"
                st = worker.stats
                assert st["stored"] + st["dead_lettered"] + st["erased"] == st["consumed"], st

                code, out, err = await cli(
                    s, "dlq", "inspect", "--candidate", MICRO1_AS, "--by", "dpo"
                )
                assert code == 0, err
                code, out, err = await cli(s, "audit", "--email", EMAIL.lower(), "--json")
                assert code == 0, err
                listed = [json.loads(line) for line in out.splitlines()]
                assert [r["command"] for r in listed] == ["forget --execute", "show"], listed
                audit = await conn.fetch("SELECT *, counts::text AS c FROM erasure_audit")
                assert len(audit) == 3
                secrets = (PROCTORED_AS, MICRO1_AS, "jane.doe")
                for row in audit:
                    text = " ".join(stored_text(v) for v in row.values()).lower()
                    for secret in secrets:
                        assert secret not in text and secret.encode().hex() not in text, row
            finally:
                await conn.close()
    finally:
        await producer.stop()
