"""Restarts lose nothing and duplicate nothing (acceptance 3).

The worker runs as the production process (`python -m worker run`) with small batches. It is
stopped with SIGTERM while the stream is only partly stored, restarted, then SIGKILLed while
consuming, restarted again; at the end every distinct event is stored once, the session
counters count distinct events, and the committed offsets account for every record produced,
duplicates included.

Three waves are produced: the first before the first start, the second while the worker is
stopped, the third while it is down after the SIGKILL; so at each stop some of the stream is
stored and some is not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.e2e import (
    WorkerProcess,
    count_rows,
    expected_offsets,
    fetch,
    settings_for,
    wait_for,
    wait_for_offsets,
    worker_process,
)
from support.infra import Topics, consume_all, produce

from schemas.proctoring import EVENT_TYPES, FLAG_TYPES
from worker.dev.seeds import system_check_example

pytestmark = pytest.mark.integration

SESSIONS = 50
EVENTS_PER_SESSION = 60  # 3000 distinct events
WAVES = 3
DUPLICATE_SHARE = 0.10
MEDIA_TYPES = {"FACE_ABSENCE", "MULTIPLE_FACE", "SOUND_DETECTED", "PERIODIC_SNAPSHOT"}
# Flags are over-represented so that the flag counters have something to count.
TYPE_WEIGHTS = [4 if t in FLAG_TYPES else 1 for t in EVENT_TYPES]

Event = tuple[bytes, bytes, str, str, str]  # key, value, exam, candidate, type


def _events(rng: random.Random) -> list[Event]:
    check = json.loads(system_check_example())
    base = dt.datetime(2025, 9, 21, 8, tzinfo=dt.UTC)
    events: list[Event] = []
    for s in range(SESSIONS):
        exam, candidate = f"exam-{s % 7}", f"cand-{s}"
        for n in range(EVENTS_PER_SESSION):
            kind = rng.choices(EVENT_TYPES, TYPE_WEIGHTS)[0]
            # Distinct createdAt within a session makes every event a distinct identity;
            # offsets vary so the same instant is written in several notations.
            created = base + dt.timedelta(seconds=n * 7 + s, milliseconds=n % 3)
            offset = dt.timezone(dt.timedelta(hours=(n % 5) - 2))
            body: dict[str, object] = {
                "examId": exam,
                "candidateId": candidate,
                "type": kind,
                "createdAt": created.astimezone(offset).isoformat(),
                "description": f"event {n} of session {s}",
            }
            if kind in MEDIA_TYPES:
                body["mediaUrl"] = f"https://media.example.com/{exam}/{candidate}/{n}.jpg"
            if kind == "SYSTEM_CHECK_COMPLETED":
                body["systemCheck"] = check
            key = f"{exam}:{candidate}".encode()
            events.append((key, json.dumps(body).encode(), exam, candidate, kind))
    return events


def _waves(rng: random.Random, events: list[Event]) -> Iterator[list[tuple[bytes, bytes]]]:
    """Split the events over the waves, each with about 10% redeliveries of events of its own
    or an earlier wave, shuffled (per-key order does not matter to the summaries)."""
    order = list(events)
    rng.shuffle(order)
    size = len(order) // WAVES
    for w in range(WAVES):
        fresh = order[w * size : (w + 1) * size if w < WAVES - 1 else len(order)]
        earlier = order[: (w + 1) * size]
        dups = rng.sample(earlier, int(len(fresh) * DUPLICATE_SHARE))
        wave = [(e[0], e[1]) for e in [*fresh, *dups]]
        rng.shuffle(wave)
        yield wave


async def _stored(database_url: str) -> int:
    return await count_rows(database_url, "proctoring_events")


async def _wait_running_and_storing(
    proc: WorkerProcess, database_url: str, above: int, what: str
) -> int:
    """Wait until the process has stored more than `above` events; return the count."""

    async def progressed() -> int:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{proc.log_tail()}")
        n = await _stored(database_url)
        return n if n > above else 0

    try:
        return int(await wait_for(progressed, 90, what, interval=0.02))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- worker log ---\n{proc.log_tail()}") from None


async def test_sigterm_and_sigkill_restarts_lose_and_duplicate_nothing(
    kafka_bootstrap: str, database_url: str, topics: Topics, tmp_path: Path
) -> None:
    rng = random.Random(20250921)
    events = _events(rng)
    waves = list(_waves(rng, events))
    produced = sum(len(w) for w in waves)
    assert len(events) == SESSIONS * EVENTS_PER_SESSION
    assert produced > len(events)  # redeliveries are part of the stream

    settings = settings_for(kafka_bootstrap, database_url, topics, max_batch_records=200)
    log_path = tmp_path / "worker.log"
    procs: list[WorkerProcess] = []
    metadata = []

    def start() -> WorkerProcess:
        proc = worker_process(settings, log_path)
        procs.append(proc)
        return proc

    try:
        # 1. First wave; stop with SIGTERM as soon as the first batches are stored.
        metadata += await produce(kafka_bootstrap, topics.proctoring, waves[0])
        proc = start()
        seen = await _wait_running_and_storing(proc, database_url, 0, "first stored events")
        assert seen < len(events)  # mid-stream: the other waves are not even produced
        code = await asyncio.to_thread(proc.terminate_and_wait, 60)
        assert code == 0, f"SIGTERM exit code {code}:\n{proc.log_tail()}"
        after_term = await _stored(database_url)

        # 2. Second wave while stopped; restart, SIGKILL as soon as it makes progress.
        metadata += await produce(kafka_bootstrap, topics.proctoring, waves[1])
        proc = start()
        seen = await _wait_running_and_storing(
            proc, database_url, after_term, "progress after the SIGTERM restart"
        )
        assert seen < len(events)
        await asyncio.to_thread(proc.kill_and_wait, 30)
        after_kill = await _stored(database_url)
        assert after_kill < len(events)

        # 3. Third wave while down; restart and let it finish.
        metadata += await produce(kafka_bootstrap, topics.proctoring, waves[2])
        proc = start()
        try:
            await wait_for_offsets(
                database_url, topics.group_id, expected_offsets(metadata), timeout=120
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{proc.log_tail()}") from None
        code = await asyncio.to_thread(proc.terminate_and_wait, 60)
        assert code == 0, f"SIGTERM exit code {code}:\n{proc.log_tail()}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)

    # -- no loss, no duplicate ----------------------------------------------------------------
    assert len(metadata) == produced
    offsets = await fetch(
        database_url,
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE group_id = $1",
        topics.group_id,
    )
    committed = {(r["topic"], r["partition"]): r["next_offset"] for r in offsets}
    assert committed == expected_offsets(metadata)
    assert sum(committed.values()) == produced

    assert await _stored(database_url) == len(events)
    rows = await fetch(
        database_url,
        "SELECT exam_id, candidate_id, type, count(*) AS n FROM proctoring_events "
        "GROUP BY exam_id, candidate_id, type",
    )
    stored_types = {(r["exam_id"], r["candidate_id"], r["type"]): r["n"] for r in rows}
    assert stored_types == dict(Counter((e[2], e[3], e[4]) for e in events))

    flags: Counter[tuple[str, str]] = Counter()
    totals: Counter[tuple[str, str]] = Counter()
    for _, _, exam, candidate, kind in events:
        totals[(exam, candidate)] += 1
        if kind in FLAG_TYPES:
            flags[(exam, candidate)] += 1
    sessions = {
        (r["exam_id"], r["candidate_id"]): (r["flag_count"], r["event_count"])
        for r in await fetch(
            database_url,
            "SELECT exam_id, candidate_id, flag_count, event_count FROM proctoring_sessions",
        )
    }
    assert sessions == {k: (flags[k], totals[k]) for k in totals}

    # Nothing was dead-lettered on the way.
    assert await consume_all(kafka_bootstrap, topics.dlq, 1, timeout=2) == []
