"""Campaign 2, rebalance storm: three production processes in one group on 6-partition topics,
members joining and leaving every few seconds (SIGTERM and SIGKILL mixed) while events flow.

Each record's effect must be committed by exactly one member: the tables equal the
reference, the dead letters are exactly the malformed records, the committed offsets account
for every record produced, and every graceful leave exits 0.

The storm itself is `rebalance_storm`, shared with campaign 7 (test_chaos_slow_commits.py),
which runs it with every commit slowed down by a trigger installed before the members start.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from support import infra
from support.chaos import (
    FAST_GROUP_ENV,
    SEED,
    SIZES,
    ProcessCampaign,
    check_dlq,
    count_in_log,
    offsets_total,
    read_dlq,
    report,
    wait_until,
)
from support.e2e import WorkerProcess, worker_process

from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SIZES.test_timeout_s)]

MEMBERS = 3
PARTITIONS = 6


async def test_rebalance_storm_commits_each_record_once(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
) -> None:
    await rebalance_storm(
        "2 rebalance storm",
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_factory=topic_factory,
        fresh_database=fresh_database,
        tmp_path=tmp_path,
        seed=SEED + 2,
        events=SIZES.storm_events,
        seconds=SIZES.storm_seconds,
        tag="s",
    )


BeforeMembers = Callable[[Settings], Awaitable[None]]
ExtraFigures = Callable[[Sequence[Path]], Awaitable[Mapping[str, Any]]]


async def rebalance_storm(
    name: str,
    *,
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
    seed: int,
    events: int,
    seconds: float,
    tag: str,
    before_members: BeforeMembers | None = None,
    extra_figures: ExtraFigures | None = None,
    **settings_overrides: Any,
) -> None:
    """The storm: `events` records (stream `seed`, IDs tagged `tag`) published over about
    `seconds` while members join, leave (SIGTERM) and die (SIGKILL) every 2-5 s; then a full
    group drains the rest, stops gracefully, and the run is judged by the tables against the
    reference, the committed offsets and the dead-letter topic. Figures go to `report` under
    `name`.

    `before_members(settings)` runs once the topics and the members' settings exist, before
    any record is published or any member starts (the database is not migrated yet: a hook
    that needs the tables migrates it). `extra_figures(member_logs)` runs after every check
    passed; what it returns joins the report. `settings_overrides` go to `settings_for`."""
    campaign = await ProcessCampaign.create(
        kafka_bootstrap,
        database_url,
        topic_factory,
        seed=seed,
        events=events,
        partitions=PARTITIONS,
        tag=tag,
        **settings_overrides,
    )
    clock, topics, settings = campaign.clock, campaign.topics, campaign.settings
    rng = random.Random(seed)
    if before_members is not None:
        await before_members(settings)
    logs = [tmp_path / f"member-{i}.log" for i in range(MEMBERS)]
    slots: list[WorkerProcess | None] = [None] * MEMBERS
    procs = campaign.procs
    leaving: dict[int, asyncio.Task[int]] = {}  # pid -> graceful stop in flight
    killed: set[int] = set()
    actions: Counter[str] = Counter()
    population: list[int] = []

    booted_after: dict[int, tuple[int, int]] = {}  # pid -> (slot, "worker running" lines)

    def start(slot: int) -> None:
        baseline = count_in_log(logs[slot], "worker running")
        proc = worker_process(settings, logs[slot], FAST_GROUP_ENV)
        booted_after[proc.pid] = (slot, baseline)
        slots[slot] = proc
        procs.append(proc)

    def booted(proc: WorkerProcess) -> bool:
        """Past start-up (signal handlers installed): a SIGTERM now is a graceful leave."""
        slot, baseline = booted_after[proc.pid]
        return count_in_log(logs[slot], "worker running") > baseline

    def running() -> list[int]:
        """Slots whose member runs and has not been told to leave."""
        return [
            i
            for i, p in enumerate(slots)
            if p is not None and p.poll() is None and p.pid not in leaving and p.pid not in killed
        ]

    def check_members() -> None:
        for p in procs:
            if p.poll() is not None and p.pid not in killed and p.pid not in leaving:
                raise AssertionError(f"member died on its own ({p.returncode}):\n{p.log_tail()}")

    async with campaign.publishing(kafka_bootstrap, seconds) as (publisher, producing):
        for slot in range(MEMBERS):
            start(slot)
        storm_ends = time.monotonic() + seconds
        while time.monotonic() < storm_ends:
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            check_members()
            up = running()
            free = [i for i in range(MEMBERS) if i not in up]
            if len(up) <= 1:
                action = "join"
            elif not free:
                action = rng.choice(("leave", "kill"))
            else:
                action = rng.choice(("join", "leave", "kill"))
            if action == "leave":
                up = [i for i in up if booted(slots[i])]  # type: ignore[arg-type]
                if not up:
                    action = "kill"
                    up = running()
            if action == "join":
                start(rng.choice(free))
            else:
                proc = slots[rng.choice(up)]
                assert proc is not None
                if action == "kill":
                    killed.add(proc.pid)
                    proc.kill()
                else:
                    leaving[proc.pid] = asyncio.create_task(
                        asyncio.to_thread(proc.terminate_and_wait, 60)
                    )
            actions[action] += 1
            population.append(len(running()))
        await producing
        storm_end = clock()

        # Calm: a full group drains the rest.
        for i in range(MEMBERS):
            if i not in running():
                start(i)

        async def drained() -> bool:
            check_members()
            members = [slots[i] for i in running()]
            return all(booted(p) for p in members if p is not None) and (
                await offsets_total(database_url, topics.group_id) >= publisher.produced
            )

        await wait_until(drained, SIZES.test_timeout_s / 2, "the group to drain")
        drained_at = clock()
        final = [slots[i] for i in running()]
        codes = await asyncio.gather(
            *(asyncio.to_thread(p.terminate_and_wait, 60) for p in final if p is not None)
        )
        leave_codes = await asyncio.gather(*leaving.values())

    assert all(c == 0 for c in codes), (codes, [p.log_tail() for p in procs if p.returncode])
    assert all(c == 0 for c in leave_codes), leave_codes
    committed, tables = await campaign.judge_tables(database_url, publisher, fresh_database)
    malformed = publisher.malformed()
    dlq = check_dlq(await read_dlq(kafka_bootstrap, topics.dlq, set(malformed)), malformed)
    extra = {} if extra_figures is None else await extra_figures(logs)
    report(
        name,
        **campaign.figures(publisher),
        actions=dict(actions),
        member_processes=len(procs),
        members_over_time="".join(map(str, population)),
        assignments=sum(count_in_log(p, "partitions assigned") for p in logs),
        fenced_batches=sum(count_in_log(p, "offsets fenced") for p in logs),
        batches_retried=sum(count_in_log(p, "batch failed, retrying") for p in logs),
        tracebacks=sum(count_in_log(p, "Traceback") for p in logs),
        storm_s=storm_end,
        drained_after_s=drained_at,
        committed_offsets_sum=committed,
        **tables,
        **dlq,
        **extra,
        total_s=clock(),
    )
