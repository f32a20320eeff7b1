"""`python -m bench.run` (`make bench`): the worker against its baselines and ceilings, one table.

Rows (see bench/README.md): proctoring worker / naive / copy / fetch, mixed worker, and the
latency at a steady offered load. Results go to stdout as a table and to
`<out>/<UTC timestamp>-<git sha>.json`.
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
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `worker` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bench import data, measure, produce, profile, sysinfo
from bench.stack import Stack
from bench.workerproc import PROFILERS, REPO, CpuMeter, WorkerProcess, wait_committed

ALL = ("proctoring", "naive", "copy", "fetch", "mixed", "latency")
PARTITIONS = 12
LATENCY_RATE = 5_000.0
WARMUP_EXAM = "warmup"
TARGETS = {
    "proctoring_events_per_s": 100_000,
    "worker_over_copy": 0.45,
    "worker_over_naive": 25,
    "mixed_events_per_s": 20_000,
    "latency_p99_ms": 100,
    "peak_rss_mb": 250,
}
_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- one benchmark run ---------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, run_id: str) -> None:
        self.args = args
        self.stack = stack
        self.run_id = run_id
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

    def create_topics(self, label: str) -> tuple[str, str, str]:
        p, i, d = self.topics(label)
        self.stack.create_topics([(p, PARTITIONS), (i, PARTITIONS), (d, 1)])
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
    ) -> tuple[WorkerProcess, list[tuple[float, int]], float | None, dict[str, Any]]:
        """Start the worker, optionally run `during(worker, cpu)` (which produces), wait until
        SUM(next_offset) reaches `expected()`, read its peak RSS, SIGTERM it."""
        group = f"bench-{self.run_id}-{label}"
        log_path = self.stack.workdir / f"worker-{label}.log"
        profile_path = None
        if profiler:
            suffix = "txt"
            profile_path = Path(self.args.out) / f"{self.run_id}-{label}-{profiler}.{suffix}"
        worker = WorkerProcess(
            self.worker_env(database_url, group, topics), log_path, profiler, profile_path
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

    async def baseline(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.baselines",
            kind,
            json.dumps(params),
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"baseline {kind} failed:\n{err.decode(errors='replace')[-3000:]}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
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
        if self.only & {"proctoring", "naive", "fetch"}:
            await self.proctoring(pspec)
        if "copy" in self.only:
            await self.copy(pspec)
        if "mixed" in self.only:
            await self.mixed()
        if "latency" in self.only:
            await self.latency()

    async def proctoring(self, spec: data.ProctoringSpec) -> None:
        say(f"proctoring: generating {spec.events} events ...")
        records = await asyncio.to_thread(data.proctoring_workload, spec)
        topics = self.create_topics("p")
        delivered = await self.preload([(topics[0], r.key, r.value) for r in records])
        mean_bytes = sum(len(r.value) for r in records) / len(records)
        self.sizes["proctoring"]["mean_record_bytes"] = round(mean_bytes, 1)
        del records
        total = delivered.count
        results = self.results.setdefault("proctoring", {})

        if "proctoring" in self.only:
            say("proctoring: worker ...")
            db = await self.stack.fresh_database("p_worker")
            group = f"bench-{self.run_id}-p"
            worker, samples, rss, cpu = await self.run_worker(
                "p",
                topics,
                db,
                lambda: delivered.expected_offsets(topics),
                timeout=120 + total / 500,
                profiler=self.args.profile,
            )
            spans = await self.span(db, group, samples, rows=True)
            main = spans.get("rows") or spans.get("offsets") or spans.get("poll")
            self.check_span("proctoring", main)
            conn = await asyncpg.connect(db)
            try:
                counts = await measure.table_counts(
                    conn, ["proctoring_events", "proctoring_sessions"]
                )
            finally:
                await conn.close()
            if counts["proctoring_events"] != total:
                self.notes.append(
                    f"proctoring: {counts['proctoring_events']} rows stored for {total} records"
                )
            results["worker"] = {
                "events_per_s": main.rate if main else None,
                "method": main.method if main else None,
                "peak_rss_mb": rss,
                "spans": {k: v.as_dict() for k, v in spans.items()},
                "rows": counts,
                "cpu": cpu,
                "profiled": self.args.profile,
            }
            if self.args.profile and worker.profile_path is not None:
                results["worker"]["profile"] = self.summarise_profile(worker.profile_path)
            await self.stack.drop_database(db)
            say(f"  worker: {_fmt_rate(results['worker']['events_per_s'])} events/s")

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

        if "fetch" in self.only:
            say("fetch: aiokafka fetch + msgspec decode, no database ...")
            results["fetch"] = await self.baseline(
                "fetch",
                {
                    "bootstrap_servers": self.stack.bootstrap_servers,
                    "topic": topics[0],
                    "partitions": PARTITIONS,
                    "events": total,
                    "max_records": 5000,
                    "timeout": 120 + total / 1000,
                },
            )
            if results["fetch"]["events"] != total:
                self.notes.append(f"fetch: read {results['fetch']['events']} of {total} records")
            say(f"  fetch: {_fmt_rate(results['fetch']['events_per_s'])} events/s")

    async def copy(self, spec: data.ProctoringSpec) -> None:
        say("copy: COPY of the decoded rows into an empty proctoring_events ...")
        db = await self.stack.fresh_database("p_copy")
        result = await self.baseline(
            "copy",
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
        self.results.setdefault("proctoring", {})["copy"] = result
        await self.stack.drop_database(db)
        say(f"  copy: {_fmt_rate(result['events_per_s'])} events/s")

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
        say("mixed: worker ...")
        db = await self.stack.fresh_database("m_worker")
        group = f"bench-{self.run_id}-m"
        _, samples, rss, cpu = await self.run_worker(
            "m",
            topics,
            db,
            lambda: delivered.expected_offsets(topics),
            timeout=120 + delivered.count / 200,
        )
        spans = await self.span(db, group, samples, rows=False)
        main = spans.get("offsets") or spans.get("poll")
        self.check_span("mixed", main)
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
        finally:
            await conn.close()
        if counts["proctoring_events"] != kinds.get("proctoring", 0):
            self.notes.append(
                f"mixed: {counts['proctoring_events']} proctoring rows for "
                f"{kinds.get('proctoring', 0)} records"
            )
        self.results["mixed"] = {
            "worker": {
                "events_per_s": main.rate if main else None,
                "method": main.method if main else None,
                "peak_rss_mb": rss,
                "spans": {k: v.as_dict() for k, v in spans.items()},
                "rows": counts,
                "cpu": cpu,
            }
        }
        await self.stack.drop_database(db)
        say(f"  worker: {_fmt_rate(self.results['mixed']['worker']['events_per_s'])} events/s")

    async def latency(self) -> None:
        seconds = max(5.0, 30.0 * self.args.scale)
        say(f"latency: {LATENCY_RATE:.0f} events/s offered for {seconds:.0f} s ...")
        topics = self.create_topics("l")
        db = await self.stack.fresh_database("l_worker")
        group = f"bench-{self.run_id}-l"
        rng = random.Random(7)
        # The proctoring workload's population (not scaled): 1 000 candidates in 50 exams.
        exams = [data.uuid4(rng) for _ in range(50)]
        sessions = [(exams[i % len(exams)], data.uuid4(rng)) for i in range(1000)]
        config = self.stack.kafka_config()
        # One tally for the warm-up and the stream: SUM(next_offset) counts both.
        delivered = produce.Delivered()
        state: dict[str, Any] = {}

        def warm(p: int) -> bytes:
            now = dt.datetime.now(dt.UTC)
            return data.proctoring_event(rng, WARMUP_EXAM, f"partition-{p}", "STARTED", now, p)

        async def during(worker: WorkerProcess, cpu: CpuMeter) -> None:
            # Warm-up: one record per partition; once all are committed the worker owns and
            # has positioned every partition, so the measured stream meets a running consumer.
            await asyncio.to_thread(
                produce.send_to_each_partition, config, topics[0], PARTITIONS, warm, delivered
            )
            await wait_committed(worker, db, group, delivered.expected_offsets(topics), 120)
            say("  worker warmed up; offering load ...")
            cpu.mark()
            state["paced"] = await asyncio.to_thread(
                produce.paced_proctoring,
                config,
                topics[0],
                LATENCY_RATE,
                seconds,
                sessions,
                0.005,
                delivered,
            )

        def expected() -> int:
            return delivered.expected_offsets(topics)

        _, _samples, rss, cpu = await self.run_worker(
            "l", topics, db, expected, timeout=120, during=during
        )
        paced: produce.PacedResult = state["paced"]
        result: dict[str, Any] = {
            "offered_events_per_s": round(paced.offered_rate, 1),
            "target_events_per_s": LATENCY_RATE,
            "seconds": seconds,
            "sent": paced.sent,
            "acknowledged": paced.delivered.count - PARTITIONS,  # minus the warm-up
            "pacer_max_behind_ms": round(paced.max_lag_s * 1000, 1),
            "peak_rss_mb": rss,
            "cpu": cpu,
        }
        if self.commit_ts:
            conn = await asyncpg.connect(db)
            try:
                lat = await measure.latency(conn, WARMUP_EXAM)
            finally:
                await conn.close()
            if lat is not None:
                result.update(
                    {
                        "rows": lat.count,
                        "p50_ms": round(lat.p50_ms, 2),
                        "p90_ms": round(lat.p90_ms, 2),
                        "p99_ms": round(lat.p99_ms, 2),
                        "max_ms": round(lat.max_ms, 2),
                        "min_ms": round(lat.min_ms, 2),
                    }
                )
        else:
            result["latency"] = "n/a: " + self.commit_ts_reason
        self.results["latency"] = {"worker": result}
        await self.stack.drop_database(db)
        say(f"  offered {paced.offered_rate:.0f} events/s; p99 {result.get('p99_ms', 'n/a')} ms")

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


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    p = results.get("proctoring", {})
    worker = (p.get("worker") or {}).get("events_per_s")
    out: dict[str, float | None] = {}
    for name in ("copy", "naive", "fetch"):
        base = (p.get(name) or {}).get("events_per_s")
        out[f"worker/{name}"] = round(worker / base, 3) if worker and base else None
    return out


def check_targets(
    results: dict[str, dict[str, Any]], r: dict[str, float | None]
) -> dict[str, dict[str, Any]]:
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
        )
        if v is not None
    ]
    checks = {
        "proctoring_events_per_s": (get("proctoring", "worker", "events_per_s"), ">="),
        "worker_over_copy": (r.get("worker/copy"), ">="),
        "worker_over_naive": (r.get("worker/naive"), ">="),
        "mixed_events_per_s": (get("mixed", "worker", "events_per_s"), ">="),
        "latency_p99_ms": (get("latency", "worker", "p99_ms"), "<="),
        "peak_rss_mb": (max(rss) if rss else None, "<="),
    }
    out = {}
    for name, (value, op) in checks.items():
        target = TARGETS[name]
        ok = None if value is None else (value >= target if op == ">=" else value <= target)
        out[name] = {"value": value, "target": f"{op} {target}", "met": ok}
    return out


def render(doc: dict[str, Any]) -> str:
    res = doc["results"]
    lines = [
        f"{'workload':<13} {'system':<8} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
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
            f"{workload:<13} {system:<8} {rate_s:>10} {_fmt(p50):>8} {_fmt(p99):>8} "
            f"{_fmt(mx):>8} {_fmt(rss):>12}"
        )

    p = res.get("proctoring", {})
    for system in ("worker", "naive", "copy", "fetch"):
        if system in p:
            r = p[system]
            label = system + ("*" if system == "worker" and r.get("profiled") else "")
            row("proctoring", label, r.get("events_per_s"), rss=r.get("peak_rss_mb"))
    if "mixed" in res:
        r = res["mixed"]["worker"]
        row("mixed", "worker", r.get("events_per_s"), rss=r.get("peak_rss_mb"))
    if "latency" in res:
        r = res["latency"]["worker"]
        row(
            f"latency@{LATENCY_RATE:.0f}",
            "worker",
            None,
            r.get("p50_ms"),
            r.get("p99_ms"),
            r.get("max_ms"),
            r.get("peak_rss_mb"),
        )
    rt = doc["ratios"]

    def ratio(name: str, spec: str, suffix: str = "") -> str:
        v = rt.get(name)
        return "n/a" if v is None else f"{v:{spec}}{suffix}"

    lines.append(
        f"ratios: worker/copy = {ratio('worker/copy', '.2f')}, "
        f"worker/naive = {ratio('worker/naive', '.0f', 'x')}, "
        f"worker/fetch = {ratio('worker/fetch', '.2f')}"
    )
    if "latency" in res:
        r = res["latency"]["worker"]
        extra = (
            f"{r['rows']} rows, p90 {r['p90_ms']:.1f} ms" if "p99_ms" in r else r.get("latency", "")
        )
        lines.append(
            f"latency: offered {r['offered_events_per_s']:,.0f} events/s for "
            f"{r['seconds']:.0f} s ({r['acknowledged']} acknowledged; {extra})"
        )
    cpu_parts = []
    for workload in ("proctoring", "mixed", "latency"):
        cpu = ((res.get(workload) or {}).get("worker") or {}).get("cpu") or {}
        shares = [f"{k} {v['utilisation']:.2f}" for k, v in cpu.items() if "utilisation" in v]
        if shares:
            cpu_parts.append(f"{workload}: " + ", ".join(shares))
    if cpu_parts:
        lines.append("cpu, cores busy between first and last commit: " + "; ".join(cpu_parts))
    met = doc["targets"]
    marks = []
    for name, t in met.items():
        flag = {True: "ok", False: "MISSED", None: "n/a"}[t["met"]]
        value = t["value"]
        shown = "n/a" if value is None else (f"{value:,.2f}" if value < 10 else f"{value:,.0f}")
        marks.append(f"{name} {shown} ({t['target']}: {flag})")
    lines.append("targets: " + "; ".join(marks))
    if any(((p.get("worker") or {}).get("profiled"),)):
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
    args = parser.parse_args(argv)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(ALL)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (choose from {', '.join(ALL)})")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return args


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
    stack = Stack(run_id)
    bench = Bench(args, stack, run_id)
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
        "options": {"scale": args.scale, "only": args.only, "profile": args.profile},
        "worker_env": {
            k: v
            for k, v in os.environ.items()
            if k.startswith("WORKER_") and k not in bench.worker_env("", "", ("", "", ""))
        },
        "sizes": bench.sizes,
        "results": bench.results,
        "ratios": r,
        "targets": {},
        "notes": bench.notes,
    }
    doc["targets"] = check_targets(bench.results, r)
    path = out_dir / f"{stamp}-{doc['git']['sha']}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(render(doc))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
