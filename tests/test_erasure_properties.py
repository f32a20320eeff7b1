"""Property: with erasures, the worker's tables and dead letters follow the reference model
(docs/contract.md §7).

The streams are those of tests/test_model_properties.py (one Proctorme id there is an email
address, and the micro1 events carry emails in several cases). For each one, hypothesis picks
a person, by a candidate id the stream names or by an email in any case, and per partition how
far the worker had consumed and how far the log reached when `worker forget` erased them
(consumed <= logged <= the partition's length). The worker side runs on a real PostgreSQL: the
consumed prefixes stored in batches, the erasure itself (`worker.tools.forget.erase`, with
those log ends), the rest of the stream in batches, then a replay of everything from offset 0;
every batch goes through the ledger's screen (`Ledger.screen`) in its transaction, as
`Committer.commit` does. Then records of the stream come back as replayed dead letters at new
offsets, each with a `dlq.replay.origin` that is signed (as `worker dlq replay` copies it from
a dead letter), signed for another value, or forged; and malformed copies of records (their
values cut short) are offered as dead letters, at their own coordinates or as replays, to
`Ledger.screen_letters`. The model applies the same prefixes, the erasure (linking the email's
ids itself), the rest, the replay and the replayed records one at a time, and says of each
dead letter whether it is published. Tables, linked ids, the records kept out per topic and
the dead letters published must all agree; the ledger must not hold the person's identifiers
in any form a search for them finds.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from support.reference_model import Model, database_tables, diff_tables, json_strings
from support.storage import db, truncate_all  # noqa: F401  (fixture)
from test_model_properties import ALL_KINDS, EMAILS, TP, Stream, batches, canonical, streams

from worker import erasure, origin
from worker.dlq import SCHEMA_VIOLATION, DeadLetter, DecodeFailure, Header
from worker.erasure import Ledger
from worker.handlers.base import Item
from worker.router import apply_batch
from worker.tools.forget import erase
from worker.tools.person import Person

pytestmark = pytest.mark.integration

ADDRESSES = (*sorted({e.strip() for e in EMAILS if e}), "änn@example.com", "nobody@example.net")


@dataclass
class Record:
    """What the ledger reads of a consumed record."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


async def store_screened(
    conn: asyncpg.Connection,
    ledger: Ledger,
    items: Sequence[Item],
    records: dict[tuple[str, int, int], Record] | None = None,
) -> Counter[str]:
    """One batch as the worker commits it: the ledger's screen, then the handlers."""
    records = records or {}

    def record_of(item: Item) -> Record:
        at = (item.topic, item.partition, item.offset)
        return records.get(at) or Record(*at, None)

    async with conn.transaction(isolation="read_committed"):
        kept, erased = await ledger.screen(conn, items, record_of)
        await apply_batch(conn, kept)
    return Counter(i.topic for i in erased)


async def store_all(
    conn: asyncpg.Connection, ledger: Ledger, items: dict[TP, list[Item]], rnd: random.Random
) -> Counter[str]:
    erased: Counter[str] = Counter()
    for batch in batches(items, rnd):
        erased += await store_screened(conn, ledger, batch.items)
    return erased


def model_apply(model: Model, items: Sequence[Item]) -> None:
    for i in items:
        model.apply(i.event, i.topic, i.partition, i.offset)


@st.composite
def people(draw: st.DrawFn, named: Sequence[str]) -> Person:
    if draw(st.booleans()):
        return Person(candidate=draw(st.sampled_from(named)))
    address = draw(st.sampled_from(ADDRESSES))
    return Person(email=draw(st.sampled_from((address, address.upper(), f" {address.title()} "))))


def _coordinates(text: str) -> list[tuple[str, int, int]]:
    out = []
    for part in text.split(","):
        topic, partition, offset = part.rsplit(":", 2)
        out.append((topic, int(partition), int(offset)))
    return out


@pytest.mark.timeout(900)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(stream=streams(ALL_KINDS, 30), data=st.data())
async def test_erasure_matches_the_reference_model(
    db: asyncpg.Connection,  # noqa: F811
    stream: Stream,
    data: st.DataObject,
) -> None:
    items = stream.items()
    named = sorted({erasure.candidate_of(i.event) for its in items.values() for i in its})
    assume(named)
    person = data.draw(people(named), label="person")
    rnd = data.draw(st.randoms(use_true_random=False), label="rnd")
    consumed: dict[TP, int] = {}
    logged: dict[TP, int] = {}
    for tp, its in items.items():
        consumed[tp] = data.draw(st.integers(0, len(its)), label=f"consumed {tp}")
        logged[tp] = data.draw(st.integers(consumed[tp], len(its)), label=f"logged {tp}")
    note(f"stream:\n{stream.describe()}\n{person} consumed {consumed} logged {logged}")
    ends = {tp: logged[tp] for tp in items}  # offsets are positions in these streams
    ends_doc: dict[str, dict[str, int]] = {}
    for (topic, p), end in ends.items():
        ends_doc.setdefault(topic, {})[str(p)] = end

    async def read_log_ends() -> dict[str, dict[str, int]]:
        return ends_doc

    before = {tp: its[: consumed[tp]] for tp, its in items.items()}
    after = {tp: its[consumed[tp] :] for tp, its in items.items()}
    model = Model()
    model_apply(model, canonical(before))
    if person.email is None:
        assert person.candidate is not None
        model.forget(person.candidate, ends)
        linked = [person.candidate]
    else:
        linked = model.forget_email(person.email, ends)
    model_apply(model, canonical(after))

    await truncate_all(db)
    await db.execute(
        "TRUNCATE erasures; UPDATE erasure_state SET erasures = 0; "
        "UPDATE erasure_lock SET erasures = 0"
    )
    ledger = await Ledger.load(db)
    assert not await store_all(db, ledger, before, rnd), "nothing is erased before the erasure"
    done = await erase(db, person, read_log_ends)
    assert sorted(done.ids) == linked, f"linked ids: worker {done.ids}, model {linked}"
    erased = await store_all(db, ledger, after, rnd)
    diff = diff_tables(model.tables(), await database_tables(db))
    assert not diff, f"tables differ from the reference model after the erasure:\n{diff}"
    assert erased == Counter(model.erased), (erased, model.erased)

    # A replay from offset 0 (worker offsets reset --to-earliest) brings nothing back.
    everything = canonical(items)
    model_apply(model, everything)
    erased += await store_screened(db, ledger, everything)
    diff = diff_tables(model.tables(), await database_tables(db))
    assert not diff, f"tables differ from the reference model after a replay:\n{diff}"
    assert erased == Counter(model.erased), (erased, model.erased)

    # Records back as replayed dead letters: signed origins, signatures for another value,
    # forged ones.
    body = {
        (t, p, o): ev.body for (t, p), evs in stream.partitions.items() for o, ev in enumerate(evs)
    }
    where = sorted(body)
    tails = {tp: len(its) for tp, its in items.items()}
    replays: list[Item] = []
    records: dict[tuple[str, int, int], Record] = {}
    for n in range(data.draw(st.integers(0, 4), label="replays")):
        first = data.draw(st.sampled_from(where), label=f"replay {n}")
        kind = data.draw(st.sampled_from(("signed", "other value", "forged")), label=f"kind {n}")
        topic, partition, _ = first
        at = (topic, partition, tails[(topic, partition)])
        tails[(topic, partition)] += 1
        value = body[first]
        if kind == "signed":
            header = origin.sign(ledger.key, [first], value)
        elif kind == "other value":
            header = origin.sign(ledger.key, [first], value + b" ")
        else:
            forged = data.draw(st.integers(0, 3), label=f"forged offset {n}")
            header = f"{topic}:{partition}:{forged};{'0' * 64}".encode()
        item = next(i for i in items[(topic, partition)] if i.offset == first[2])
        replays.append(Item(item.event, *at))
        records[at] = Record(*at, value, ((Header.REPLAY_ORIGIN, header),))
        text = header.decode().rpartition(";")[0]
        model.apply(item.event, *at, origin=_coordinates(text), signed=kind == "signed")
    erased += await store_screened(db, ledger, replays, records)
    diff = diff_tables(model.tables(), await database_tables(db))
    assert not diff, f"tables differ from the reference model after replayed records:\n{diff}"
    assert erased == Counter(model.erased), (erased, model.erased)

    # Malformed copies offered as dead letters, at their own place or as signed replays.
    letters: list[DeadLetter] = []
    published: list[bool] = []
    for n in range(data.draw(st.integers(0, 4), label="letters")):
        first = data.draw(st.sampled_from(where), label=f"letter {n}")
        value = body[first][: data.draw(st.integers(1, len(body[first])), label=f"cut {n}")]
        if data.draw(st.booleans(), label=f"a stray quote or escape {n}"):
            # What a hand-written producer leaves in free text: the quotes pair wrongly.
            pos = data.draw(st.integers(0, len(value)), label=f"stray at {n}")
            stray = data.draw(st.sampled_from((b'"', b"\\\n", b'\\"')), label=f"stray {n}")
            value = value[:pos] + stray + value[pos:]
        topic, partition, _ = first
        if data.draw(st.booleans(), label=f"as a replay {n}"):
            at = (topic, partition, tails[(topic, partition)])
            tails[(topic, partition)] += 1
            headers = ((Header.REPLAY_ORIGIN, origin.sign(ledger.key, [first], value)),)
            chain = [at, first]
        else:
            at, headers, chain = first, (), [first]
        letters.append(
            DeadLetter(Record(*at, value, headers), DecodeFailure(SCHEMA_VIOLATION, "cut"))
        )
        published.append(model.dead_letter(json_strings(value), chain))
    async with db.transaction(isolation="read_committed"):
        kept, kept_out = await ledger.screen_letters(db, letters)
    assert [d in kept for d in letters] == published, (
        f"dead letters published: worker {[d in kept for d in letters]}, model {published}"
    )
    erased += Counter(d.record.topic for d in kept_out)
    assert erased == Counter(model.erased), (erased, model.erased)

    rows = await db.fetch("SELECT * FROM erasures")
    assert len(rows) == len(person.subjects(ledger.key, linked))
    secrets = [*linked, *([person.email.strip()] if person.email else [])]
    for row in rows:
        text = " ".join(repr(v) for v in row.values())
        for secret in secrets:
            for form in (secret, secret.lower(), secret.encode().hex()):
                assert form not in text, row


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None)
@given(
    doc=_JSON,
    ascii_only=st.booleans(),
    strays=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from((b'"', b"\\\n", b'\\"', b"\\"))),
        max_size=3,
    ),
)
def test_a_dead_letters_names_are_the_models(
    doc: object, ascii_only: bool, strays: list[tuple[int, bytes]]
) -> None:
    """The names the ledger screens a dead letter by are the model's JSON strings of its raw
    value (docs/contract.md §7), valid JSON or not: stray quotes and broken escapes, the
    kind a hand-written producer leaves in free text, make the quotes pair wrongly."""
    value = json.dumps(doc, ensure_ascii=ascii_only).encode()
    for at, stray in strays:
        at %= len(value) + 1
        value = value[:at] + stray + value[at:]
    assert erasure.value_names(value) == json_strings(value)
