"""`python -m bench.pyinstrument_worker OUTFILE`: `worker run` under pyinstrument, wall clock.

pyinstrument's command line profiles with `async_mode="disabled"`, which files all waiting
under the event loop. Here the profiler starts inside the worker's main task with
`async_mode="enabled"`, so time the main task spends awaiting (the database, the broker) is
attributed to the awaiting line; this shows where a batch's wall time goes. Otherwise this is
`worker run` (same settings from the environment, same event loop, same SIGTERM handling);
the report is written once the worker has shut down.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    from pyinstrument import Profiler

    from worker.config import Settings
    from worker.logs import configure_logging
    from worker.runner import event_loop_runner, run_worker

    out = Path(sys.argv[1])
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)

    profiler = Profiler(interval=0.001, async_mode="enabled")

    async def profiled() -> int:
        profiler.start()
        try:
            return await run_worker(settings)
        finally:
            profiler.stop()

    try:
        return int(event_loop_runner()(profiled()))
    finally:
        if profiler.last_session is not None:
            out.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
            out.with_suffix(".html").write_text(profiler.output_html())


if __name__ == "__main__":
    sys.exit(main())
