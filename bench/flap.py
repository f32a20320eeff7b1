"""`python -m bench.flap`: the worker's peak memory while its database comes and goes.

Two runs of one worker process (`python -m worker run`) under the same paced proctoring load
(`bench.produce.paced_proctoring`), one after the other in one invocation: a steady database,
then a flapping one: a TCP proxy between the worker and PostgreSQL cuts every connection and
refuses new ones for `--down` seconds every `--period` seconds. Each run ends once the worker
has committed every record produced; its peak RSS (the kernel's VmHWM) is printed beside the
steady run's. Issue 16 asks the flapping run to stay within 50 MB of the steady one: every
back-off pauses all partitions and drops their buffered fetch data, which aiokafka kept in a
reference cycle that only a collection freed (worker/kafka_records.py breaks it since issue
26), and each failure leaves exceptions and tracebacks in cycles (worker/reclaim.py collects
them at the next idle turn).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from bench import produce
from bench.stack import Stack
from bench.workerproc import WorkerProcess, wait_committed


class FlappingProxy:
    """Forwards TCP to PostgreSQL; while down, closes every connection and refuses new ones."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.down = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut()

    def _cut(self) -> None:
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def flap(self, period_s: float, down_s: float, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(period_s - down_s)
            self.down = True
            self.cuts += 1
            self._cut()
            await asyncio.sleep(down_s)
            self.down = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


async def one_run(stack: Stack, args: argparse.Namespace, label: str, flapping: bool) -> dict:
    run = uuid.uuid4().hex[:8]
    topics = (f"flap-{run}-p", f"flap-{run}-i", f"flap-{run}-d")
    stack.create_topics([(topics[0], args.partitions), (topics[1], 1), (topics[2], 1)])
    url = await stack.fresh_database(f"flap_{run}")
    proxy = FlappingProxy(urlsplit(url).port or 5432)
    await proxy.start()
    group = f"flap-{run}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "DATABASE_URL": _via(url, proxy.port),
        "WORKER_GROUP_ID": group,
        "WORKER_PROCTORING_TOPIC": topics[0],
        "WORKER_INTERVIEW_TOPIC": topics[1],
        "WORKER_DLQ_TOPIC": topics[2],
        "WORKER_LOG_LEVEL": "WARNING",
        "WORKER_LOG_FORMAT": "json",
        "WORKER_METRICS_PORT": "0",
        "WORKER_RETRY_MAX_S": "1",
        "WORKER_DB_COMMAND_TIMEOUT_S": "5",
    }
    worker = WorkerProcess(env, stack.workdir / f"worker-{label}-{run}.log")
    worker.start()
    sessions = [(f"exam-{i % 50}", f"cand-{i}") for i in range(500)]
    flapper = None
    try:
        if flapping:
            flapper = asyncio.create_task(
                proxy.flap(args.period, args.down, time.monotonic() + args.seconds)
            )
        result = await asyncio.to_thread(
            produce.paced_proctoring,
            stack.kafka_config(),
            topics[0],
            args.rate,
            args.seconds,
            sessions,
        )
        if flapper is not None:
            await flapper
        await wait_committed(worker, url, group, result.delivered.count, timeout=300)
        rss = worker.peak_rss_mb()
    finally:
        if flapper is not None:
            flapper.cancel()
        await asyncio.to_thread(worker.stop)
        await proxy.close()
    return {
        "run": label,
        "events": result.delivered.count,
        "offered_per_s": round(result.offered_rate),
        "database_cuts": proxy.cuts,
        "peak_rss_mb": None if rss is None else round(rss, 1),
    }


async def main_async(args: argparse.Namespace) -> None:
    stack = Stack(run_id=f"flap{uuid.uuid4().hex[:6]}")
    stack.start()
    try:
        rows = [
            await one_run(stack, args, "steady database", flapping=False),
            await one_run(stack, args, "flapping database", flapping=True),
        ]
    finally:
        stack.close()
    print(f"{'run':<20} {'events':>8} {'offered/s':>10} {'db cuts':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(
            f"{r['run']:<20} {r['events']:>8} {r['offered_per_s']:>10} "
            f"{r['database_cuts']:>8} {r['peak_rss_mb']!s:>12}"
        )
    steady, flapping = (r["peak_rss_mb"] for r in rows)
    if steady is not None and flapping is not None:
        print(f"flapping - steady: {flapping - steady:+.1f} MB (issue 16 asks for at most +50)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flap", description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="load duration per run")
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s offered")
    parser.add_argument("--period", type=float, default=4.0, help="seconds between cuts")
    parser.add_argument("--down", type=float, default=2.0, help="seconds the database is away")
    parser.add_argument("--partitions", type=int, default=12)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
