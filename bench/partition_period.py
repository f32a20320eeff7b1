"""What the partition period costs a query that cannot prune by time: a candidate's events
reached by (exam_id, candidate_id), the README's way, probes every partition's key index.

    .venv/bin/python -m bench.partition_period --database-url postgresql://...

For three years of monthly (36), weekly (157) and daily (1096) partitions of a copy of
proctoring_events' layout, prints the median planning and execution time of that lookup and
of one bounded to a day (which prunes to one partition), over 200 runs each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import uuid

import asyncpg

PERIODS = {"monthly": ("1 month", 36), "weekly": ("7 days", 157), "daily": ("1 day", 1096)}
_SESSION = "SELECT * FROM {t} WHERE exam_id = 'exam-7' AND candidate_id = 'cand-7'"
_DAY = (
    "SELECT * FROM {t} WHERE exam_id = 'exam-7' AND candidate_id = 'cand-7' "
    "AND created_at >= '2025-06-01Z' AND created_at < '2025-06-02Z'"
)


async def build(conn: asyncpg.Connection, table: str, step: str, count: int) -> None:
    await conn.execute(
        f"CREATE TABLE {table} (exam_id text, candidate_id text, type text, "
        "created_at timestamptz, description text, "
        "PRIMARY KEY (exam_id, candidate_id, type, created_at)) PARTITION BY RANGE (created_at)"
    )
    for n in range(count):
        await conn.execute(
            f"CREATE TABLE {table}_{n} PARTITION OF {table} FOR VALUES "
            f"FROM (timestamptz '2024-01-01Z' + {n} * interval '{step}') "
            f"TO (timestamptz '2024-01-01Z' + {n + 1} * interval '{step}')"
        )
    # 200 000 events over the range, 1 000 sessions.
    await conn.execute(
        f"INSERT INTO {table} SELECT 'exam-' || (g % 1000), 'cand-' || (g % 1000), "
        "'TAB_NOT_FOCUS', "
        f"timestamptz '2024-01-01Z' + (g % {count}) * interval '{step}' + g * interval '1 ms', '' "
        "FROM generate_series(1, 200000) g"
    )
    await conn.execute(f"ANALYZE {table}")


async def timing(conn: asyncpg.Connection, sql: str) -> tuple[float, float]:
    plans, runs = [], []
    for _ in range(200):
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        doc = json.loads(plan)[0]
        plans.append(doc["Planning Time"])
        runs.append(doc["Execution Time"])
    return statistics.median(plans), statistics.median(runs)


async def main(url: str) -> None:
    conn = await asyncpg.connect(url)
    schema = f"period_{uuid.uuid4().hex[:6]}"
    await conn.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}")
    try:
        print(
            f"{'period':<8} {'parts':>5}  {'session lookup ms (plan / run)':>32}  {'one day':>18}"
        )
        for name, (step, count) in PERIODS.items():
            await build(conn, name, step, count)
            session = await timing(conn, _SESSION.format(t=name))
            day = await timing(conn, _DAY.format(t=name))
            print(
                f"{name:<8} {count:>5}  {session[0]:>15.3f} / {session[1]:>7.3f}"
                f"          {day[0]:>7.3f} / {day[1]:>7.3f}"
            )
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    asyncio.run(main(parser.parse_args().database_url))
