"""`python -m bench.run` (`make bench`): the worker against its baselines and ceilings, one table.

Rows (see bench/README.md): proctoring worker / naive / peer / copy / bare-copy / fetch, mixed
worker, the latency at a steady offered load of a bare consumer and of the worker, and the
worker with tracing off and on (records carrying traceparent headers). Results
go to stdout as a table and to `<out>/<UTC timestamp>-<git sha>.json`.

`--baseline-rev REV` (or `--compare PATH`) runs another revision's worker beside this tree's,
alternately, on the same records (bench/systems.py); `--rounds N` repeats the worker rows (and
bare-copy, the denominator of the ratio) N times, alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `worker` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import msgspec

from bench import data, ledger, measure, produce, profile, sysinfo
from bench.stack import Stack
from bench.systems import System, WrongCode, exported, on_disk, this_tree
from bench.workerproc import (
    PROFILERS,
    REPO,
    CpuMeter,
    WorkerProcess,
    cpu_windows,
    wait_committed,
)

ALL = (
    "proctoring",
    "wide",
    "naive",
    "peer",
    "copy",
    "bare-copy",
    "fetch",
    "mixed",
    "latency",
    "latency-1000",
    "ledger",
    "tracing",
)
# Runs of the worker with tracing off and on, alternated (off, on, off, on, ...).
TRACING_PAIRS = 2
PARTITIONS = 12
# The "wide" row: the proctoring workload again, on a topic of this many partitions. Scaling
# out means more partitions; the worker's cost must not grow with how many it owns.
WIDE_PARTITIONS = 96
# The tables the mixed workload fills, measured (rows, bytes per row) after its run.
MIXED_TABLES = (
    "proctoring_events",
    "proctoring_sessions",
    "system_checks",
    "candidates",
    "jobs",
    "applicants",
    "interviews",
    "interview_reports",
    "proctoring_violations",
    "consumer_offsets",
)
LATENCY_RATE = 5_000.0
LATENCY_SECONDS = 60.0  # per side at --scale 1
LATENCY_WINDOW_S = 10.0
# The latency rows: offered events/s, seconds per side at --scale 1, rounds (each round: the
# bare consumer, then each worker, every side on fresh topics).
LATENCY_ROWS: dict[str, tuple[float, float, int]] = {
    "latency": (LATENCY_RATE, LATENCY_SECONDS, 1),
    "latency-1000": (1_000.0, 30.0, 3),
}
# Issue 26: at 1 000 events/s the worker adds at most this over the bare consumer, every round.
LATENCY_1000_TARGETS = {"p50_ms": 15.0, "p99_ms": 40.0}
WARMUP_EXAM = "warmup"
# The competent peer's loop: getmany(timeout_ms=..., max_records=...).
PEER_TIMEOUT_MS = 500
PEER_MAX_RECORDS = 5_000
# name: (operator, target, how the targets block shows it)
TARGETS: dict[str, tuple[str, float, str]] = {
    "proctoring_events_per_s": (">=", 100_000, "proctoring worker, events/s"),
    "worker_over_bare_copy": (">=", 0.45, "worker / bare-copy"),
    "worker_over_peer": (">=", 1.5, "worker / peer"),
    "worker_over_naive": (">=", 25, "worker / naive"),
    "latency_p99_added_ms": ("<=", 50, "latency p99, worker - bare, ms"),
    "latency_p50_added_ms": ("<=", 20, "latency p50, worker - bare, ms"),
    "mixed_events_per_s": (">=", 30_000, "mixed worker, events/s"),
    "wide_over_narrow": (">=", 0.9, f"worker {WIDE_PARTITIONS} / {PARTITIONS} partitions"),
    "peak_rss_mb": ("<=", 250, "worker peak RSS, MB"),
    "worker_over_bare_copy_median": (">=", 0.6, "worker / bare-copy, median of rounds"),
    "latency_1000_p50_added_ms": (
        "<=",
        LATENCY_1000_TARGETS["p50_ms"],
        "latency@1000 p50 added, worst round",
    ),
    "latency_1000_p99_added_ms": (
        "<=",
        LATENCY_1000_TARGETS["p99_ms"],
        "latency@1000 p99 added, worst round",
    ),
}
_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def worker_row(
    system: System,
    main: measure.Span | None,
    spans: dict[str, measure.Span],
    rss: float | None,
    counts: dict[str, int],
    sizes: dict[str, Any],
    wal_per_event: float,
    cpu: dict[str, Any],
) -> dict[str, Any]:
    """A worker row of the results (proctoring or mixed)."""
    return {
        "system": system.name,
        "events_per_s": main.rate if main else None,
        "method": main.method if main else None,
        "peak_rss_mb": rss,
        "spans": {k: v.as_dict() for k, v in spans.items()},
        "rows": counts,
        "table_bytes": sizes,
        "wal_bytes_per_event": round(wal_per_event, 1),
        "cpu": cpu,
    }


def labelled(name: str, k: int) -> str:
    """A row's label in round `k` (0-based): the name, then `name #2`, `name #3`, ..."""
    return name if k == 0 else f"{name} #{k + 1}"


# -- one benchmark run ---------------------------------------------------------------------


class Bench:
    def __init__(
        self, args: argparse.Namespace, stack: Stack, run_id: str, systems: list[System]
    ) -> None:
        self.args = args
        self.stack = stack
        self.run_id = run_id
        # The worker builds measured, in the order each round runs them; this tree's last.
        self.systems = systems
        self.this = systems[-1]
        self.only = set(args.only)
        self.results: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.commit_ts = True
        self.commit_ts_reason = ""
        self.sizes: dict[str, Any] = {}

    # -- helpers --------------------------------------------------------------------------

    def topics(self, label: str) -> tuple[str, str, str]:
        base = f"bench.{self.run_id}.{label}"
        return f"{base}.proctoring", f"{base}.interview", f"{base}.dlq"

    def create_topics(self, label: str, partitions: int = PARTITIONS) -> tuple[str, str, str]:
        p, i, d = self.topics(label)
        self.stack.create_topics([(p, partitions), (i, partitions), (d, 1)])
        return p, i, d

    def worker_env(self, database_url: str, group: str, topics: Sequence[str]) -> dict[str, str]:
        p, i, d = topics
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.stack.bootstrap_servers,
            "DATABASE_URL": database_url,
            "WORKER_GROUP_ID": group,
            "WORKER_PROCTORING_TOPIC": p,
            "WORKER_INTERVIEW_TOPIC": i,
            "WORKER_DLQ_TOPIC": d,
            "WORKER_LOG_LEVEL": "WARNING",
            "WORKER_LOG_FORMAT": "json",
            "WORKER_METRICS_PORT": "0",
        }

    def round_order(self, k: int) -> list[tuple[int, System]]:
        """The builds (with their index) in the order round `k` runs them: the other one first
        in even rounds, this tree's first in odd ones, so that whatever the position in a
        round costs (the previous run's database being dropped, a checkpoint) falls on both."""
        order = list(enumerate(self.systems))
        return order if k % 2 == 0 else order[::-1]

    async def worker_database(self, label: str, system: System) -> str:
        """A fresh database migrated by `system`'s own migrator, with the offset log."""
        db = await self.stack.fresh_database(label, migrate=False)
        await system.migrate(db, self.worker_env(db, "bench-migrate", self.topics(label)))
        await self.stack.add_offset_log(db)
        return db

    async def preload(self, records: list[tuple[str, bytes, bytes]]) -> produce.Delivered:
        delivered, seconds = await asyncio.to_thread(
            produce.preload, self.stack.kafka_config(), records
        )
        if delivered.errors:
            raise RuntimeError(
                f"{delivered.errors} records failed to deliver: {delivered.first_error}"
            )
        if not delivered.contiguous():
            self.notes.append("broker offsets were not contiguous from 0; counts use acks")
        say(f"  preloaded {delivered.count} records in {seconds:.1f} s (acknowledged)")
        return delivered

    async def run_worker(
        self,
        label: str,
        topics: Sequence[str],
        database_url: str,
        expected: Callable[[], int],
        timeout: float,
        profiler: str | None = None,
        during: Callable[[WorkerProcess, CpuMeter], Any] | None = None,
        extra_env: dict[str, str] | None = None,
        system: System | None = None,
    ) -> tuple[WorkerProcess, list[tuple[float, int]], float | None, dict[str, Any]]:
        """Start `system`'s worker (this tree's by default), optionally run `during(worker,
        cpu)` (which produces), wait until SUM(next_offset) reaches `expected()`, read its peak
        RSS, SIGTERM it; then check that its database holds that tree's migrations."""
        system = system or self.this
        group = f"bench-{self.run_id}-{label}"
        log_path = self.stack.workdir / f"worker-{label}.log"
        profile_path = None
        if profiler:
            suffix = "txt"
            profile_path = Path(self.args.out) / f"{self.run_id}-{label}-{profiler}.{suffix}"
        worker = WorkerProcess(
            {**self.worker_env(database_url, group, topics), **system.env(), **(extra_env or {})},
            log_path,
            profiler,
            profile_path,
            root=system.root,
        )
        worker.start()
        cpu = CpuMeter({"worker": lambda: [worker.pid], **self.stack.server_pids()})
        try:
            if during is not None:
                await during(worker, cpu)
            samples = await wait_committed(
                worker, database_url, group, expected(), timeout, cpu=cpu
            )
            rss = worker.peak_rss_mb()
        finally:
            code = await asyncio.to_thread(worker.stop)
        if code not in (0, None):
            self.notes.append(f"{label}: worker exited with code {code} after SIGTERM")
        await system.verify_database(database_url)
        return worker, samples, rss, cpu.result()

    async def span(
        self,
        database_url: str,
        group: str,
        samples: list[tuple[float, int]],
        rows: bool,
    ) -> dict[str, Any]:
        conn = await asyncpg.connect(database_url)
        try:
            spans: dict[str, Any] = {}
            if self.commit_ts:
                log_span = await measure.span_from_offset_log(conn, group)
                if log_span is not None:
                    spans["offsets"] = log_span
                if rows:
                    row_span = await measure.span_from_proctoring_rows(conn, WARMUP_EXAM)
                    if row_span is not None:
                        spans["rows"] = row_span
            poll = measure.span_from_samples(samples, "polled SUM(next_offset) every 0.1 s")
            if poll is not None:
                spans["poll"] = poll
        finally:
            await conn.close()
        return spans

    def check_span(self, label: str, span: measure.Span | None) -> None:
        if span is None or span.rate is None:
            self.notes.append(
                f"{label}: everything committed in one batch, too little to time (raise --scale)"
            )
        elif span.batches < 10:
            self.notes.append(f"{label}: only {span.batches} committed batches; the rate is coarse")

    async def baseline(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        cpu: str | None = None,
        on_line: Callable[[str, CpuMeter], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Run `python -m bench.baselines KIND PARAMS` and return its JSON result. Its progress
        lines are handled on the way: `mark N` takes a CPU snapshot (with `cpu`, the name of the
        baseline's process in it, the result then has `cpu` like the worker's rows), any other
        line but the last goes to
        `on_line(line, meter)` (which may produce while the baseline reads)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.baselines",
            kind,
            json.dumps(params),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        pid = proc.pid
        meter = CpuMeter({cpu or kind: lambda: [pid], **self.stack.server_pids()})
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        errors = asyncio.create_task(proc.stderr.read())
        last = ""
        try:
            while line := await proc.stdout.readline():
                text = line.decode(errors="replace").strip()
                if text.startswith("mark "):
                    if cpu:
                        meter.mark(int(text.split()[1]))
                elif text == "hold":  # it waits until the snapshot of its last mark is taken
                    proc.stdin.write(b"go\n")
                    await proc.stdin.drain()
                elif text.startswith("{"):
                    last = text
                elif text and on_line is not None:
                    await on_line(text, meter)
            await proc.wait()
            err = await errors
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            errors.cancel()
        if proc.returncode != 0 or not last:
            raise RuntimeError(
                f"baseline {kind} failed (exit {proc.returncode}):\n"
                f"{err.decode(errors='replace')[-3000:]}"
            )
        result: dict[str, Any] = json.loads(last)
        if cpu:
            result["cpu"] = meter.result()
        return result

    # -- workloads ------------------------------------------------------------------------

    async def run(self) -> None:
        conn = await asyncpg.connect(self.stack.admin_url)
        try:
            self.commit_ts, self.commit_ts_reason = await measure.commit_timestamps(conn)
        finally:
            await conn.close()
        if not self.commit_ts:
            self.notes.append(
                f"{self.commit_ts_reason}: throughput falls back to polling, latency is n/a"
            )
        pspec = data.proctoring_spec(self.args.scale)
        self.sizes["proctoring"] = {
            "events": pspec.events,
            "candidates": pspec.candidates,
            "exams": pspec.exams,
            "partitions": PARTITIONS,
        }
        if self.only & {"proctoring", "wide", "naive", "peer", "fetch"}:
            await self.proctoring(pspec)
        if "copy" in self.only:
            await self.copy(pspec, "copy")
        if "bare-copy" in self.only and "proctoring" not in self.only:
            for k in range(self.args.rounds):
                await self.copy(pspec, "bare-copy", k)
        if "mixed" in self.only:
            await self.mixed()
        for row in LATENCY_ROWS:
            if row in self.only:
                await self.latency(row)
        if "ledger" in self.only:
            say("ledger: the erasure ledger's check per batch, empty and 10 000 entries ...")
            db = await self.stack.fresh_database("ledger")
            self.results["ledger"] = await ledger.measure(db, 10_000, 5, self.args.scale)
            await self.stack.drop_database(db)
        if "tracing" in self.only:
            await self.tracing(pspec)

    async def proctoring_worker(
        self,
        label: str,
        topics: tuple[str, str, str],
        delivered: produce.Delivered,
        system: System,
        profile: bool = True,
    ) -> dict[str, Any]:
        """`system`'s worker over the preloaded proctoring records of `topics`: its row."""
        total = delivered.count
        db = await self.worker_database(f"{label}_worker", system)
        group = f"bench-{self.run_id}-{label}"
        profiler = self.args.profile if profile else None
        wal0 = await measure.wal_position(self.stack.admin_url)
        worker, samples, rss, cpu = await self.run_worker(
            label,
            topics,
            db,
            lambda: delivered.expected_offsets(topics),
            timeout=120 + total / 500,
            profiler=profiler,
            system=system,
        )
        wal = await measure.wal_position(self.stack.admin_url) - wal0
        spans = await self.span(db, group, samples, rows=True)
        main = spans.get("rows") or spans.get("offsets") or spans.get("poll")
        self.check_span(f"proctoring {label}", main)
        conn = await asyncpg.connect(db)
        try:
            counts = await measure.table_counts(conn, ["proctoring_events", "proctoring_sessions"])
        finally:
            await conn.close()
        if counts["proctoring_events"] != total:
            self.notes.append(
                f"proctoring {label}: {counts['proctoring_events']} rows stored for {total} records"
            )
        conn = await asyncpg.connect(db)
        try:
            sizes = await measure.table_bytes(
                conn, ["proctoring_events", "proctoring_sessions", "consumer_offsets"]
            )
        finally:
            await conn.close()
        result = worker_row(system, main, spans, rss, counts, sizes, wal / total, cpu)
        result["profiled"] = profiler
        if profiler and worker.profile_path is not None:
            result["profile"] = self.summarise_profile(worker.profile_path)
            result["stages_us_per_event"] = stage_costs(result)
        await self.stack.drop_database(db)
        return result

    async def proctoring(self, spec: data.ProctoringSpec) -> None:
        say(f"proctoring: generating {spec.events} events ...")
        records = await asyncio.to_thread(data.proctoring_workload, spec)
        topics = self.create_topics("p")
        delivered = await self.preload([(topics[0], r.key, r.value) for r in records])
        mean_bytes = sum(len(r.value) for r in records) / len(records)
        self.sizes["proctoring"]["mean_record_bytes"] = round(mean_bytes, 1)
        wide: tuple[tuple[str, str, str], produce.Delivered] | None = None
        if "wide" in self.only:
            wide_topics = self.create_topics("w", WIDE_PARTITIONS)
            say(f"wide: the same records on {WIDE_PARTITIONS} partitions ...")
            wide = (
                wide_topics,
                await self.preload([(wide_topics[0], r.key, r.value) for r in records]),
            )
        del records
        total = delivered.count
        results = self.results.setdefault("proctoring", {})

        for k in range(self.args.rounds if self.only & {"proctoring", "wide"} else 0):
            # One round: the ratio's denominator, then each build, on the same records.
            if "proctoring" in self.only and "bare-copy" in self.only:
                await self.copy(spec, "bare-copy", k)
            for i, system in self.round_order(k) if "proctoring" in self.only else ():
                label = labelled(system.name, k)
                say(f"proctoring: {label} ...")
                row = await self.proctoring_worker(f"p{i}r{k}", topics, delivered, system)
                results[label] = row
                say(f"  {label}: {_fmt_rate(results[label]['events_per_s'])} events/s")
            for i, system in self.round_order(k) if wide is not None else ():
                assert wide is not None
                label = labelled(system.name.replace("worker", "worker-96p", 1), k)
                say(f"wide: {label} on {WIDE_PARTITIONS} partitions ...")
                result = await self.proctoring_worker(f"w{i}r{k}", *wide, system, profile=False)
                result["partitions"] = WIDE_PARTITIONS
                results[label] = result
                say(f"  {label}: {_fmt_rate(result['events_per_s'])} events/s")

        if "naive" in self.only:
            say("naive: tutorial-style consumer ...")
            db = await self.stack.fresh_database("p_naive")
            limit = max(200, round(20_000 * self.args.scale))
            results["naive"] = await self.baseline(
                "naive",
                {
                    "bootstrap_servers": self.stack.bootstrap_servers,
                    "database_url": db,
                    "topic": topics[0],
                    "group_id": f"bench-{self.run_id}-naive",
                    "limit": min(limit, total),
                    "seconds": 20.0,
                },
            )
            await self.stack.drop_database(db)
            say(f"  naive: {_fmt_rate(results['naive']['events_per_s'])} events/s")

        if "peer" in self.only:
            say("peer: consumer group, getmany, msgspec, executemany per batch ...")
            db = await self.stack.fresh_database("p_peer")
            result = await self.baseline(
                "peer",
                {
                    "bootstrap_servers": self.stack.bootstrap_servers,
                    "database_url": db,
                    "topic": topics[0],
                    "group_id": f"bench-{self.run_id}-peer",
                    "events": total,
                    "timeout_ms": PEER_TIMEOUT_MS,
                    "max_records": PEER_MAX_RECORDS,
                    "timeout": 120 + total / 500,
                },
                cpu="peer",
            )
            spans = await self.span(db, "", [], rows=True)
            main = spans.get("rows")
            self.check_span("peer", main)
            conn = await asyncpg.connect(db)
            try:
                counts = await measure.table_counts(conn, ["proctoring_events"])
            finally:
                await conn.close()
            if counts["proctoring_events"] != total:
                self.notes.append(
                    f"peer: {counts['proctoring_events']} rows stored for {total} records"
                )
            if main is None:  # no commit timestamps: its own clock, first fetch to last commit
                seconds = result["seconds_own_clock"]
                result["method"] = "the peer's own clock, first batch included"
                result["events_per_s"] = result["events"] / seconds if seconds else None
            else:
                result["method"] = main.method
                result["events_per_s"] = main.rate
            result["spans"] = {k: v.as_dict() for k, v in spans.items()}
            result["rows"] = counts
            results["peer"] = result
            await self.stack.drop_database(db)
            say(f"  peer: {_fmt_rate(result['events_per_s'])} events/s")

        if "fetch" in self.only:
            # Beside the wide row: whether the broker or the worker pays for the partitions.
            runs = [("fetch", topics[0], PARTITIONS)]
            if wide is not None:
                runs.append(("fetch-96p", wide[0][0], WIDE_PARTITIONS))
            for name, topic, partitions in runs:
                say(f"{name}: aiokafka fetch + msgspec decode, no database ...")
                results[name] = await self.baseline(
                    "fetch",
                    {
                        "bootstrap_servers": self.stack.bootstrap_servers,
                        "topic": topic,
                        "partitions": partitions,
                        "events": total,
                        "max_records": 5000,
                        "timeout": 120 + total / 1000,
                    },
                )
                if results[name]["events"] != total:
                    self.notes.append(f"{name}: read {results[name]['events']} of {total} records")
                say(f"  {name}: {_fmt_rate(results[name]['events_per_s'])} events/s")

    async def tracing(self, spec: data.ProctoringSpec) -> None:
        """The proctoring workload, every record with a W3C traceparent header, stored by the
        worker with tracing off (OTEL_TRACES_EXPORTER=none: the API's no-op provider) and on
        (the SDK exporting OTLP/HTTP to a local sink that answers 200), alternated."""
        say(f"tracing: generating {spec.events} events with traceparent headers ...")
        records = await asyncio.to_thread(data.proctoring_workload, spec)
        rng = random.Random(spec.seed)
        topics = self.create_topics("tr")
        delivered = await self.preload(
            [(topics[0], r.key, r.value, [("traceparent", _traceparent(rng))]) for r in records]
        )
        del records
        total = delivered.count
        runs: list[dict[str, Any]] = self.results.setdefault("tracing", {}).setdefault("runs", [])
        with otlp_sink() as sink:
            for n in range(TRACING_PAIRS):
                for mode in ("off", "on"):
                    env = {"OTEL_TRACES_EXPORTER": "none"}
                    if mode == "on":
                        env = {
                            "OTEL_TRACES_EXPORTER": "otlp",
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink.endpoint,
                            "OTEL_SERVICE_NAME": "event-worker-bench",
                        }
                    label = f"tr-{mode}-{n}"
                    db = await self.stack.fresh_database(label.replace("-", "_"))
                    before = sink.snapshot()
                    _, samples, rss, cpu = await self.run_worker(
                        label,
                        topics,
                        db,
                        lambda: delivered.expected_offsets(topics),
                        timeout=120 + total / 500,
                        extra_env=env,
                    )
                    spans = await self.span(db, f"bench-{self.run_id}-{label}", samples, rows=True)
                    main = spans.get("rows") or spans.get("offsets") or spans.get("poll")
                    self.check_span(label, main)
                    requests, nbytes = (a - b for a, b in zip(sink.snapshot(), before, strict=True))
                    runs.append(
                        {
                            "mode": mode,
                            "events_per_s": main.rate if main else None,
                            "method": main.method if main else None,
                            "peak_rss_mb": rss,
                            "cpu": cpu,
                            "otlp_requests": requests,
                            "otlp_bytes": nbytes,
                        }
                    )
                    await self.stack.drop_database(db)
                    say(
                        f"  tracing {mode}: {_fmt_rate(runs[-1]['events_per_s'])} events/s, "
                        f"{requests} OTLP requests ({nbytes} bytes) received"
                    )

    async def copy(self, spec: data.ProctoringSpec, row: str, k: int = 0) -> None:
        if row == "copy":
            say("copy: COPY of the decoded rows into an empty proctoring_events ...")
        else:
            say("bare-copy: COPY of the rows' 5 columns into a table with only its key ...")
        db = await self.stack.fresh_database(
            f"p_{row.replace('-', '_')}_{k}", migrate=row == "copy"
        )
        result = await self.baseline(
            row.replace("-", "_"),
            {
                "database_url": db,
                "spec": {
                    "events": spec.events,
                    "candidates": spec.candidates,
                    "exams": spec.exams,
                    "seed": spec.seed,
                },
                "partitions": PARTITIONS,
                "topic": self.topics("p")[0],
            },
        )
        self.results.setdefault("proctoring", {})[labelled(row, k)] = result
        await self.stack.drop_database(db)
        say(f"  {labelled(row, k)}: {_fmt_rate(result['events_per_s'])} events/s")

    async def mixed(self) -> None:
        spec = data.mixed_spec(self.args.scale)
        say(f"mixed: generating {spec.events} events ...")
        records = await asyncio.to_thread(data.mixed_workload, spec)
        topics = self.create_topics("m")
        names = {"proctoring": topics[0], "interview": topics[1]}
        kinds: dict[str, int] = {}
        report_bytes: list[int] = []
        for r in records:
            kind = "proctoring" if r.topic == "proctoring" else _event_name(r.value)
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind == "interview_report.created":
                report_bytes.append(len(r.value))
        self.sizes["mixed"] = {
            "events": len(records),
            "partitions_per_topic": PARTITIONS,
            "by_type": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "report_bytes_mean": round(sum(report_bytes) / len(report_bytes))
            if report_bytes
            else None,
            "mean_record_bytes": round(sum(len(r.value) for r in records) / len(records), 1),
        }
        delivered = await self.preload([(names[r.topic], r.key, r.value) for r in records])
        del records
        self.results["mixed"] = {}
        for k in range(self.args.rounds):
            for i, system in self.round_order(k):
                label = labelled(system.name, k)
                say(f"mixed: {label} ...")
                result = await self.mixed_worker(f"m{i}r{k}", topics, delivered, kinds, system)
                self.results["mixed"][label] = result
                say(f"  {label}: {_fmt_rate(result['events_per_s'])} events/s")

    async def mixed_worker(
        self,
        label: str,
        topics: tuple[str, str, str],
        delivered: produce.Delivered,
        kinds: dict[str, int],
        system: System,
    ) -> dict[str, Any]:
        db = await self.worker_database(f"{label}_worker", system)
        group = f"bench-{self.run_id}-{label}"
        wal0 = await measure.wal_position(self.stack.admin_url)
        _, samples, rss, cpu = await self.run_worker(
            label,
            topics,
            db,
            lambda: delivered.expected_offsets(topics),
            timeout=120 + delivered.count / 200,
            system=system,
        )
        wal = await measure.wal_position(self.stack.admin_url) - wal0
        spans = await self.span(db, group, samples, rows=False)
        main = spans.get("offsets") or spans.get("poll")
        self.check_span(f"mixed {system.name}", main)
        conn = await asyncpg.connect(db)
        try:
            counts = await measure.table_counts(
                conn,
                [
                    "proctoring_events",
                    "applicants",
                    "interviews",
                    "interview_reports",
                    "proctoring_violations",
                    "candidates",
                ],
            )
            sizes = await measure.table_bytes(conn, list(MIXED_TABLES))
        finally:
            await conn.close()
        if counts["proctoring_events"] != kinds.get("proctoring", 0):
            self.notes.append(
                f"mixed {system.name}: {counts['proctoring_events']} proctoring rows for "
                f"{kinds.get('proctoring', 0)} records"
            )
        await self.stack.drop_database(db)
        return worker_row(system, main, spans, rss, counts, sizes, wal / delivered.count, cpu)

    async def latency(self, row: str) -> None:
        """The same paced stream, each side on fresh topics, one after the other, `rounds`
        times: first a bare consumer (produce -> fetch), then each worker build (produce ->
        row committed)."""
        rate, base_seconds, rounds = LATENCY_ROWS[row]
        seconds = max(LATENCY_WINDOW_S, base_seconds * self.args.scale)
        rng = random.Random(7)
        # The proctoring workload's population (not scaled): 1 000 candidates in 50 exams.
        exams = [data.uuid4(rng) for _ in range(50)]
        sessions = [(exams[i % len(exams)], data.uuid4(rng)) for i in range(1000)]
        out: dict[str, Any] = {"rate": rate, "seconds": seconds, "rounds": []}
        self.results[row] = out
        tag = f"l{rate:.0f}"
        for k in range(rounds):
            say(f"{row} round {k + 1}/{rounds}: {rate:.0f} events/s for {seconds:.0f} s, bare ...")
            bare = await self.latency_bare(rate, seconds, sessions, f"{tag}-r{k}-bare")
            say(
                f"  bare: offered {bare['offered_events_per_s']:.0f} events/s; "
                f"p50 {bare.get('p50_ms', 'n/a')} ms, p99 {bare.get('p99_ms', 'n/a')} ms"
            )
            entry: dict[str, Any] = {"bare": bare, "added": {}}
            for i, system in self.round_order(k):
                say(f"{row} round {k + 1}/{rounds}: {system.name} ...")
                worker = await self.latency_worker(
                    rate, seconds, sessions, f"{tag}-r{k}-w{i}", system
                )
                say(
                    f"  {system.name}: offered {worker['offered_events_per_s']:.0f} events/s; "
                    f"p50 {worker.get('p50_ms', 'n/a')} ms, p99 {worker.get('p99_ms', 'n/a')} ms"
                )
                entry[system.name] = worker
                if "p99_ms" in bare and "p99_ms" in worker:
                    entry["added"][system.name] = added_latency(bare, worker)
            out["rounds"].append(entry)
            windows = [w for w in bare.get("windows", []) if w.get("rows")]
            if len(windows) > 1 and windows[-1]["p99_ms"] > 2 * windows[0]["p99_ms"] + 50:
                self.notes.append(
                    f"{row} round {k + 1}: the bare consumer's p99 grew from "
                    f"{windows[0]['p99_ms']:.0f} ms (first window) to {windows[-1]['p99_ms']:.0f} "
                    "ms (last): the broker or the machine, not the worker, fell behind; the "
                    "latency figures are unreliable"
                )
        # The first round's bare consumer and this tree's worker, where they always were.
        first = out["rounds"][0]
        out["bare"], out["worker"] = first["bare"], first[self.this.name]
        if self.this.name in first["added"]:
            out["added"] = first["added"][self.this.name]

    def _warm(self, rng: random.Random) -> Callable[[int], bytes]:
        def warm(p: int) -> bytes:
            now = dt.datetime.now(dt.UTC)
            return data.proctoring_event(rng, WARMUP_EXAM, f"partition-{p}", "STARTED", now, p)

        return warm

    async def _offer(
        self,
        topic: str,
        rate: float,
        seconds: float,
        sessions: list[tuple[str, str]],
        delivered: Any,
        cpu: CpuMeter,
        state: dict[str, Any],
    ) -> None:
        """The paced stream, and meanwhile the cores each process used per window."""
        sampler = asyncio.create_task(cpu_windows(cpu.groups, seconds, LATENCY_WINDOW_S))
        try:
            state["paced"] = await asyncio.to_thread(
                produce.paced_proctoring,
                self.stack.kafka_config(),
                topic,
                rate,
                seconds,
                sessions,
                0.005,
                delivered,
            )
            state["cpu_windows"] = await sampler
        finally:
            sampler.cancel()

    @staticmethod
    def _add_window_cpu(result: dict[str, Any], state: dict[str, Any]) -> None:
        for window, cores in zip(
            result.get("windows", []), state.get("cpu_windows", []), strict=False
        ):
            window["cores"] = cores

    @staticmethod
    def _paced_result(
        paced: produce.PacedResult,
        rate: float,
        seconds: float,
        rss: float | None,
        cpu: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            "offered_events_per_s": round(paced.offered_rate, 1),
            "target_events_per_s": rate,
            "seconds": seconds,
            "sent": paced.sent,
            "acknowledged": paced.delivered.count - PARTITIONS,  # minus the warm-up
            "pacer_max_behind_ms": round(paced.max_lag_s * 1000, 1),
            "peak_rss_mb": rss,
            "cpu": cpu,
        }

    async def latency_bare(
        self, rate: float, seconds: float, sessions: list[tuple[str, str]], label: str
    ) -> dict[str, Any]:
        topics = self.create_topics(label)
        config = self.stack.kafka_config()
        delivered = produce.Delivered()
        warm = self._warm(random.Random(8))
        state: dict[str, Any] = {}
        samples_path = self.stack.workdir / f"{label}-latency.json"

        async def on_line(line: str, cpu: CpuMeter) -> None:
            if line == "assigned":  # it fetches every partition: warm each one up
                await asyncio.to_thread(
                    produce.send_to_each_partition, config, topics[0], PARTITIONS, warm, delivered
                )
            elif line == "ready":
                say("  bare consumer warmed up; offering load ...")
                cpu.mark(0)
                await self._offer(topics[0], rate, seconds, sessions, delivered, cpu, state)

        result = await self.baseline(
            "bare_consumer",
            {
                "bootstrap_servers": self.stack.bootstrap_servers,
                "topic": topics[0],
                "partitions": PARTITIONS,
                "events": int(rate * seconds),
                "max_records": 20_000,
                "warmup_exam": WARMUP_EXAM,
                "samples_path": str(samples_path),
                "timeout": 120 + seconds,
            },
            cpu="bare",
            on_line=on_line,
        )
        if "paced" not in state:
            raise RuntimeError("the bare consumer never reported the warm-up records")
        paced: produce.PacedResult = state["paced"]
        out = self._paced_result(paced, rate, seconds, result["peak_rss_mb"], result["cpu"])
        out.update(
            method="getmany return time (time.time()) - createdAt, per record",
            received=result["events"],
            fetch_max_wait_ms=result["fetch_max_wait_ms"],
        )
        sent, latency = msgspec.json.decode(samples_path.read_bytes())
        samples_path.unlink()
        summary = measure.latency_summary(
            sent, latency, paced.first_send, seconds, LATENCY_WINDOW_S
        )
        if summary is not None:
            out.update(summary)
            self._add_window_cpu(out, state)
        if result["events"] != paced.sent:
            self.notes.append(f"{label}: received {result['events']} of {paced.sent} sent")
        return out

    async def latency_worker(
        self,
        rate: float,
        seconds: float,
        sessions: list[tuple[str, str]],
        label: str,
        system: System,
    ) -> dict[str, Any]:
        topics = self.create_topics(label)
        db = await self.worker_database(label.replace("-", "_"), system)
        group = f"bench-{self.run_id}-{label}"
        config = self.stack.kafka_config()
        warm = self._warm(random.Random(8))
        # One tally for the warm-up and the stream: SUM(next_offset) counts both.
        delivered = produce.Delivered()
        state: dict[str, Any] = {}

        async def during(worker: WorkerProcess, cpu: CpuMeter) -> None:
            # Warm-up: one record per partition; once all are committed the worker owns and
            # has positioned every partition, so the measured stream meets a running consumer.
            await asyncio.to_thread(
                produce.send_to_each_partition, config, topics[0], PARTITIONS, warm, delivered
            )
            await wait_committed(worker, db, group, delivered.expected_offsets(topics), 120)
            say("  worker warmed up; offering load ...")
            cpu.mark(delivered.expected_offsets(topics))
            await self._offer(topics[0], rate, seconds, sessions, delivered, cpu, state)

        def expected() -> int:
            return delivered.expected_offsets(topics)

        _, _samples, rss, cpu = await self.run_worker(
            label, topics, db, expected, timeout=120, during=during, system=system
        )
        paced: produce.PacedResult = state["paced"]
        result = self._paced_result(paced, rate, seconds, rss, cpu)
        result["system"] = system.name
        if self.commit_ts:
            conn = await asyncpg.connect(db)
            try:
                sent, latency = await measure.latency_samples(conn, WARMUP_EXAM)
            finally:
                await conn.close()
            result["method"] = "pg_xact_commit_timestamp(xmin) - created_at, per row"
            summary = measure.latency_summary(
                sent, latency, paced.first_send, seconds, LATENCY_WINDOW_S
            )
            if summary is not None:
                result.update(summary)
                self._add_window_cpu(result, state)
        else:
            result["latency"] = "n/a: " + self.commit_ts_reason
        await self.stack.drop_database(db)
        return result

    def summarise_profile(self, path: Path) -> dict[str, Any]:
        if not path.exists():
            return {"file": str(path), "error": "profiler wrote no output"}
        if self.args.profile == "py-spy":
            summary = profile.summarise_collapsed(path)
            text_path = path.with_suffix(".summary.txt")
            text_path.write_text(profile.render(summary))
            return {"file": str(path), "summary_file": str(text_path), **summary}
        return {"file": str(path)}


# -- output ---------------------------------------------------------------------------------


def _traceparent(rng: random.Random) -> bytes:
    return f"00-{rng.getrandbits(128) or 1:032x}-{rng.getrandbits(64) or 1:016x}-01".encode()


class _Sink:
    """Counts the OTLP export requests it answered, and their bytes."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.requests = 0
        self.bytes = 0
        self.lock = threading.Lock()

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.requests, self.bytes


@contextlib.contextmanager
def otlp_sink() -> Iterator[_Sink]:
    """An OTLP/HTTP endpoint on localhost answering every export with 200 (an empty
    ExportTraceServiceResponse), so the worker pays the whole export but nothing waits."""
    import http.server

    sink: _Sink

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with sink.lock:
                sink.requests += 1
                sink.bytes += len(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink = _Sink(f"http://127.0.0.1:{server.server_address[1]}/v1/traces")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


def _event_name(value: bytes) -> str:
    head = value[:64]
    start = head.find(b'"event":"')
    if start < 0:
        return "?"
    start += len(b'"event":"')
    return head[start : head.find(b'"', start)].decode()


def _fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "" if x is None else format(x, spec)


def added_latency(bare: dict[str, Any], worker: dict[str, Any]) -> dict[str, Any]:
    """worker - bare, overall and per window (the windows are aligned by index: both cover
    the same seconds of their own stream)."""
    out: dict[str, Any] = {
        k: round(worker[k] - bare[k], 2) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
    }
    windows = []
    for b, w in zip(bare.get("windows", []), worker.get("windows", []), strict=False):
        entry: dict[str, Any] = {"from_s": w["from_s"], "to_s": w["to_s"]}
        for k in ("p50_ms", "p99_ms"):
            entry[f"bare_{k}"] = b.get(k)
            entry[f"worker_{k}"] = w.get(k)
            entry[f"added_{k}"] = (
                round(w[k] - b[k], 2) if b.get(k) is not None and w.get(k) is not None else None
            )
        entry["bare_broker_cores"] = (b.get("cores") or {}).get("broker")
        entry["worker_broker_cores"] = (w.get("cores") or {}).get("broker")
        entry["worker_cores"] = (w.get("cores") or {}).get("worker")
        windows.append(entry)
    out["windows"] = windows
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    p = results.get("proctoring", {})
    worker = (p.get("worker") or {}).get("events_per_s")
    out: dict[str, float | None] = {}
    for name in ("bare-copy", "peer", "naive", "copy", "fetch"):
        base = (p.get(name) or {}).get("events_per_s")
        out[f"worker/{name}"] = round(worker / base, 3) if worker and base else None
    wide = (p.get("worker-96p") or {}).get("events_per_s")
    out["worker-96p/worker"] = round(wide / worker, 3) if worker and wide else None
    fetch, fetch_wide = ((p.get(n) or {}).get("events_per_s") for n in ("fetch", "fetch-96p"))
    out["fetch-96p/fetch"] = round(fetch_wide / fetch, 3) if fetch and fetch_wide else None
    return out


def stage_costs(row: dict[str, Any]) -> dict[str, float] | None:
    """The worker's CPU microseconds per event by stage: the profile's share of each stage
    (bench/profile.py) times the worker's CPU per event over the same run."""
    per_1000 = ((row.get("cpu") or {}).get("worker") or {}).get("cpu_s_per_1000_events")
    share = ((row.get("profile") or {}).get("stages") or {}).get("share")
    if per_1000 is None or not share:
        return None
    us = per_1000 * 1000
    return {stage: round(us * (f or 0.0), 3) for stage, f in share.items()} | {"total": us}


def _cpu_per_1000(row: dict[str, Any], process: str) -> float | None:
    value = ((row.get("cpu") or {}).get(process) or {}).get("cpu_s_per_1000_events")
    return value if isinstance(value, float | int) else None


def _round_of(label: str) -> int:
    """1-based round of a row label (`labelled`)."""
    name, _, k = label.rpartition(" #")
    return int(k) if name and k.isdigit() else 1


def _base_name(label: str) -> str:
    name, _, k = label.rpartition(" #")
    return name if name and k.isdigit() else label


def comparison(results: dict[str, Any], systems: Sequence[str]) -> dict[str, Any]:
    """Per build, each round's figures and their medians: the proctoring rate over the same
    round's bare-copy, CPU per event, peak RSS; the mixed rate; the added latency per round."""
    out: dict[str, Any] = {}
    p = results.get("proctoring", {})
    for name in systems:
        entry: dict[str, Any] = {"proctoring": [], "mixed": [], "latency-1000": []}
        for label, row in p.items():
            if _base_name(label) != name:
                continue
            k = _round_of(label)
            bare = (p.get(labelled("bare-copy", k - 1)) or {}).get("events_per_s")
            rate = row.get("events_per_s")
            entry["proctoring"].append(
                {
                    "round": k,
                    "events_per_s": rate,
                    "bare_copy_events_per_s": bare,
                    "over_bare_copy": round(rate / bare, 3) if rate and bare else None,
                    "worker_cpu_s_per_1000": _cpu_per_1000(row, "worker"),
                    "postgres_cpu_s_per_1000": _cpu_per_1000(row, "postgres"),
                    "peak_rss_mb": row.get("peak_rss_mb"),
                    "stages_us_per_event": row.get("stages_us_per_event"),
                }
            )
        for label, row in (results.get("mixed") or {}).items():
            if _base_name(label) == name:
                entry["mixed"].append(
                    {
                        "round": _round_of(label),
                        "events_per_s": row.get("events_per_s"),
                        "worker_cpu_s_per_1000": _cpu_per_1000(row, "worker"),
                        "postgres_cpu_s_per_1000": _cpu_per_1000(row, "postgres"),
                        "peak_rss_mb": row.get("peak_rss_mb"),
                    }
                )
        for k, rnd in enumerate((results.get("latency-1000") or {}).get("rounds", []), 1):
            added = rnd["added"].get(name)
            if added is not None:
                entry["latency-1000"].append(
                    {
                        "round": k,
                        "added_p50_ms": added["p50_ms"],
                        "added_p99_ms": added["p99_ms"],
                        "bare_p50_ms": rnd["bare"].get("p50_ms"),
                        "bare_p99_ms": rnd["bare"].get("p99_ms"),
                        "worker_p50_ms": rnd[name].get("p50_ms"),
                        "worker_p99_ms": rnd[name].get("p99_ms"),
                        "peak_rss_mb": rnd[name].get("peak_rss_mb"),
                    }
                )
        medians: dict[str, Any] = {}
        for key, rows, field_name in (
            ("over_bare_copy", entry["proctoring"], "over_bare_copy"),
            ("proctoring_events_per_s", entry["proctoring"], "events_per_s"),
            ("proctoring_worker_cpu_s_per_1000", entry["proctoring"], "worker_cpu_s_per_1000"),
            ("mixed_events_per_s", entry["mixed"], "events_per_s"),
            ("mixed_worker_cpu_s_per_1000", entry["mixed"], "worker_cpu_s_per_1000"),
        ):
            values = [r[field_name] for r in rows if r.get(field_name) is not None]
            medians[key] = statistics.median(values) if values else None
        rss = [r["peak_rss_mb"] for rows in entry.values() for r in rows if r.get("peak_rss_mb")]
        medians["peak_rss_mb_max"] = max(rss) if rss else None
        worst = entry["latency-1000"]
        medians["latency_1000_added_p50_ms_worst"] = (
            max(r["added_p50_ms"] for r in worst) if worst else None
        )
        medians["latency_1000_added_p99_ms_worst"] = (
            max(r["added_p99_ms"] for r in worst) if worst else None
        )
        entry["medians"] = medians
        out[name] = entry
    return out


def check_targets(
    results: dict[str, dict[str, Any]],
    r: dict[str, float | None],
    compare: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    # This tree's build ("worker") over the rounds.
    medians = ((compare or {}).get("worker") or {}).get("medians") or {}

    def get(*path: str) -> Any:
        node: Any = results
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    rss = [
        v
        for v in (
            get("proctoring", "worker", "peak_rss_mb"),
            get("mixed", "worker", "peak_rss_mb"),
            get("latency", "worker", "peak_rss_mb"),
            medians.get("peak_rss_mb_max"),
        )
        if v is not None
    ]
    values = {
        "proctoring_events_per_s": get("proctoring", "worker", "events_per_s"),
        "worker_over_bare_copy": r.get("worker/bare-copy"),
        "worker_over_peer": r.get("worker/peer"),
        "worker_over_naive": r.get("worker/naive"),
        "latency_p99_added_ms": get("latency", "added", "p99_ms"),
        "latency_p50_added_ms": get("latency", "added", "p50_ms"),
        "mixed_events_per_s": get("mixed", "worker", "events_per_s"),
        "wide_over_narrow": r.get("worker-96p/worker"),
        "peak_rss_mb": max(rss) if rss else None,
        "worker_over_bare_copy_median": medians.get("over_bare_copy"),
        "latency_1000_p50_added_ms": medians.get("latency_1000_added_p50_ms_worst"),
        "latency_1000_p99_added_ms": medians.get("latency_1000_added_p99_ms_worst"),
    }
    out = {}
    for name, (op, target, label) in TARGETS.items():
        value = values[name]
        ok = None if value is None else (value >= target if op == ">=" else value <= target)
        out[name] = {"label": label, "value": value, "target": f"{op} {target:g}", "met": ok}
    return out


def _fmt_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"


def _signed(x: Any) -> str:
    return "n/a" if x is None else f"{x:+.1f}"


def render(doc: dict[str, Any]) -> str:
    res = doc["results"]
    lines = [
        f"{'workload':<13} {'system':<18} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'peak RSS MB':>12}"
    ]

    def row(
        workload: str,
        system: str,
        rate: Any,
        p50: Any = None,
        p99: Any = None,
        mx: Any = None,
        rss: Any = None,
    ) -> None:
        rate_s = "" if rate is None else f"{rate:,.0f}"
        lines.append(
            f"{workload:<13} {system:<18} {rate_s:>10} {_fmt(p50):>8} {_fmt(p99):>8} "
            f"{_fmt(mx):>8} {_fmt(rss):>12}"
        )

    p = res.get("proctoring", {})
    for system, r in p.items():  # in the order they ran: rounds alternate the builds
        label = system + ("*" if r.get("profiled") else "")
        row("proctoring", label, r.get("events_per_s"), rss=r.get("peak_rss_mb"))
    for r in (res.get("tracing") or {}).get("runs", []):
        row("tracing", r["mode"], r.get("events_per_s"), rss=r.get("peak_rss_mb"))
    for system, r in (res.get("mixed") or {}).items():
        row("mixed", system, r.get("events_per_s"), rss=r.get("peak_rss_mb"))
    latency_rows = [
        (f"latency@1000/{k}", system, r)
        for k, rnd in enumerate((res.get("latency-1000") or {}).get("rounds", []), 1)
        for system, r in rnd.items()
        if system != "added"
    ]
    lat = res.get("latency") or {}
    latency_rows += [
        (f"latency@{LATENCY_RATE:.0f}", system, lat[system])
        for system in ("bare", "worker")
        if system in lat
    ]
    for workload, system, r in latency_rows:
        row(
            workload,
            system,
            None,
            r.get("p50_ms"),
            r.get("p99_ms"),
            r.get("max_ms"),
            r.get("peak_rss_mb"),
        )
    if "ledger" in res:
        lines.append(ledger.render(res["ledger"]))
    rt = doc["ratios"]

    def ratio(name: str, spec: str, suffix: str = "") -> str:
        v = rt.get(name)
        return "n/a" if v is None else f"{v:{spec}}{suffix}"

    lines.append(
        f"ratios: worker/bare-copy = {ratio('worker/bare-copy', '.2f')}, "
        f"worker/peer = {ratio('worker/peer', '.2f')}, "
        f"worker/naive = {ratio('worker/naive', '.0f', 'x')}, "
        f"worker/copy = {ratio('worker/copy', '.2f')}, "
        f"worker/fetch = {ratio('worker/fetch', '.2f')}, "
        f"worker-96p/worker = {ratio('worker-96p/worker', '.2f')}, "
        f"fetch-96p/fetch = {ratio('fetch-96p/fetch', '.2f')}"
    )
    for system in ("bare", "worker"):
        r = lat.get(system)
        if r is None:
            continue
        what = "received" if system == "bare" else "rows"
        extra = (
            f"{r['rows']} {what}, p90 {r['p90_ms']:.1f} ms"
            if "p99_ms" in r
            else r.get("latency", "no samples")
        )
        lines.append(
            f"latency {system}: offered {r['offered_events_per_s']:,.0f} events/s for "
            f"{r['seconds']:.0f} s ({r['acknowledged']} acknowledged; {extra})"
        )
    added = lat.get("added")
    if added:
        lines.append(
            f"latency worker - bare: p50 {_signed(added['p50_ms'])} ms (target <= +20), "
            f"p99 {_signed(added['p99_ms'])} ms (target <= +50), "
            f"max {_signed(added['max_ms'])} ms"
        )
        lines.append(
            f"latency per {LATENCY_WINDOW_S:.0f} s window, ms:  "
            f"{'bare p50':>8} {'p99':>7}   {'worker p50':>10} {'p99':>7}   "
            f"{'added p50':>9} {'p99':>7}   cores: broker (bare, worker), worker"
        )
        for w in added["windows"]:
            span = f"{w['from_s']:.0f}-{w['to_s']:.0f} s"
            lines.append(
                f"  {span:<27} {_fmt(w['bare_p50_ms']):>8} {_fmt(w['bare_p99_ms']):>7}   "
                f"{_fmt(w['worker_p50_ms']):>10} {_fmt(w['worker_p99_ms']):>7}   "
                f"{_signed(w['added_p50_ms']):>9} {_signed(w['added_p99_ms']):>7}   "
                f"{_fmt(w['bare_broker_cores'], '.2f'):>6} "
                f"{_fmt(w['worker_broker_cores'], '.2f'):>5} {_fmt(w['worker_cores'], '.2f'):>5}"
            )
    cpu_rows = []
    for r in (res.get("tracing") or {}).get("runs", []):
        cpu = (r.get("cpu") or {}).get("worker") or {}
        per = cpu.get("cpu_s_per_1000_events")
        if per is not None:
            cpu_rows.append(
                f"  tracing     {r['mode']:<7} worker {per:.4f} ({cpu['utilisation']:.2f}), "
                f"{r['otlp_requests']} OTLP requests"
            )
    cpu_entries = [
        ("proctoring", system, entry)
        for system, entry in (res.get("proctoring") or {}).items()
        if system.startswith(("worker", "peer"))
    ]
    cpu_entries += [("mixed", system, entry) for system, entry in (res.get("mixed") or {}).items()]
    for system in ("bare", "worker"):
        if system in (res.get("latency") or {}):
            cpu_entries.append(("latency", system, res["latency"][system]))
    for k, rnd in enumerate((res.get("latency-1000") or {}).get("rounds", []), 1):
        cpu_entries += [(f"latency@1000/{k}", s, e) for s, e in rnd.items() if s != "added"]
    for workload, system, entry in cpu_entries:
        cpu = entry.get("cpu") or {}
        if not cpu:
            cpu_rows.append(f"  {workload:<14} {system:<18} n/a (first and last commit in a poll)")
            continue
        parts = []
        for name, v in cpu.items():
            if "utilisation" not in v:
                continue
            per = v.get("cpu_s_per_1000_events")
            shown = "n/a" if per is None else f"{per:.4f}"
            parts.append(f"{name} {shown} ({v['utilisation']:.2f})")
        if parts:
            cpu_rows.append(f"  {workload:<14} {system:<18} " + ", ".join(parts))
    if cpu_rows:
        lines.append("cpu seconds per 1 000 events (cores busy), between first and last commit:")
        lines.extend(cpu_rows)
    lines.extend(render_compare(doc))
    for workload, system in (("proctoring", "worker"), ("mixed", "worker")):
        sizes = ((res.get(workload) or {}).get(system) or {}).get("table_bytes")
        if sizes:
            shown = ", ".join(
                f"{t} {v['bytes_per_row']}" for t, v in sizes.items() if v["bytes_per_row"]
            )
            wal = res[workload][system].get("wal_bytes_per_event")
            lines.append(f"bytes per row (heap+indexes+TOAST), {workload}: {shown}")
            lines.append(f"WAL bytes per event, {workload}: {wal}")
    lines.append("targets:")
    for t in doc["targets"].values():
        flag = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  {t['label']:<32} {t['target']:>10} {_fmt_value(t['value']):>10}  {flag}")
    if any(r.get("profiled") for r in p.values()):
        lines.append("* profiled run: the profiler's overhead lowers the figure")
    for note in doc["notes"]:
        lines.append(f"note: {note}")
    m = doc["machine"]
    lines.append(
        f"machine: {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
        f"PostgreSQL {doc['postgres'].get('server_version')}; load avg "
        f"{doc['load_average']['start']} -> {doc['load_average']['end']}; "
        f"wall {doc['wall_s']:.0f} s"
    )
    return "\n".join(lines)


def render_compare(doc: dict[str, Any]) -> list[str]:
    """The builds side by side, round by round (with one build and one round: only the CPU
    per event by stage, when profiled)."""
    compare: dict[str, Any] = doc.get("compare") or {}
    lines: list[str] = []
    several = len(compare) > 1 or any(
        len(e["proctoring"]) > 1 or len(e["mixed"]) > 1 for e in compare.values()
    )
    if several:
        lines.append("builds, alternated in this run (bench/systems.py):")
        for system in doc.get("systems", []):
            probe = system.get("probe") or {}
            lines.append(
                f"  {system['name']:<18} {system['rev']:<14} {system['root']}; ran its own "
                f"worker package and its {probe.get('migrations', '?')} migrations (verified); "
                f"records read by {probe.get('aiokafka_record_reader', '?')}"
            )
        lines.append(
            f"  {'round':<6} {'system':<18} {'events/s':>10} {'/bare-copy':>10} "
            f"{'worker cpu s/1000':>18} {'postgres':>9} {'peak RSS MB':>12}"
        )
        rows = sorted(
            ((r["round"], name, r) for name, e in compare.items() for r in e["proctoring"]),
            key=lambda x: (x[0], list(compare).index(x[1])),
        )
        for k, name, r in rows:
            lines.append(
                f"  {k:<6} {name:<18} {_fmt_rate(r['events_per_s']):>10} "
                f"{_fmt(r['over_bare_copy'], '.3f'):>10} "
                f"{_fmt(r['worker_cpu_s_per_1000'], '.4f'):>18} "
                f"{_fmt(r['postgres_cpu_s_per_1000'], '.4f'):>9} {_fmt(r['peak_rss_mb']):>12}"
            )
        for name, e in compare.items():
            for r in e["mixed"]:
                lines.append(
                    f"  mixed {r['round']:<2} {name:<16} {_fmt_rate(r['events_per_s']):>10} "
                    f"{'':>10} {_fmt(r['worker_cpu_s_per_1000'], '.4f'):>18} "
                    f"{_fmt(r['postgres_cpu_s_per_1000'], '.4f'):>9} {_fmt(r['peak_rss_mb']):>12}"
                )
        if any(e["proctoring"] or e["mixed"] for e in compare.values()):
            lines.append("  medians:")
        for name, e in compare.items():
            m = e["medians"]
            if not (e["proctoring"] or e["mixed"]):
                continue
            lines.append(
                f"    {name:<18} proctoring {_fmt_rate(m['proctoring_events_per_s'])}/s, "
                f"/bare-copy {_fmt(m['over_bare_copy'], '.3f')}, worker cpu "
                f"{_fmt(m['proctoring_worker_cpu_s_per_1000'], '.4f')} s/1000; mixed "
                f"{_fmt_rate(m['mixed_events_per_s'])}/s, worker cpu "
                f"{_fmt(m['mixed_worker_cpu_s_per_1000'], '.4f')} s/1000; peak RSS "
                f"{_fmt(m['peak_rss_mb_max'])} MB"
            )
    latency = [(name, e["latency-1000"]) for name, e in compare.items() if e["latency-1000"]]
    if latency:
        lines.append(
            "latency@1000, worker - bare per round, ms (target: p50 <= "
            f"+{LATENCY_1000_TARGETS['p50_ms']:.0f}, p99 <= +{LATENCY_1000_TARGETS['p99_ms']:.0f}"
            " in every round):"
        )
        for name, rounds in latency:
            shown = ", ".join(
                f"round {r['round']} p50 {_signed(r['added_p50_ms'])} "
                f"p99 {_signed(r['added_p99_ms'])}"
                for r in rounds
            )
            lines.append(f"  {name:<18} {shown}")
    staged = [
        (name, r["round"], r["stages_us_per_event"])
        for name, e in compare.items()
        for r in e["proctoring"]
        if r.get("stages_us_per_event")
    ]
    if staged:
        lines.append(
            "worker cpu us per event by stage (py-spy share x the worker's cpu per event), "
            "proctoring; columns: "
            + ", ".join(f"{short} = {s}" for s, short in profile.STAGES.items())
        )
        lines.append(
            f"  {'system':<18} {'round':>5} "
            + " ".join(f"{short:>7}" for _, short in profile.STAGES.items())
            + f" {'total':>7}"
        )
        for name, k, us in sorted(staged, key=lambda x: (x[1], list(compare).index(x[0]))):
            lines.append(
                f"  {name:<18} {k:>5} "
                + " ".join(f"{us.get(s, 0.0):7.2f}" for s, _ in profile.STAGES.items())
                + f" {us['total']:7.2f}"
            )
    return lines


# -- entry point ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies all sizes")
    parser.add_argument(
        "--only",
        default=",".join(ALL),
        help=f"comma-separated subset of {','.join(ALL)}",
    )
    parser.add_argument(
        "--out", default=str(REPO / "bench" / "results"), help="where the JSON goes"
    )
    parser.add_argument(
        "--profile",
        choices=PROFILERS,
        default=None,
        help="profile the worker during the proctoring workload (its figure is then marked)",
    )
    before = parser.add_mutually_exclusive_group()
    before.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="also run this git revision's worker (exported to a temporary directory), "
        "alternately with this tree's, on the same records (bench/systems.py)",
    )
    before.add_argument(
        "--compare",
        metavar="PATH",
        help="also run the worker of the tree at PATH (copied), alternately with this tree's",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the proctoring (with bare-copy and wide) and mixed worker rows this many "
        "times, each build once per round",
    )
    args = parser.parse_args(argv)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(ALL)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (choose from {', '.join(ALL)})")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def build_systems(args: argparse.Namespace) -> list[System]:
    """The builds to run, the other one first in every round, each checked (bench/systems.py)."""
    systems = [this_tree()]
    if args.baseline_rev:
        systems.insert(0, exported(args.baseline_rev))
    elif args.compare:
        systems.insert(0, on_disk(args.compare))
    for system in systems:
        say(f"build {system.name}: {system.rev} in {system.root} ...")
        system.check()
        say(f"  runs {system.probe['worker']} with {system.probe['migrations']} migrations")
    return systems


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from worker.logs import configure_logging

    configure_logging("console", "WARNING")  # the migrations' info lines are noise here
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    run_id = stamp.lower()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM behaves like Ctrl-C: everything started is stopped in order.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load_start = sysinfo.load_average()
    say(f"load average {load_start}")
    try:
        systems = build_systems(args)
    except WrongCode as exc:
        say(f"benchmark refused: {exc}")
        return 1
    stack = Stack(run_id)
    bench = Bench(args, stack, run_id, systems)
    wall0 = time.monotonic()
    try:
        say("starting servers ...")
        stack.start()
        postgres = asyncio.run(stack.server_info())
        say(f"  kafka {stack.bootstrap_servers}; PostgreSQL {postgres['server_version']}")
        asyncio.run(bench.run())
    except KeyboardInterrupt:
        produce.STOP.set()
        say("interrupted; stopping everything ...")
        return 130
    except Exception as exc:
        produce.STOP.set()
        say(f"benchmark failed: {exc}")
        tails = stack.log_tails()
        if tails:
            print(tails, file=sys.stderr)
        return 1
    finally:
        produce.STOP.set()
        stack.close()
        for system in systems:
            system.close()
    wall = time.monotonic() - wall0
    r = ratios(bench.results)
    doc: dict[str, Any] = {
        "started_at": started.isoformat(),
        "wall_s": round(wall, 1),
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.run", *(argv or sys.argv[1:])]
        ),
        "git": sysinfo.git_info(),
        "machine": sysinfo.machine(),
        "load_average": {"start": load_start, "end": sysinfo.load_average()},
        "postgres": postgres,
        "servers": stack.describe(),
        "options": {
            "scale": args.scale,
            "only": args.only,
            "profile": args.profile,
            "rounds": args.rounds,
            "baseline_rev": args.baseline_rev,
            "compare": args.compare,
        },
        "systems": [system.describe() for system in systems],
        "worker_env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith("WORKER_") and k not in bench.worker_env("", "", ("", "", ""))
        },
        "sizes": bench.sizes,
        "results": bench.results,
        "ratios": r,
        "compare": comparison(bench.results, [system.name for system in systems]),
        "targets": {},
        "notes": bench.notes,
    }
    doc["targets"] = check_targets(bench.results, r, doc["compare"])
    if load_start and load_start[0] > 1.0:
        bench.notes.append(
            f"load average {load_start[0]} at the start: other work shares the 2 cores, the "
            "figures are noisy; take the ones you quote on a quiet machine"
        )
    path = out_dir / f"{stamp}-{doc['git']['sha']}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(render(doc))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
