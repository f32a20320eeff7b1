"""Campaign 8, failover, tried as an operator would: `worker run` with DATABASE_URL naming a
primary and its asynchronous streaming standby (tests/support/replication.py), a paced stream
of both topics; mid-stream the primary is SIGKILLed, the standby promoted a few seconds later,
and the producer keeps going throughout.

What the contract and issue 24 ask, and how each is judged:

- Exactly-once effect (docs/contract.md §5): the standby misses the primary's last commits
  (the WAL sender is held back before the crash, so this is certain, not a race); the worker
  must notice that the promoted database's offsets are behind what it committed and replay
  from them, idempotently. At the end the promoted database's tables equal the reference, its
  offsets account for every record produced, and every malformed record is dead-lettered.
- The worker never exits: the process is alive at every sample and stops with 0 on SIGTERM.
- Readiness means "the last commit attempt succeeded, or (with nothing pending) the database
  answers". A sampler reads, every SAMPLE_S and in this order, the worker's retry counter
  (/metrics), /readyz, and the stored offsets of the database the data must end up in. After
  the crash, once the counter shows a failed attempt, and until the stored offsets show a
  commit on the promoted server, a 200 from /readyz is "ready while stuck": records are
  pending (the producer never stops) and nothing can be, or has been, stored. A fence
  (`worker_offsets_fenced_total`, read with the retries) is an attempt that reached a writable
  server and found the offsets behind (the standby missed commits): the worker then has
  nothing pending until it has read again, so only a failure after the last fence counts.
  Read in this order, a 200 followed by unchanged offsets means no commit had succeeded when
  /readyz answered. There must be none, /readyz must answer 503 during the outage, and 200 again
  once the worker has drained.
- Several hosts and no target_session_attrs: the worker must not keep a session on the
  read-only standby while the primary is down (the sampler lists the standby's client
  backends other than its own; a session seen by two samples is one the worker kept).

Figures per failover: the outage (crash to promotion), the offsets the standby never received,
the time from the promotion to the first commit on the promoted server (to SAMPLE_S), and the
longest span of "ready while stuck". CHAOS_SCALE=full runs a longer stream and fails over
twice: after the first promotion the dead primary is rebuilt as the new primary's standby (a
fresh base backup) and the second failover goes back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from support import infra
from support.chaos import (
    SCALE,
    SEED,
    SIZES,
    ProcessCampaign,
    check_dlq,
    count_in_log,
    read_dlq,
    report,
    wait_until,
)
from support.e2e import WorkerProcess, http_get, worker_process
from support.replication import StreamingPair

from worker.dev.stack import EmbeddedPostgres, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SIZES.test_timeout_s)]


@dataclass(frozen=True)
class Plan:
    events: int
    produce_s: float  # the stream is published over this long, failovers included
    steady_s: float  # committing to the primary before a failure
    lag_s: float  # the standby receives nothing for this long before the crash
    outage_s: float  # primary dead, standby not yet promoted
    failovers: int


PLAN = {
    "ci": Plan(events=2_000, produce_s=16.0, steady_s=2.0, lag_s=1.0, outage_s=4.0, failovers=1),
    "full": Plan(
        events=20_000, produce_s=100.0, steady_s=15.0, lag_s=2.0, outage_s=15.0, failovers=2
    ),
}[SCALE]

DATABASE = "events"
SAMPLE_S = 0.2
SAMPLER = "failover-sampler"  # application_name of every connection this test makes
# The operator's default backoff cap is 30 s; 5 s keeps the run short while leaving, after a
# promotion, a wait before the next attempt that a sampler at SAMPLE_S cannot miss.
RETRY_MAX_S = 5.0

STORED = "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE group_id = $1"
OTHER_SESSIONS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' "
    "AND application_name <> $2"
)


@dataclass
class Failover:
    """One crash and promotion, as the test drove it (times on the campaign clock)."""

    target: EmbeddedPostgres  # the standby promoted
    retries_at_kill: int
    stored_on_primary: int  # the last stored offsets read from the primary before the crash
    kill_at: float
    standby_stored: int | None = None  # on the standby just before its promotion
    promote_at: float | None = None
    promoted_at: float | None = None

    @property
    def withheld(self) -> int:
        """Offsets committed on the primary that the standby never received (at least)."""
        assert self.standby_stored is not None
        return self.stored_on_primary - self.standby_stored


@dataclass(frozen=True)
class Sample:
    at: float  # when the sample began
    retries: int | None  # worker_retries_total, all dependencies (read first)
    fenced: int | None  # worker_offsets_fenced_total (read with the retries)
    status: int | None  # /readyz status (read second; None: no answer)
    stored: int | None  # stored offsets on the sampled server (read last)
    server: int  # port of that server
    standby_sessions: frozenset[int]  # other client backends on the standby, in an outage
    exit_code: int | None


@dataclass
class Sampler:
    proc: WorkerProcess
    port: int  # the worker's metrics port
    group_id: str
    primary: EmbeddedPostgres
    started: float = field(default_factory=time.monotonic)
    failovers: list[Failover] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def clock(self) -> float:
        return time.monotonic() - self.started

    def serving(self) -> EmbeddedPostgres:
        """Where the worker's commits can land: after a crash, only on the promoted standby."""
        return self.failovers[-1].target if self.failovers else self.primary

    def in_outage(self) -> Failover | None:
        last = self.failovers[-1] if self.failovers else None
        return last if last is not None and last.promote_at is None else None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, SAMPLE_S - time.monotonic() + began))

    async def sample(self) -> None:
        at = self.clock()
        outage = self.in_outage()
        server = self.serving()
        retries, fenced = await worker_counters(self.port)
        status = await readyz(self.port)
        stored = await stored_on(server, self.group_id)
        sessions: frozenset[int] = frozenset()
        if outage is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                rows = await sql_rows(outage.target, OTHER_SESSIONS, DATABASE, SAMPLER)
                sessions = frozenset(rows)
        self.samples.append(
            Sample(at, retries, fenced, status, stored, server.port, sessions, self.proc.poll())
        )


# -- reading the worker and the servers ---------------------------------------------------


async def readyz(port: int) -> int | None:
    try:
        status, _ = await asyncio.wait_for(http_get(port, "/readyz"), 5)
    except (OSError, TimeoutError, IndexError, ValueError):
        return None
    return status


async def worker_metrics(port: int, *names: str) -> list[int | None]:
    """The sum of every sample of each counter in `names` on one /metrics answer (None: no
    answer)."""
    try:
        status, body = await asyncio.wait_for(http_get(port, "/metrics"), 5)
    except (OSError, TimeoutError, IndexError, ValueError):
        return [None] * len(names)
    if status != 200:
        return [None] * len(names)
    totals = dict.fromkeys(names, 0.0)
    for line in body.decode().splitlines():
        for name in names:
            if line.startswith((f"{name}{{", f"{name} ")):
                totals[name] += float(line.rsplit(" ", 1)[1])
    return [int(totals[name]) for name in names]


async def worker_metric(port: int, name: str) -> int | None:
    return (await worker_metrics(port, name))[0]


async def worker_retries(port: int) -> int | None:
    return await worker_metric(port, "worker_retries_total")


async def worker_counters(port: int) -> tuple[int | None, int | None]:
    """worker_retries_total and worker_offsets_fenced_total, from one scrape."""
    retries, fenced = await worker_metrics(
        port, "worker_retries_total", "worker_offsets_fenced_total"
    )
    return retries, fenced


async def sql_rows(server: EmbeddedPostgres, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(
        server.url(DATABASE), timeout=2, server_settings={"application_name": SAMPLER}
    )
    try:
        return [r[0] for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def stored_on(server: EmbeddedPostgres, group_id: str) -> int | None:
    """Sum of the group's stored next offsets on `server` (None: it does not answer, or the
    worker has not migrated yet)."""
    try:
        return int((await sql_rows(server, STORED, group_id))[0])
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None


def logged_errors(path: Path, event: str) -> dict[str, int]:
    """How often each kind of error (its text up to the first ':') was logged with `event`."""
    kinds: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == event:
                kinds[str(entry.get("error", "")).split(":", 1)[0]] += 1
    return dict(kinds)


# -- judging the samples ------------------------------------------------------------------


def stuck_while_ready(samples: list[Sample], f: Failover) -> list[Sample]:
    """Samples after `f`'s crash at which /readyz said 200 although a commit attempt had
    failed since the crash (and since the last fence) and nothing had been stored on the
    promoted server since."""
    assert f.standby_stored is not None
    stuck: list[Sample] = []
    failed_before = f.retries_at_kill  # retries counted up to the last fence
    fenced = None
    for s in samples:
        if s.at < f.kill_at or s.retries is None:
            continue
        if s.fenced is not None and fenced is not None and s.fenced > fenced:
            failed_before = s.retries
        fenced = s.fenced if s.fenced is not None else fenced
        if (
            s.server == f.target.port
            and s.retries > failed_before
            and s.status == 200
            and s.stored is not None
            and s.stored <= f.standby_stored
        ):
            stuck.append(s)
    return stuck


def longest_run(samples: list[Sample], chosen: list[Sample]) -> float:
    """The longest time covered by consecutive samples that are all in `chosen`."""
    picked = {id(s) for s in chosen}
    longest, first = 0.0, None
    for s in samples:
        if id(s) in picked:
            first = s if first is None else first
            longest = max(longest, s.at - first.at + SAMPLE_S)
        else:
            first = None
    return round(longest, 1)


def judge_failover(samples: list[Sample], f: Failover, n: int) -> tuple[dict[str, Any], list[str]]:
    """Figures of failover `n`, and what it got wrong (empty when nothing)."""
    assert f.promote_at is not None and f.promoted_at is not None
    assert f.standby_stored is not None
    outage = [s for s in samples if f.kill_at <= s.at < f.promote_at]
    after = [s for s in samples if s.at >= f.promoted_at and s.server == f.target.port]
    committed = next(
        (s for s in after if s.stored is not None and s.stored > f.standby_stored), None
    )
    ready_again = next(
        (s for s in after if committed is not None and s.at >= committed.at and s.status == 200),
        None,
    )
    stuck = stuck_while_ready(samples, f)
    seen: dict[int, int] = {}
    for s in outage:
        for pid in s.standby_sessions:
            seen[pid] = seen.get(pid, 0) + 1
    kept = sorted(pid for pid, times in seen.items() if times >= 2)
    statuses = [s.status for s in outage]
    figures = {
        f"f{n}_outage_s": round(f.promote_at - f.kill_at, 1),
        f"f{n}_withheld_from_standby": f.withheld,
        f"f{n}_promotion_s": round(f.promoted_at - f.promote_at, 2),
        f"f{n}_first_commit_after_promotion_s": (
            None if committed is None else round(committed.at - f.promoted_at, 1)
        ),
        f"f{n}_ready_again_after_promotion_s": (
            None if ready_again is None else round(ready_again.at - f.promoted_at, 1)
        ),
        f"f{n}_outage_readyz": {
            str(code): statuses.count(code) for code in sorted(set(statuses), key=str)
        },
        f"f{n}_ready_while_stuck_samples": len(stuck),
        f"f{n}_ready_while_stuck_longest_s": longest_run(samples, stuck),
        f"f{n}_worker_sessions_kept_on_standby": len(kept),
    }
    problems = []
    if 503 not in statuses:
        problems.append(
            f"failover {n}: /readyz never answered 503 during the {figures[f'f{n}_outage_s']} s "
            f"outage (statuses {figures[f'f{n}_outage_readyz']})"
        )
    if stuck:
        problems.append(
            f"failover {n}: /readyz answered 200 at {len(stuck)} samples while a commit attempt "
            f"had failed and nothing was stored (longest {longest_run(samples, stuck)} s; from "
            f"{stuck[0].at - f.kill_at:.1f} s to {stuck[-1].at - f.kill_at:.1f} s after the "
            f"crash, promotion at {f.promoted_at - f.kill_at:.1f} s)"
        )
    if kept:
        problems.append(
            f"failover {n}: the worker kept {len(kept)} session(s) on the read-only standby "
            f"during the outage (pids {kept}, seen in {[seen[p] for p in kept]} samples)"
        )
    if committed is None:
        problems.append(f"failover {n}: no commit seen on the promoted server")
    if not any(s.retries is not None and s.retries > f.retries_at_kill for s in outage):
        # Without it "ready while stuck" could not be judged at all.
        problems.append(f"failover {n}: worker_retries_total did not rise during the outage")
    return figures, problems


# -- the campaign -------------------------------------------------------------------------


async def test_failover_to_a_promoted_standby_loses_nothing_and_is_unready_while_stuck(
    kafka_bootstrap: str,
    topic_factory: infra.TopicFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker must choose for itself what a multi-host URL without target_session_attrs
    # means; a value in this shell would choose for it.
    monkeypatch.delenv("PGTARGETSESSIONATTRS", raising=False)
    work = Path(tempfile.mkdtemp(prefix="event-worker-failover-"))
    pair = StreamingPair(work)
    try:
        await pair.start()
        await create_database(pair.primary, DATABASE)
        await run_campaign(kafka_bootstrap, topic_factory, pair, work)
    finally:
        await asyncio.to_thread(pair.close)
        shutil.rmtree(work, ignore_errors=True)


async def create_database(server: EmbeddedPostgres, name: str) -> None:
    conn = await asyncpg.connect(server.url(), server_settings={"application_name": SAMPLER})
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def run_campaign(
    kafka_bootstrap: str, topic_factory: infra.TopicFactory, pair: StreamingPair, work: Path
) -> None:
    metrics_port = free_port()
    campaign = await ProcessCampaign.create(
        kafka_bootstrap,
        pair.url(DATABASE),
        topic_factory,
        seed=SEED + 80,
        events=PLAN.events,
        partitions=4,
        tag="fo",
        retry_max_s=RETRY_MAX_S,
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
    )
    log_path = work / "worker.log"
    stop_sampling = asyncio.Event()
    async with campaign.publishing(kafka_bootstrap, PLAN.produce_s) as (publisher, producing):
        proc = worker_process(campaign.settings, log_path)
        campaign.procs.append(proc)
        sampler = Sampler(proc, metrics_port, campaign.topics.group_id, pair.primary)
        sampling = asyncio.create_task(sampler.run(stop_sampling))

        def alive() -> None:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{proc.log_tail()}")

        async def stored_at_least(n: int) -> bool:
            alive()
            stored = await stored_on(sampler.serving(), campaign.topics.group_id)
            return stored is not None and stored >= n

        try:
            produced_at_promotion = []
            for _ in range(PLAN.failovers):
                if sampler.failovers:
                    await pair.rejoin()
                before = await stored_on(pair.primary, campaign.topics.group_id) or 0
                await wait_until(lambda b=before: stored_at_least(b + 1), 120, "a commit")
                await asyncio.sleep(PLAN.steady_s)
                await pair.hold_replication()
                await asyncio.sleep(PLAN.lag_s)
                alive()
                failover = Failover(
                    target=pair.standby,
                    retries_at_kill=await worker_retries(metrics_port) or 0,
                    stored_on_primary=await stored_on(pair.primary, campaign.topics.group_id) or 0,
                    kill_at=sampler.clock(),
                )
                sampler.failovers.append(failover)
                await pair.kill_primary()
                await asyncio.sleep(PLAN.outage_s)
                alive()
                failover.standby_stored = await stored_on(pair.standby, campaign.topics.group_id)
                assert failover.standby_stored is not None, "the standby does not answer"
                failover.promote_at = sampler.clock()
                await pair.promote()
                failover.promoted_at = sampler.clock()
                produced_at_promotion.append(publisher.produced)
            await producing
            await wait_until(
                lambda: stored_at_least(publisher.produced), 120, "the worker to drain"
            )

            async def ready() -> bool:
                alive()
                return await readyz(metrics_port) == 200

            await wait_until(ready, 30, "/readyz to answer 200 once drained")
            fenced = await worker_metric(metrics_port, "worker_offsets_fenced_total")
            retries = await worker_retries(metrics_port)
        finally:
            stop_sampling.set()
            await sampling
        code = await asyncio.to_thread(proc.terminate_and_wait, 60)
        assert code == 0, f"SIGTERM exit code {code}:\n{proc.log_tail()}"

    samples = sampler.samples
    exits = {s.exit_code for s in samples} - {None}
    assert not exits, f"the worker exited during the campaign: {exits}"
    promoted = pair.primary

    async def reference_database() -> str:
        await create_database(promoted, "reference")
        return promoted.url("reference")

    committed, tables = await campaign.judge_tables(
        promoted.url(DATABASE), publisher, reference_database
    )
    malformed = publisher.malformed()
    dlq = check_dlq(await read_dlq(kafka_bootstrap, campaign.topics.dlq, set(malformed)), malformed)

    figures: dict[str, Any] = {}
    problems: list[str] = []
    for n, failover in enumerate(sampler.failovers, 1):
        found, wrong = judge_failover(samples, failover, n)
        figures.update(found)
        problems += wrong
    report(
        "8 failover",
        **campaign.figures(publisher),
        failovers=len(sampler.failovers),
        produced_at_promotion=produced_at_promotion,
        **figures,
        samples=len(samples),
        retries=retries,
        fenced=fenced,
        logged_batch_failed=logged_errors(log_path, "batch failed, retrying"),
        logged_split=count_in_log(log_path, "splitting it"),
        logged_fenced=count_in_log(log_path, "offsets fenced"),
        tracebacks_in_log=count_in_log(log_path, "Traceback"),
        # The worker's writes the standby refused before its promotion (its own log).
        read_only_refusals=sum(
            count_in_log(server.log_path, "in a read-only transaction") for server in pair.servers
        ),
        committed_offsets_sum=committed,
        **tables,
        **dlq,
        total_s=round(sampler.clock(), 1),
    )
    withheld = [f.withheld for f in sampler.failovers]
    assert all(n > 0 for n in withheld), (
        f"the standby lacked no commit at a crash ({withheld} offsets): the replay from the "
        "promoted database's offsets was not exercised"
    )
    assert not problems, "readiness during the failover:\n" + "\n".join(problems)
