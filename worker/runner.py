"""Running a worker process: the event loop, the collector's settings and the signals.

`cli.py` parses a command line and calls these; `worker dev` and the benchmarks call them too,
so a worker runs the same way whichever of them starts it. Nothing here parses arguments.

- Signals are handled outside the worker: the first SIGTERM/SIGINT asks it to stop and arms a
  bound (`shutdown_timeout_s` + 5 s) after which the process gives up on a stuck close; a second
  signal forces the exit at once. Exit code 0 after a clean stop, 1 after a forced one.
- The collector is tuned once, at start, for a process whose batches hold tens of thousands of
  live objects (`tune_gc`, worker/reclaim.py).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from worker import reclaim
from worker.config import Settings

log = structlog.get_logger("worker")


def event_loop_runner() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """`uvloop.run` where uvloop is installed, `asyncio.run` otherwise."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional (absent on Windows)
        return asyncio.run
    return uvloop.run


async def run_worker(
    settings: Settings,
    companion: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Run the worker until SIGTERM/SIGINT; `companion(worker)` runs beside it (`worker dev`)."""
    from worker.consumer import Worker
    from worker.tracing import configure_from_env

    flush_traces = configure_from_env()
    worker = Worker(settings)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("signal received, stopping", signal=signal.Signals(signum).name)
            worker.stop()
            # Bounded shutdown: a stuck close must not keep a replica from being replaced.
            loop.call_later(settings.shutdown_timeout_s + 5, _force, "shutdown timed out")
        else:
            _force("second signal")

    def _force(why: str) -> None:
        log.error("forcing exit", reason=why)
        if main is not None:
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    side = asyncio.create_task(companion(worker)) if companion else None
    try:
        await worker.run()
    except asyncio.CancelledError:
        if worker.stopping:
            return 0 if signals_seen == 1 else 1
        raise
    finally:
        if side is not None:
            side.cancel()
        flush_traces()
    return 0


def tune_gc() -> None:
    """The collector's settings for a worker process (worker/reclaim.py)."""
    reclaim.tune()
