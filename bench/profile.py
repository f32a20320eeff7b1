"""Summaries of a py-spy `--format raw` profile (collapsed stacks: `f1;f2;...;fn COUNT`).

`stages` splits the worker's on-CPU samples by what it was doing, for the CPU per event by
stage of bench/README.md. A sample belongs to the stage of the innermost frame that names
one (STAGE_RULES, first matching rule per frame), so aiokafka's parsing inside the worker's
fetch counts as parsing, and asyncpg's COPY inside a handler's write as COPY encoding. The
rules go by module path and function name only, so they classify any revision's profile the
same way (the before/after comparison of bench/systems.py).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m["func"], m["file"]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        i = path.find(marker)
        if i >= 0:
            return (
                path[i + len(marker) :]
                if marker == "site-packages/"
                else "stdlib" + path[path.find("/", i + len(marker)) :]
            )
    for marker in ("/worker/", "/schemas/", "/bench/"):
        i = path.find(marker)
        if i >= 0:
            return path[i + 1 :]
    return path


def _package(path: str) -> str:
    short = _short(path)
    if short.startswith("stdlib"):
        rest = short[len("stdlib/") :]
        return "stdlib:" + rest.split("/", 1)[0].removesuffix(".py")
    if "/" in short:
        return short.split("/", 1)[0]
    return short or "?"


# (stage, module path prefix, function names or None for any): the first match wins.
STAGE_RULES: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("aiokafka parsing", "aiokafka/consumer/fetcher.py", None),
    ("aiokafka parsing", "aiokafka/record/", None),
    ("kafka client", "aiokafka/", None),
    ("COPY encoding", "asyncpg/", ("Connection.copy_records_to_table", "Connection._copy_in")),
    ("commit", "asyncpg/", None),
    ("commit", "worker/handlers/", ("ProctoringHandler.write", "ProctoringHandler._copy_direct")),
    ("prepare", "worker/handlers/", None),
    ("prepare", "worker/router.py", None),
    ("decode", "worker/decode.py", None),
    ("decode", "schemas/", None),
    ("decode", "worker/batch.py", None),
    ("decode", "worker/consumer.py", ("Worker._decode", "Worker._prepare")),
    ("commit", "worker/commit.py", None),
    ("commit", "worker/offsets.py", None),
    ("commit", "worker/erasure.py", None),
    ("commit", "worker/retention.py", None),
    ("commit", "worker/accounting.py", None),
    ("commit", "worker/tracing.py", None),
    ("commit", "worker/consumer.py", ("Worker._handle", "Worker._handle_batch", "Worker._commit")),
    ("fetch loop", "worker/fetch.py", None),
    ("fetch loop", "worker/partitions.py", None),
    ("fetch loop", "worker/ownership.py", None),
)
# The stages, each with its column name in bench/run.py's table.
STAGES: dict[str, str] = {
    "aiokafka parsing": "parse",
    "kafka client": "kafka",
    "fetch loop": "fetch",
    "decode": "decode",
    "prepare": "prepare",
    "COPY encoding": "COPY",
    "commit": "commit",
    "event loop, other": "loop",
}


def _stage(frames: list[tuple[str, str]]) -> str:
    for func, file in reversed(frames):
        short = _short(file)
        for stage, prefix, names in STAGE_RULES:
            if short.startswith(prefix) and (names is None or func in names):
                return stage
    return "event loop, other"


def stages(path: Path) -> dict[str, Any]:
    """On-CPU samples per stage (STAGES), start-up (imports, migrations) left out."""
    counts = dict.fromkeys(STAGES, 0)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or _startup(stack):
            continue
        counts[_stage(_frames(stack))] += int(count)
    total = sum(counts.values())
    return {
        "samples": total,
        "share": {k: round(v / total, 4) if total else None for k, v in counts.items()},
    }


def _startup(stack: str) -> bool:
    return "<frozen importlib._bootstrap" in stack or "Worker._migrate" in stack


def _frames(stack: str) -> list[tuple[str, str]]:
    return [
        _parse(f)
        for f in stack.split(";")
        if f and not f.startswith("process ") and not f.startswith("thread ")
    ]


def summarise_collapsed(path: Path, top: int = 20) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = startup = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        if _startup(stack):
            startup += n  # imports and migrations: start-up, not the steady state
            continue
        total += n
        frames = _frames(stack)
        if not frames:
            continue
        func, file = frames[-1]
        self_time[f"{func} ({_short(file)})"] += n
        packages[_package(file)] += n
        seen = set()
        for func, file in frames:
            key = f"{func} ({_short(file)})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
                if _short(file).startswith(("worker/", "schemas/")) and not key.startswith(
                    ("<module>", "main ", "run_worker ")
                ):
                    ours[key] += n

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": k, "samples": v, "percent": round(100 * v / total, 1)}
            for k, v in counter.most_common(top)
        ]

    return {
        "samples": total,
        "startup_samples_excluded": startup,
        "self": pct(self_time),
        "inclusive_worker_code": pct(ours),
        "inclusive": pct(inclusive),
        "by_package_self": pct(packages),
        "stages": stages(path),
    }


def render(summary: dict[str, Any]) -> str:
    out = [
        f"samples: {summary['samples']} on-CPU (py-spy), steady state; "
        f"{summary['startup_samples_excluded']} start-up samples (imports, migrations) excluded",
        "\nshare by stage (bench/profile.py STAGE_RULES):",
    ]
    for stage, share in summary["stages"]["share"].items():
        out.append(f"  {100 * (share or 0):5.1f}%  {stage}")
    for title, key in (
        ("self time by package/module", "by_package_self"),
        ("self time (leaf frame)", "self"),
        ("inclusive time, worker/ and schemas/ frames", "inclusive_worker_code"),
        ("inclusive time, all frames", "inclusive"),
    ):
        out.append(f"\n{title}:")
        out.extend(f"  {e['percent']:5.1f}%  {e['frame']}" for e in summary[key])
    return "\n".join(out) + "\n"
