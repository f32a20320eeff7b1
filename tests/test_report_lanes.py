"""Two commit lanes writing the part events of the same reports never deadlock.

The four events of one report (`interview_report.created`, `interview_recording.completed`,
`interview_webcam_recording.completed`, `proctoring_score.completed`) may come through two
partitions (a producer keys them differently), so two lanes commit them at once. Here
partition 0 carries the recordings of the even reports and the webcam recordings and reports
of the odd ones, partition 1 the other way round: a lane that locked its recordings' rows in
one statement and then wanted its webcam recordings' rows in another waited for the other
lane doing the same in the opposite direction, and PostgreSQL broke the cycle by aborting
one (`pg_stat_database.deadlocks` counted it; the worker retried). The final state must
still be the reference model's, whatever the interleaving.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import asyncpg
import pytest
from support.event_builders import sample
from support.reference_model import database_tables, diff_tables, model_tables
from support.storage import db, interview_item  # noqa: F401

from worker.dev.seeds import interview_samples
from worker.handlers.base import Item
from worker.router import apply_batch

pytestmark = pytest.mark.integration

ROUNDS = 6
REPORTS_PER_ROUND = 120
_SAMPLES = {json.loads(body)["event"]: body for body in interview_samples()}


def _event(name: str, report: str, partition: int, offset: int, **data: object) -> Item:
    n = int(report.rsplit("-", 1)[1])
    body = sample(_SAMPLES[name], report_id=report, candidate_id=f"cand-{n % 7}", **data)
    return interview_item(body, offset=offset, partition=partition)


def _partition(reports: Sequence[str], partition: int, first_offset: int) -> list[Item]:
    """Recordings of the reports of this parity, webcam recordings, scores and reports of the
    others: the opposite of what the other partition holds."""
    mine = reports[partition::2]
    theirs = reports[1 - partition :: 2]
    events = [
        *[
            ("interview_recording.completed", r, {"interview_recording_url": f"u/{r}"})
            for r in mine
        ],
        *[
            (
                "interview_webcam_recording.completed",
                r,
                {"interview_webcam_recording_url": f"w/{r}"},
            )
            for r in theirs
        ],
        *[("proctoring_score.completed", r, {"proctoring_score": 50 + partition}) for r in theirs],
        *[("interview_report.created", r, {"interview_id": f"i/{r}"}) for r in theirs],
    ]
    return [
        _event(name, r, partition, first_offset + k, **data)
        for k, (name, r, data) in enumerate(events)
    ]


async def _deadlocks(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
    finally:
        await conn.close()


async def _commit(conn: asyncpg.Connection, items: list[Item]) -> int:
    """Commit one batch as a lane does, retrying a deadlock as the worker does; returns how
    many attempts PostgreSQL aborted."""
    aborted = 0
    while True:
        try:
            async with conn.transaction():
                await apply_batch(conn, items)
            return aborted
        except asyncpg.DeadlockDetectedError:
            aborted += 1


async def test_two_lanes_writing_part_events_of_the_same_reports_never_deadlock(
    db: asyncpg.Connection,  # noqa: F811
    database_url: str,
) -> None:
    lanes = [await asyncpg.connect(database_url) for _ in range(2)]
    for lane in lanes:
        # A deadlock is found after deadlock_timeout; 1 s by default would make the failing
        # case slow, not different.
        await lane.execute("SET deadlock_timeout = '50ms'")
    before = await _deadlocks(database_url)
    delivered: list[Item] = []
    aborted = 0
    try:
        for round_ in range(ROUNDS):
            reports = [f"r{round_}-{n:04}" for n in range(REPORTS_PER_ROUND)]
            batches = [_partition(reports, p, round_ * 1000) for p in (0, 1)]
            delivered += batches[0] + batches[1]
            results = await asyncio.gather(*(_commit(lanes[p], batches[p]) for p in (0, 1)))
            aborted += sum(results)
        for lane in lanes:
            # Counted deadlocks reach pg_stat_database when the backend next goes idle.
            await lane.execute("SELECT pg_stat_force_next_flush()")
            await lane.execute("SELECT 1")
    finally:
        for lane in lanes:
            await lane.close()
    after = await _deadlocks(database_url)

    expected = model_tables(delivered)
    tables = ("interview_reports", "candidates", "interviews")
    diff = diff_tables({t: expected[t] for t in tables}, await database_tables(db, tables), limit=5)
    assert not diff, diff
    assert (after - before, aborted) == (0, 0), (
        f"{after - before} deadlocks counted by PostgreSQL, {aborted} attempts aborted"
    )
