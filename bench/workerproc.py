"""The worker under test: `python -m worker run` in its own process, as in production.

Configured only through the environment, like a deployment. Its peak RSS is the kernel's
high-water mark (`VmHWM`), read just before SIGTERM. Optionally profiled by py-spy (attached,
sampling from outside, low overhead) or pyinstrument (in-process).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
PROFILERS = ("py-spy", "pyinstrument")


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size of a live process, in MiB (Linux), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class WorkerProcess:
    env: Mapping[str, str]
    log_path: Path
    profiler: str | None = None
    profile_path: Path | None = None
    # The tree whose `python -m worker run` this is (bench/systems.py); this one by default.
    root: Path = REPO
    proc: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _log: object | None = field(default=None, repr=False)

    def start(self) -> None:
        cmd = [sys.executable, "-m", "worker", "run"]
        if self.profiler == "pyinstrument":
            assert self.profile_path is not None
            cmd = [sys.executable, "-m", "bench.pyinstrument_worker", str(self.profile_path)]
        env = {**os.environ, **self.env}
        log = self.log_path.open("ab")
        self._log = log
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C in the terminal reaches the benchmark, which then stops
            # the worker in order, instead of reaching every child at once.
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        if self.profiler == "py-spy":
            assert self.profile_path is not None
            spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
                "py-spy"
            )
            if spy is None:
                raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
            self.spy = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(self.proc.pid),
                    "--nonblocking",
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(self.profile_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def peak_rss_mb(self) -> float | None:
        return vm_hwm_mb(self.pid) if self.alive() else None

    def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM, wait for the clean stop; SIGKILL after `timeout`. Returns the exit code."""
        code: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
        if self.spy is not None:
            try:
                self.spy.wait(30)  # py-spy writes its file once the target has exited
            except subprocess.TimeoutExpired:
                self.spy.send_signal(signal.SIGINT)
                try:
                    self.spy.wait(10)
                except subprocess.TimeoutExpired:
                    self.spy.kill()
                    self.spy.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        return code

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no worker log)"


class CpuMeter:
    """CPU seconds of process groups (worker, postgres, broker) between two snapshots.

    Taken at the first and the last observed commit, so start-up is (mostly) left out; the
    utilisation of each group over that span says who was busy: a worker near 100 % is
    CPU-bound, one well below it waits on the database or the broker. Given the number of
    events done at each snapshot, it also gives CPU seconds per 1 000 events of that span.
    """

    def __init__(self, groups: Mapping[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.first: tuple[float, dict[str, dict[int, float]]] | None = None
        self.last: tuple[float, dict[str, dict[int, float]]] | None = None
        self.first_events: int | None = None
        self.last_events: int | None = None

    def _snapshot(self) -> tuple[float, dict[str, dict[int, float]]]:
        import psutil

        out: dict[str, dict[int, float]] = {}
        for name, pids in self.groups.items():
            times: dict[int, float] = {}
            for pid in pids():
                try:
                    proc = psutil.Process(pid)
                    procs = [proc, *proc.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        t = p.cpu_times()
                    except psutil.Error:
                        continue
                    times[p.pid] = t.user + t.system
            out[name] = times
        return time.monotonic(), out

    def mark(self, events: int | None = None) -> None:
        """A snapshot; `events` is how many events were done (committed) at that moment.

        A process seen before but gone now (a PostgreSQL backend whose client disconnected)
        keeps the CPU time it was last seen with, rather than dropping out of the sum."""
        snap = self._snapshot()
        if self.last is not None:
            for name, times in self.last[1].items():
                now = snap[1].setdefault(name, {})
                for pid, t in times.items():
                    now.setdefault(pid, t)
        if self.first is None:
            self.first = snap
            self.first_events = events
        self.last = snap
        self.last_events = events

    def result(self) -> dict[str, dict[str, float]]:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return {}
        wall = self.last[0] - self.first[0]
        events = None
        if self.first_events is not None and self.last_events is not None:
            events = self.last_events - self.first_events
        out = {}
        for name, times in self.last[1].items():
            before = self.first[1].get(name, {})
            cpu = sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in times.items())
            out[name] = {"cpu_s": round(cpu, 3), "utilisation": round(cpu / wall, 2)}
            if events:
                out[name]["cpu_s_per_1000_events"] = round(cpu / events * 1000, 4)
        span: dict[str, float] = {"wall": round(wall, 2)}
        if events is not None:
            span["events"] = events
        out["span_s"] = span
        return out


async def cpu_windows(
    groups: Mapping[str, Callable[[], list[int]]], seconds: float, window_s: float
) -> list[dict[str, float]]:
    """Cores busy per group in consecutive windows of `window_s` from now until `seconds`
    (the last window takes the remainder, like the latency windows): which process was busy
    when a latency window went wrong."""
    count = max(1, round(seconds / window_s))
    start = time.monotonic()
    meter = CpuMeter(groups)
    meter.mark()
    out: list[dict[str, float]] = []
    for k in range(count):
        end = seconds if k == count - 1 else (k + 1) * window_s
        await asyncio.sleep(max(0.0, start + end - time.monotonic()))
        meter.mark()
        result = meter.result()
        out.append({name: v["utilisation"] for name, v in result.items() if "utilisation" in v})
        following = CpuMeter(groups)
        following.first = following.last = meter.last
        meter = following
    return out


async def committed_offsets(conn: asyncpg.Connection, group_id: str) -> int:
    value = await conn.fetchval(
        "SELECT COALESCE(SUM(next_offset), 0) FROM consumer_offsets WHERE group_id = $1",
        group_id,
    )
    return int(value)


async def wait_committed(
    worker: WorkerProcess,
    database_url: str,
    group_id: str,
    expected: int,
    timeout: float,
    poll_s: float = 0.1,
    cpu: CpuMeter | None = None,
) -> list[tuple[float, int]]:
    """Poll SUM(next_offset) until it reaches `expected`; return the (wall time, sum) samples
    at which it changed (a fallback clock when commit timestamps are off)."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(database_url)
    try:
        last = -1
        while True:
            done = await committed_offsets(conn, group_id)
            if done != last:
                samples.append((time.time(), done))
                last = done
                if cpu is not None and done > 0:
                    cpu.mark(done)
            if done >= expected:
                return samples
            if not worker.alive():
                raise RuntimeError(
                    f"worker exited with code {worker.proc.returncode if worker.proc else '?'} "
                    f"after committing {done}/{expected} offsets:\n{worker.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker committed {done}/{expected} offsets in {timeout:.0f} s:\n"
                    f"{worker.log_tail()}"
                )
            await asyncio.sleep(poll_s)
    finally:
        await conn.close()
