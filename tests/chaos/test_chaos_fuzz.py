"""Campaign 5, bad-input fuzz: mutated records through the real broker.

Every record starts as one of the seed documents' sample events (worker.dev.seeds) with its IDs
made unique (so no two records touch the same row and the final tables do not depend on the
order of the two topics), then is damaged by a seeded random choice of: bit flips,
truncation, wrong types, dropped fields, huge strings (1 MB), deep nesting, invalid
UTF-8, NUL (escaped and raw), extreme numbers (1e400, -1, 2**70, NaN) and dates (year 0,
10000, +14:00 on 0001-01-01...), duplicate keys, a BOM, trailing garbage, the other family's
JSON on each topic, unknown tags, empty and non-object payloads. Some mutations leave the
record valid; the reference decides, record by record, with worker.decode and the handlers.

The worker must stay up; every record ends in a table or in the dead-letter topic; the dead
letters are exactly the records the decoder refuses plus the ones the database cannot store;
the tables equal the reference; the committed offsets account for every record.
"""

from __future__ import annotations

import dataclasses
import json
import random
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from support import infra
from support.chaos import (
    DECODERS,
    INTERVIEW,
    PROCTORING,
    SCALE,
    SEED,
    SIZES,
    Clock,
    Coord,
    Planned,
    Publisher,
    build_reference,
    check_dlq,
    check_offsets,
    compare_with_reference,
    dlq_origin,
    make_topics,
    offsets_total,
    read_dlq,
    report,
    topic_map,
    wait_until,
)
from support.e2e import committed_offsets, running_worker, settings_for, task_of

from worker.dev.seeds import interview_samples, proctoring_samples
from worker.dlq import DecodeFailure
from worker.handlers.base import Item

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SIZES.test_timeout_s)]

MIB = 1 << 20
# "1 MB" of text: a dead letter carrying it still fits the producer's default 1 MiB request
# limit. Records beyond that are test_oversized_malformed_record_is_dead_lettered's business.
HUGE = 1_000_000
ID_FIELDS = frozenset(
    {
        "examId",
        "candidateId",
        "interview_id",
        "report_id",
        "candidate_id",
        "micro1_job_application_id",
        "micro1_job_id",
        "job_id",
    }
)
TIME_FIELDS = frozenset(
    {"createdAt", "timestamp", "date_started", "date_created", "date_modified", "report_date"}
)
NUMBER_FIELDS = frozenset({"proctoring_score", "ai_match_score", "resume_score", "value"})
RAW_FIELDS = frozenset(
    {
        "interview_transcript",
        "technical_skills_evaluation",
        "soft_skills_evaluation",
        "coding_skills_evaluation",
        "custom_exercise_evaluation",
        "custom_question_evaluation",
    }
)
# Kept raw by the decoder and stored as jsonb: numbers beyond PostgreSQL's numeric range get
# past the decoder and can only be refused by the database (rejected_by_database).
RAW_BLOCKS = ("[1e400]", "[1e200000]", "[-1e-200000]", "[1e131071]", "[0.5e-16383]", "[[],{}]")
RAW = "@@raw@@"  # a string leaf "@@raw@@<text>" is written as the bare JSON token <text>
EXTREME_NUMBERS: tuple[Any, ...] = (
    f"{RAW}1e400",
    f"{RAW}-1e400",
    f"{RAW}1e-400",
    f"{RAW}NaN",
    f"{RAW}Infinity",
    f"{RAW}-0",
    -1,
    2**70,
    -(2**70),
    2**64,
    10**30,
    1e308,
    100.0000001,
    "1e400",
    "NaN",
    "-Infinity",
    "12abc",
    "",
)
EXTREME_DATES: tuple[Any, ...] = (
    "0000-01-01T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "1970-01-01T00:00:00Z",
    "2024-02-30T10:00:00Z",
    "2024-01-01 25:00:00",
    "2024-01-01T10:00:00.123456789Z",
    "2024-01-01T10:00:00+25:00",
    "-0001-01-01T00:00:00Z",
    "0001-01-01",
    "9999-12-31",
    1_700_000_000,
    "",
)
WRONG_TYPES: tuple[Any, ...] = (0, -1, 1.5, True, False, None, "", "x", [], {}, [1, "a"], {"a": 1})
UNICODE = ("é漢字😀", "\u202eRTL", "\ufeffbom", "\U0010ffff", "ß" * 300, "\u2028\u2029")


def _uniquify(doc: dict[str, Any], suffix: str) -> None:
    for body in (doc, doc.get("data")):
        if isinstance(body, dict):
            for key in ID_FIELDS & body.keys():
                if isinstance(body[key], str):
                    body[key] = f"{body[key]}-{suffix}"


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) below `doc`, iteratively."""
    found: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in pairs:
            found.append((node, key))
            if isinstance(value, dict | list) and value:
                stack.append(value)
    return found


def _nested(depth: int, rng: random.Random) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"n": value}
    return value


class Fuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seeds: list[tuple[str, bytes]] = [(PROCTORING, s) for s in proctoring_samples()]
        self.seeds += [(INTERVIEW, s) for s in interview_samples()]
        self.serial = 0

    def fresh(self, family: str | None = None) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        choices = [s for s in self.seeds if family is None or s[0] == family]
        fam, raw = rng.choice(choices)
        doc = json.loads(raw)
        self.serial += 1
        _uniquify(doc, f"{self.serial:06d}{rng.getrandbits(32):08x}")
        return fam, doc

    # mutations of the document ----------------------------------------------------------
    def _pick(self, doc: dict[str, Any], names: frozenset[str] | None = None) -> tuple[Any, Any]:
        slots = _slots(doc)
        if names is not None:
            named = [(c, k) for c, k in slots if k in names]
            slots = named or slots
        return self.rng.choice(slots)

    def doc_mutation(self, doc: dict[str, Any], huge: bool) -> str:
        rng = self.rng
        kind = rng.choice(
            (
                "wrong_type",
                "drop_field",
                "long_string",
                "long_id",
                "deep_nesting",
                "nul_escaped",
                "extreme_number",
                "extreme_number",
                "extreme_date",
                "extreme_date",
                "raw_block",
                "raw_block",
                "unicode",
                "extra_fields",
                "unknown_tag",
            )
        )
        if huge:
            kind = "huge_string_1MB"
        if kind == "wrong_type":
            c, k = self._pick(doc)
            c[k] = self._keep_unique(k, rng.choice(WRONG_TYPES))
        elif kind == "drop_field":
            c, k = self._pick(doc)
            del c[k]
        elif kind in ("long_string", "huge_string_1MB"):
            target = doc.get("data")
            if not isinstance(target, dict):  # an earlier mutation replaced it
                target = doc
            key = rng.choice(
                [k for k, v in target.items() if isinstance(v, str)] or ["description"]
            )
            target[key] = "x" * (HUGE if huge else rng.choice((600, 70_000, 200_000)))
        elif kind == "long_id":
            c, k = self._pick(doc, ID_FIELDS)
            length = rng.choice((512, 513, 5000))
            c[k] = f"{self.serial}-{'i' * length}"[:length]  # unique, like every ID here
        elif kind == "deep_nesting":
            c, k = self._pick(doc)
            depth = rng.choice((50, 400, 900, 2000, 10_000))
            # Shallow nests as objects and arrays; deep ones as a bare token (json.dumps
            # would recurse).
            c[k] = _nested(depth, rng) if depth <= 400 else f"{RAW}{'[' * depth}{']' * depth}"
        elif kind == "nul_escaped":
            c, k = self._pick(doc)
            c[k] = f"{c[k]}\x00" if isinstance(c[k], str) else "\x00"
        elif kind == "extreme_number":
            c, k = self._pick(doc, NUMBER_FIELDS)
            c[k] = rng.choice(EXTREME_NUMBERS)
        elif kind == "extreme_date":
            c, k = self._pick(doc, TIME_FIELDS)
            c[k] = rng.choice(EXTREME_DATES)
        elif kind == "raw_block":
            c, k = self._pick(doc, RAW_FIELDS)
            c[k] = f"{RAW}{rng.choice(RAW_BLOCKS)}"
        elif kind == "unicode":
            c, k = self._pick(doc)
            c[k] = self._keep_unique(k, rng.choice(UNICODE))
        elif kind == "extra_fields":
            doc["zz_extra"] = {"nested": [1, 2, {"x": None}], "text": "ignored"}
            if isinstance(doc.get("data"), dict):
                doc["data"]["zz_extra"] = 42
        elif kind == "unknown_tag":
            if "type" in doc:
                doc["type"] = rng.choice(("TELEPORTED", "started", "", 7))
            else:
                doc["event"] = rng.choice(("applicant.deleted", "interview.paused", None))
        return kind

    def _keep_unique(self, key: Any, value: Any) -> Any:
        """A replacement for an ID stays unique (two records sharing an ID would make the
        final tables depend on batch boundaries, which the contract does not promise)."""
        if key in ID_FIELDS and isinstance(value, str) and value:
            return f"{value}-{self.serial}"
        return value

    # mutations of the bytes --------------------------------------------------------------
    def byte_mutation(self, value: bytes) -> tuple[str, bytes]:
        rng = self.rng
        kind = rng.choice(
            (
                "bit_flips",
                "bit_flips",
                "truncated",
                "invalid_utf8",
                "raw_nul",
                "not_an_object",
                "bom",
                "trailing",
                "duplicate_key",
            )
        )
        data = bytearray(value)
        if kind == "bit_flips":
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif kind == "truncated":
            del data[rng.randint(0, len(data) - 1) :]
        elif kind == "invalid_utf8":
            i = value.find(b'": "') + 4 if b'": "' in value else rng.randrange(len(data))
            data[i:i] = rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"))
        elif kind == "raw_nul":
            i = value.find(b'": "') + 4 if b'": "' in value else rng.randrange(len(data))
            data[i:i] = b"\x00"
        elif kind == "not_an_object":
            return kind, rng.choice((b"", b" \n", b"null", b"[]", b"42", b'"x"', b"[{}]", b"{}"))
        elif kind == "bom":
            data[0:0] = b"\xef\xbb\xbf"
        elif kind == "trailing":
            data += rng.choice((b" x", b"\n\n", b"{}", b"\x00", b" // comment"))
        elif kind == "duplicate_key":
            data[1:1] = b'"examId": 1, "event": 2, '
        return kind, bytes(data)

    def record(self, huge: bool = False) -> Planned:
        rng = self.rng
        family, doc = self.fresh()
        kinds: list[str] = []
        roll = rng.random()
        value: bytes
        if roll < 0.08:
            kinds.append("untouched")
        elif roll < 0.14:
            kinds.append("other_family")
            family = INTERVIEW if family == PROCTORING else PROCTORING
        if huge:
            kinds.append(self.doc_mutation(doc, huge))
        elif roll >= 0.14:
            for _ in range(1 if rng.random() < 0.7 else 2):
                kinds.append(self.doc_mutation(doc, huge))
        value = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        for token in set(_raw_tokens(value)):
            value = value.replace(f'"{RAW}{token}"'.encode(), token.encode())
        if not huge and roll >= 0.14 and rng.random() < 0.35:
            kind, value = self.byte_mutation(value)
            kinds.append(kind)
        key = rng.choice((None, b"", f"k-{self.serial}".encode(), b"\xff\xfe"))
        result = DECODERS[family].decode(value)
        failed = isinstance(result, DecodeFailure)
        return Planned(
            family,
            key,
            value,
            not failed,
            reason=result.reason if isinstance(result, DecodeFailure) else None,
            kind="+".join(kinds),
        )


def _raw_tokens(value: bytes) -> list[str]:
    text = value.decode("utf-8", "replace")
    tokens = []
    start = text.find(RAW)
    while start != -1:
        end = text.find('"', start)
        tokens.append(text[start + len(RAW) : end])
        start = text.find(RAW, end)
    return tokens


async def test_fuzzed_records_end_in_a_table_or_the_dead_letter_topic(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
) -> None:
    clock = Clock()
    rng = random.Random(SEED + 50)
    fuzzer = Fuzzer(rng)
    n = SIZES.fuzz_records
    huge = max(2, n // 2000)
    records = [fuzzer.record(huge=i < huge) for i in range(n)]
    rng.shuffle(records)
    # One partition per topic: the reference applies each topic in offset order.
    topics = await make_topics(topic_factory, 1, prefix="g_fuzz_")
    settings = settings_for(kafka_bootstrap, database_url, topics, max_batch_records=500)

    async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
        for i in range(0, len(records), 200):
            await publisher.publish(records[i : i + 200])
    sent = sorted(publisher.sent, key=lambda s: s[1])
    produced = len(sent)

    # The reference: decode each record, apply the valid ones in order, isolating failures.
    items: list[Item] = []
    expected_dlq: dict[Coord, Planned] = {}
    for planned, coord in sent:
        result = DECODERS[planned.family].decode(planned.value)
        if isinstance(result, DecodeFailure):
            expected_dlq[coord] = planned
        else:
            items.append(Item(result, *coord))
    reference_url = await fresh_database()
    unstorable = await build_reference(reference_url, items)
    by_coord = {coord: planned for planned, coord in sent}
    unstorable_kinds: Counter[str] = Counter()
    for item, _why in unstorable:
        coord = (item.topic, item.partition, item.offset)
        expected_dlq[coord] = dataclasses.replace(by_coord[coord], reason=None)
        unstorable_kinds[by_coord[coord].kind] += 1

    ingest_started = clock()
    async with running_worker(settings) as worker:

        async def drained() -> bool:
            task = task_of(worker)
            if task.done() and task.exception() is not None:
                trace = "".join(traceback.format_exception(task.exception()))
                raise AssertionError(f"the worker died:\n{trace}")
            return await offsets_total(database_url, topics.group_id) >= produced

        try:
            await wait_until(drained, SIZES.test_timeout_s / 4, "every fuzzed record")
        except AssertionError:
            stored = await committed_offsets(database_url, topics.group_id)
            stuck = [
                f"{t}[{p}]@{o}: kind={by_coord.get((t, p, o), Planned('', None, b'', False)).kind} "
                f"bytes={len(by_coord.get((t, p, o), Planned('', None, b'', False)).value or b'')}"
                for (t, p), o in stored.items()
            ]
            raise AssertionError(f"stuck at {stuck}; stats {worker.stats}") from None
        stats = dict(worker.stats)
    ingest_s = round(clock() - ingest_started, 1)

    committed = await check_offsets(database_url, topics.group_id, publisher)
    tables = await compare_with_reference(database_url, reference_url)
    letters = await read_dlq(kafka_bootstrap, topics.dlq, set(expected_dlq))
    dlq = check_dlq(letters, expected_dlq)
    stored_effects = len(items) - len(unstorable)
    assert dlq["dlq_distinct"] + stored_effects == produced
    assert stats["consumed"] == produced, stats
    assert stats["dead_lettered"] == len(expected_dlq), stats
    kinds = Counter(k for p, _ in sent for k in p.kind.split("+"))
    report(
        "5 fuzz",
        scale=SCALE,
        produced=produced,
        decoded_valid=len(items),
        stored_effects=stored_effects,
        unstorable_by_database=len(unstorable),
        unstorable_kinds=dict(unstorable_kinds),
        mutations=dict(sorted(kinds.items())),
        huge_1MB_records=huge,
        worker_stats=stats,
        ingest_s=ingest_s,
        committed_offsets_sum=committed,
        **tables,
        **dlq,
        total_s=clock(),
    )


async def test_oversized_malformed_record_is_dead_lettered(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
) -> None:
    """Regression: a record of just over 1 MiB that fails validation (a 1 MiB description,
    which is valid, beside a `createdAt` that is not a timestamp) must reach the dead-letter
    topic and the partition move on; the records behind it must be stored."""
    fuzzer = Fuzzer(random.Random(SEED + 51))
    _, doc = fuzzer.fresh(PROCTORING)
    doc["description"] = "x" * MIB
    doc["createdAt"] = "not a timestamp"
    big = json.dumps(doc).encode()
    assert isinstance(DECODERS[PROCTORING].decode(big), DecodeFailure)
    followers = [json.dumps(fuzzer.fresh(PROCTORING)[1]).encode() for _ in range(5)]
    topics = await make_topics(topic_factory, 1, prefix="g_big_")
    settings = settings_for(kafka_bootstrap, database_url, topics, retry_max_s=1.0)
    planned = [Planned(PROCTORING, b"big", big, False, reason="schema_violation")]
    planned += [Planned(PROCTORING, b"ok", v, True) for v in followers]
    async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
        await publisher.publish(planned)
    async with running_worker(settings) as worker:

        async def drained() -> bool:
            assert not task_of(worker).done(), "worker task ended"
            return await offsets_total(database_url, topics.group_id) >= len(planned)

        try:
            await wait_until(drained, 30, "the oversized record to be dead-lettered")
        finally:
            retries = worker.metrics.registry.get_sample_value(
                "worker_retries_total", {"dependency": "kafka"}
            )
            report(
                "5b oversized dead letter",
                record_bytes=len(big),
                committed=await offsets_total(database_url, topics.group_id),
                expected=len(planned),
                kafka_retries=retries,
                stats=dict(worker.stats),
            )
    malformed = publisher.malformed()
    letters = await read_dlq(kafka_bootstrap, topics.dlq, set(malformed))
    assert {dlq_origin(r) for r in letters} == set(malformed)
    # docs/contract.md §6 keeps the value byte for byte. A letter too large for the dead-letter
    # topic cannot be; a copy cut short is accepted only if it says so (a dlq.value.truncated
    # header) and is a prefix of the original, never a silently different value.
    (original,) = malformed.values()
    modes = set()
    for letter in letters:
        assert letter.key == original.key
        if letter.value == original.value:
            modes.add("intact")
        else:
            headers = dict(letter.headers)
            assert "dlq.value.truncated" in headers, sorted(headers)
            assert original.value is not None and letter.value is not None
            assert original.value.startswith(letter.value), "truncated letter is not a prefix"
            modes.add(f"truncated to {len(letter.value)} bytes (marked)")
    report("5b oversized dead letter", dead_letter=sorted(modes))


async def test_invalid_utf8_inside_a_raw_block_is_dead_lettered_not_fatal(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
) -> None:
    """Regression (found by the fuzz campaign): invalid UTF-8 inside a block the decoder keeps
    raw (interview_transcript and the evaluations) passes decoding, then fails in the handler
    (bytes.decode); the record must be dead-lettered and the worker must carry on, not die
    (as a process it would die again on the same record after every restart)."""
    fuzzer = Fuzzer(random.Random(SEED + 52))
    report_sample = next(s for f, s in fuzzer.seeds if b"interview_report.created" in s)
    doc = json.loads(report_sample)
    _uniquify(doc, "utf8")
    doc["data"]["interview_transcript"] = [{"role": "candidate", "content": "@@BAD@@"}]
    bad = json.dumps(doc).encode().replace(b"@@BAD@@", b"caf\xe1(")
    followers = [json.dumps(fuzzer.fresh(PROCTORING)[1]).encode() for _ in range(3)]
    topics = await make_topics(topic_factory, 1, prefix="g_utf8_")
    settings = settings_for(kafka_bootstrap, database_url, topics)
    planned = [Planned(INTERVIEW, b"bad", bad, False)]
    planned += [Planned(PROCTORING, b"ok", v, True) for v in followers]
    async with Publisher(kafka_bootstrap, topic_map(topics)) as publisher:
        await publisher.publish(planned)
    async with running_worker(settings) as worker:

        async def drained() -> bool:
            task = task_of(worker)
            if task.done() and task.exception() is not None:
                exc = task.exception()
                raise AssertionError(f"the worker died: {exc!r}")
            return await offsets_total(database_url, topics.group_id) >= len(planned)

        await wait_until(drained, 30, "the bad record to be dead-lettered")
        stats = dict(worker.stats)
    assert stats["stored"] == len(followers), stats
    malformed = publisher.malformed()
    dlq = check_dlq(await read_dlq(kafka_bootstrap, topics.dlq, set(malformed)), malformed)
    report("5c invalid UTF-8 in a raw block", **dlq)
