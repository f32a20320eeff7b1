"""Property: with erasures, the worker's tables equal the reference model's (contract §7).

The streams are those of tests/test_model_properties.py. For each one, hypothesis picks a
candidate the stream names, and per partition how far the worker had consumed and how far the
log reached when `worker forget` erased them (consumed <= logged <= the partition's length).
The worker side runs on a real PostgreSQL: the consumed prefixes stored in batches, the
erasure itself (`worker.tools.forget.erase`, with those log ends), the rest of the stream in
batches, then a replay of everything from offset 0; every batch goes through the ledger's
screen (`worker.erasure.screen`) in its transaction, as `Committer.commit` does. The model
applies the same prefixes, `forget`, the rest and the replay one event at a time. After the
rest and after the replay, every table must equal the model's, and the records the screen kept
out must be as many, per topic, as the model skipped; the ledger must not hold the candidate's
identifier in any form a search for it finds.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import asyncpg
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from support.reference_model import Model, database_tables, diff_tables
from support.storage import db, truncate_all  # noqa: F401  (fixture)
from test_model_properties import ALL_KINDS, TP, Stream, batches, canonical, streams

from worker import erasure
from worker.handlers.base import Item
from worker.router import apply_batch
from worker.tools.forget import erase

pytestmark = pytest.mark.integration


class _NoHeaders:
    headers = ()


async def store_screened(conn: asyncpg.Connection, items: Sequence[Item]) -> Counter[str]:
    """One batch as the worker commits it: the ledger's screen, then the handlers."""
    async with conn.transaction():
        kept, erased = await erasure.screen(conn, items, lambda _item: _NoHeaders)
        await apply_batch(conn, kept)
    return Counter(i.topic for i in erased)


async def store_all(
    conn: asyncpg.Connection, items: dict[TP, list[Item]], rnd: random.Random
) -> Counter[str]:
    erased: Counter[str] = Counter()
    for batch in batches(items, rnd):
        erased += await store_screened(conn, batch.items)
    return erased


def model_apply(model: Model, items: Sequence[Item]) -> None:
    for i in items:
        model.apply(i.event, i.topic, i.partition, i.offset)


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
    victim = data.draw(st.sampled_from(named), label="victim")
    rnd = data.draw(st.randoms(use_true_random=False), label="rnd")
    consumed: dict[TP, int] = {}
    logged: dict[TP, int] = {}
    for tp, its in items.items():
        consumed[tp] = data.draw(st.integers(0, len(its)), label=f"consumed {tp}")
        logged[tp] = data.draw(st.integers(consumed[tp], len(its)), label=f"logged {tp}")
    note(f"stream:\n{stream.describe()}\nvictim {victim!r} consumed {consumed} logged {logged}")
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
    model.forget(victim, ends)
    model_apply(model, canonical(after))

    await truncate_all(db)
    await db.execute("TRUNCATE erasures; UPDATE erasure_state SET erasures = 0")
    assert not await store_all(db, before, rnd), "nothing is erased before the erasure"
    await erase(db, victim, read_log_ends)
    erased = await store_all(db, after, rnd)
    diff = diff_tables(model.tables(), await database_tables(db))
    assert not diff, f"tables differ from the reference model after the erasure:\n{diff}"
    assert erased == Counter(model.erased), (erased, model.erased)

    # A replay from offset 0 (worker offsets reset --to-earliest) brings nothing back.
    everything = canonical(items)
    model_apply(model, everything)
    erased += await store_screened(db, everything)
    diff = diff_tables(model.tables(), await database_tables(db))
    assert not diff, f"tables differ from the reference model after a replay:\n{diff}"
    assert erased == Counter(model.erased), (erased, model.erased)

    ledger = await db.fetch("SELECT * FROM erasures")
    assert len(ledger) == 1
    for row in ledger:
        text = " ".join(repr(v) for v in row.values())
        assert victim not in text and victim.encode().hex() not in text, row
