"""Summaries of a py-spy `--format raw` profile (collapsed stacks: `f1;f2;...;fn COUNT`)."""

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
        if "<frozen importlib._bootstrap" in stack or "Worker._migrate" in stack:
            startup += n  # imports and migrations: start-up, not the steady state
            continue
        total += n
        frames = [
            _parse(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
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
    }


def render(summary: dict[str, Any]) -> str:
    out = [
        f"samples: {summary['samples']} on-CPU (py-spy), steady state; "
        f"{summary['startup_samples_excluded']} start-up samples (imports, migrations) excluded"
    ]
    for title, key in (
        ("self time by package/module", "by_package_self"),
        ("self time (leaf frame)", "self"),
        ("inclusive time, worker/ and schemas/ frames", "inclusive_worker_code"),
        ("inclusive time, all frames", "inclusive"),
    ):
        out.append(f"\n{title}:")
        out.extend(f"  {e['percent']:5.1f}%  {e['frame']}" for e in summary[key])
    return "\n".join(out) + "\n"
