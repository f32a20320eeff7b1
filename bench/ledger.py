"""`python -m bench.ledger`: what the erasure ledger's check costs a batch (worker/erasure.py).

The check runs in every batch transaction: one read of `erasure_lock` FOR SHARE, and, once
the ledger has entries, the HMAC of each distinct name of the batch (its candidate ids, and
the emails when a record carries one) and one indexed lookup of those subjects. Measured on
its own against a real PostgreSQL, in batches of the worker's size (20 000 decoded proctoring
events of the `make bench` workload), best of `--rounds`, for ledgers of 0 and `--entries`
erasures (other candidates', the usual case), beside the cost of storing the same batch (the
worker's COPY path) for scale. Prints one table; `bench.run --only ledger` puts the same
figures in the full run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import asyncpg

BATCH = 20_000
TOPICS = ("proctoring.events", "interview.events")


class _NoHeaders:
    headers = ()


async def seed_ledger(conn: asyncpg.Connection, entries: int, partitions: int = 12) -> None:
    """`entries` erasures of other candidates, with log ends for both topics."""
    ends = json.dumps({t: {str(p): 1_000_000 for p in range(partitions)} for t in TOPICS})
    await conn.execute("TRUNCATE erasures")
    await conn.execute(
        "INSERT INTO erasures (subject, erased_at, log_ends, rows_deleted) "
        "SELECT sha256(('other-' || n)::text::bytea), now(), $1::jsonb, '{}'::jsonb "
        "FROM generate_series(1, $2) n",
        ends,
        entries,
    )
    await conn.execute("UPDATE erasure_lock SET erasures = $1", entries)
    await conn.execute("ANALYZE erasures")


async def measure(database_url: str, entries: int, rounds: int, scale: float) -> dict[str, Any]:
    from bench.baselines import decoded_proctoring
    from bench.data import proctoring_spec
    from worker.erasure import Ledger
    from worker.handlers.base import Item
    from worker.migrate import migrate
    from worker.router import prepare_batch, write_batch

    spec = proctoring_spec(scale)
    decoded = decoded_proctoring(spec, 12)[:BATCH]
    items = [Item(ev, TOPICS[0], p, o) for ev, p, o in decoded]
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        out: dict[str, Any] = {"batch": len(items), "entries": entries, "rounds": rounds}
        ledger = await Ledger.load(conn)
        for label, size in (("empty", 0), ("full", entries)):
            await seed_ledger(conn, size)
            best = float("inf")
            for _ in range(rounds):
                async with conn.transaction(isolation="read_committed"):
                    started = time.perf_counter()
                    kept, erased = await ledger.screen(conn, items, lambda _i: _NoHeaders)
                    best = min(best, time.perf_counter() - started)
                    assert len(kept) == len(items) and not erased
            out[f"screen_{label}_us_per_record"] = round(best / len(items) * 1e6, 4)
            out[f"screen_{label}_ms_per_batch"] = round(best * 1000, 3)
        best = float("inf")
        for _ in range(rounds):
            await conn.execute("TRUNCATE proctoring_events, proctoring_sessions, system_checks")
            prepared = prepare_batch(items)
            async with conn.transaction():
                started = time.perf_counter()
                await write_batch(conn, prepared)
                best = min(best, time.perf_counter() - started)
        out["store_us_per_record"] = round(best / len(items) * 1e6, 3)
        return out
    finally:
        await conn.close()


def render(result: dict[str, Any]) -> str:
    store = result["store_us_per_record"]
    lines = [
        f"erasure ledger check, batch of {result['batch']} events, best of {result['rounds']}:",
        f"  {'ledger':<24} {'us/record':>10} {'ms/batch':>9} {'of the store cost':>18}",
    ]
    for label, name in (("empty", "empty"), ("full", f"{result['entries']} entries")):
        us = result[f"screen_{label}_us_per_record"]
        ms = result[f"screen_{label}_ms_per_batch"]
        lines.append(f"  {name:<24} {us:>10.4f} {ms:>9.3f} {us / store:>17.2%}")
    lines.append(f"  {'store (COPY path)':<24} {store:>10.3f}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    from bench.stack import Stack

    stack = Stack(run_id="ledger")
    stack.start()
    try:
        url = await stack.fresh_database("ledger")
        result = await measure(url, args.entries, args.rounds, args.scale)
    finally:
        stack.close()
    print(render(result))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "7")))
    parser.add_argument("--scale", type=float, default=1.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
