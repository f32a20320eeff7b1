"""Figures computed in SQL from what the worker committed.

Every row's `xmin` is the transaction that wrote it, and with `track_commit_timestamp=on`
`pg_xact_commit_timestamp(xmin)` is when that transaction committed. So:

* throughput = events committed after the first batch / (last commit - first commit): the
  first batch's records were fetched before the clock could start, so they are excluded from
  the numerator (counting them would overstate the rate by up to one batch);
* latency = commit time of the row - the event's `createdAt` (its send time); percentiles
  are computed here (`percentile`, the same interpolation as `percentile_cont`) from the
  samples, so the worker's and the bare consumer's figures are computed alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg


async def commit_timestamps(conn: asyncpg.Connection) -> tuple[bool, str]:
    """Whether commit timestamps are recorded; if not, why (for the report)."""
    value = await conn.fetchval("SHOW track_commit_timestamp")
    if value == "on":
        return True, ""
    return False, (
        "track_commit_timestamp is off on this PostgreSQL server (needs "
        "`track_commit_timestamp = on` and a restart)"
    )


@dataclass(frozen=True, slots=True)
class Span:
    """Committed work between the first and the last commit."""

    events: int  # all events committed
    first_batch: int  # events in the first committed transaction
    batches: int  # committed transactions that moved offsets
    first: float  # epoch seconds of the first commit
    last: float  # epoch seconds of the last commit
    method: str

    @property
    def seconds(self) -> float:
        return self.last - self.first

    @property
    def rate(self) -> float | None:
        """(events - first batch) / (last - first): the first batch is excluded."""
        if self.seconds <= 0:
            return None
        return (self.events - self.first_batch) / self.seconds

    @property
    def rate_all(self) -> float | None:
        """events / (last - first): includes the first batch (optimistic by one batch)."""
        if self.seconds <= 0:
            return None
        return self.events / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "events": self.events,
            "first_batch_events": self.first_batch,
            "batches": self.batches,
            "mean_batch": round(self.events / self.batches, 1) if self.batches else None,
            "seconds": round(self.seconds, 4),
            "events_per_s": _round(self.rate),
            "events_per_s_incl_first_batch": _round(self.rate_all),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


async def span_from_offset_log(conn: asyncpg.Connection, group_id: str) -> Span | None:
    """Per committed batch: its commit time and how many records it moved the offsets by,
    from `bench_offset_log` (one row per partition per batch, written by a trigger on
    `consumer_offsets` inside the batch's transaction)."""
    rows = await conn.fetch(
        """
        WITH l AS (
            SELECT xmin::text AS x,
                   extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS ts,
                   next_offset - COALESCE(lag(next_offset) OVER (
                       PARTITION BY topic, partition ORDER BY next_offset), 0) AS delta
            FROM bench_offset_log WHERE group_id = $1)
        SELECT x, min(ts) AS ts, sum(delta)::bigint AS n FROM l GROUP BY x ORDER BY 2
        """,
        group_id,
    )
    if not rows:
        return None
    return Span(
        events=sum(r["n"] for r in rows),
        first_batch=rows[0]["n"],
        batches=len(rows),
        first=rows[0]["ts"],
        last=rows[-1]["ts"],
        method="consumer_offsets progress per committed transaction",
    )


async def span_from_proctoring_rows(
    conn: asyncpg.Connection, exclude_exam: str | None = None
) -> Span | None:
    """min/max of pg_xact_commit_timestamp(xmin) over proctoring_events (insert-only rows)."""
    row = await conn.fetchrow(
        """
        WITH t AS (
            SELECT xmin::text AS x,
                   extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS ts
            FROM proctoring_events WHERE exam_id IS DISTINCT FROM $1),
        b AS (SELECT x, min(ts) AS ts, count(*) AS n FROM t GROUP BY x)
        SELECT sum(n)::bigint AS events, count(*) AS batches, min(ts) AS first, max(ts) AS last,
               (SELECT n FROM b ORDER BY ts LIMIT 1) AS first_batch
        FROM b
        """,
        exclude_exam,
    )
    if row is None or not row["events"]:
        return None
    return Span(
        events=row["events"],
        first_batch=row["first_batch"],
        batches=row["batches"],
        first=row["first"],
        last=row["last"],
        method="pg_xact_commit_timestamp(xmin) over proctoring_events",
    )


def span_from_samples(samples: list[tuple[float, int]], method: str) -> Span | None:
    """Fallback without commit timestamps: polled SUM(next_offset) (resolution: the poll)."""
    moved = [(t, n) for t, n in samples if n > 0]
    if len(moved) < 2:
        return None
    return Span(
        events=moved[-1][1],
        first_batch=moved[0][1],
        batches=len(moved),
        first=moved[0][0],
        last=moved[-1][0],
        method=method,
    )


async def latency_samples(
    conn: asyncpg.Connection, exclude_exam: str
) -> tuple[list[float], list[float]]:
    """Per stored row: its `createdAt` (epoch s, the send time) and commit - createdAt (ms)."""
    rows = await conn.fetch(
        """
        SELECT extract(epoch FROM created_at)::float8 AS sent,
               (extract(epoch FROM pg_xact_commit_timestamp(xmin) - created_at) * 1000)::float8
                   AS ms
        FROM proctoring_events WHERE exam_id <> $1
        """,
        exclude_exam,
    )
    return [r["sent"] for r in rows], [r["ms"] for r in rows]


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks: PostgreSQL's `percentile_cont(q)`."""
    if not ordered:
        raise ValueError("no values")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _stats(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "rows": len(ordered),
        "p50_ms": round(percentile(ordered, 0.5), 2),
        "p90_ms": round(percentile(ordered, 0.9), 2),
        "p99_ms": round(percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2),
        "min_ms": round(ordered[0], 2),
    }


def latency_summary(
    sent: Sequence[float],
    latency_ms: Sequence[float],
    t0: float,
    seconds: float,
    window_s: float = 10.0,
) -> dict[str, Any] | None:
    """p50/p90/p99/max over all samples, and p50/p99/max per `window_s` window of send time
    from `t0` (the stream's first send); the last window takes the remainder of `seconds`."""
    if not latency_ms:
        return None
    count = max(1, round(seconds / window_s))
    buckets: list[list[float]] = [[] for _ in range(count)]
    for at, ms in zip(sent, latency_ms, strict=True):
        buckets[min(count - 1, max(0, int((at - t0) // window_s)))].append(ms)
    windows = []
    for k, values in enumerate(buckets):
        end = seconds if k == count - 1 else (k + 1) * window_s
        window: dict[str, Any] = {"from_s": k * window_s, "to_s": round(end, 1)}
        if values:
            stats = _stats(values)
            window.update(
                rows=stats["rows"],
                p50_ms=stats["p50_ms"],
                p99_ms=stats["p99_ms"],
                max_ms=stats["max_ms"],
            )
        else:
            window["rows"] = 0
        windows.append(window)
    return {**_stats(list(latency_ms)), "window_s": window_s, "windows": windows}


async def table_counts(conn: asyncpg.Connection, tables: list[str]) -> dict[str, int]:
    return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}


# Every table the worker writes, partitions included (pg_partition_tree: a partitioned
# parent holds no rows itself), with its indexes and TOAST.
_TABLE_BYTES = """
SELECT (pg_total_relation_size($1::regclass) + coalesce(
    (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree($1::regclass)
     WHERE relid <> $1::regclass), 0))::bigint
"""


async def table_bytes(conn: asyncpg.Connection, tables: list[str]) -> dict[str, dict[str, Any]]:
    """Per table: rows, bytes on disk (heap, indexes, TOAST) and bytes per row, after a
    VACUUM so that dead tuples of the upserts are not counted as live data."""
    out: dict[str, dict[str, Any]] = {}
    for t in tables:
        await conn.execute(f"VACUUM {t}")
        rows = int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
        size = int(await conn.fetchval(_TABLE_BYTES, t))
        out[t] = {
            "rows": rows,
            "bytes": size,
            "bytes_per_row": round(size / rows) if rows else None,
        }
    return out


async def wal_position(url: str) -> int:
    """The server's WAL insert position in bytes: the difference across a run is the WAL it
    wrote (the bench's own server runs one workload at a time)."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')")
        )
    finally:
        await conn.close()
