"""The garbage collector's share of a `worker run` process, for bench/README.md.

    GC_PROBE=1 PYTHONPATH=bench/gcprobe python -m bench.run --only proctoring

Python imports `sitecustomize` at start-up from the path, so every process started with this
PYTHONPATH loads it; only `... run` (the worker) is probed. At exit it writes, per generation,
the collections, their total seconds and the longest pause in ms, to
$GC_PROBE_OUT (default /tmp/gcprobe.<pid>), with the objects they found unreachable
(`collected`), then the thresholds in force at exit and every pause over 5 ms (generation,
seconds since start, ms). GC_PROBE_THRESHOLD=700,10,10 tries other thresholds
(gc.set_threshold).
"""

import atexit
import gc
import os
import sys
import time

if os.environ.get("GC_PROBE") and sys.argv[-1:] == ["run"]:
    _stats = {g: [0, 0.0, 0.0, 0] for g in range(3)}
    _started = [0.0]
    _t0 = time.perf_counter()
    _long: list[tuple[int, float, float]] = []

    def _probe(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        took = time.perf_counter() - _started[0]
        s = _stats[info["generation"]]
        s[0] += 1
        s[1] += took
        s[2] = max(s[2], took)
        s[3] += info["collected"]
        if took > 0.005:
            since = round(time.perf_counter() - _t0, 2)
            _long.append((info["generation"], since, round(took * 1e3, 1)))

    def _report() -> None:
        path = os.environ.get("GC_PROBE_OUT", f"/tmp/gcprobe.{os.getpid()}")
        with open(path, "w") as f:
            for g, (n, total, longest, collected) in _stats.items():
                ms = longest * 1e3
                f.write(
                    f"gen{g} collections={n} seconds={total:.3f} longest_ms={ms:.1f} "
                    f"collected={collected}\n"
                )
            f.write(f"threshold={gc.get_threshold()}\n")
            f.write(f"pauses over 5 ms (generation, s since start, ms): {_long}\n")

    if os.environ.get("GC_PROBE_THRESHOLD"):  # "700,10,10": try other thresholds
        gc.set_threshold(*map(int, os.environ["GC_PROBE_THRESHOLD"].split(",")))
    gc.callbacks.append(_probe)
    atexit.register(_report)
