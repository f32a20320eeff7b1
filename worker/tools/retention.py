"""`worker retention show | apply [--execute]`: the time partitions of the proctoring tables,
their rows, what is past the horizons, and the interview rows older than theirs
(docs/contract.md §7; worker/retention.py does the work).

`show` changes nothing. `apply` prints the plan and changes nothing unless `--execute`; then it
waits for the retention lock (a replica's pass in progress finishes first) and applies the
plan as computed at that moment, which is what it prints afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from typing import Any, TextIO

import asyncpg

from worker import retention
from worker.config import Settings
from worker.horizon import Span
from worker.retry import describe


def add_retention_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "retention",
        help="time partitions of the proctoring tables, the retention horizons, old interview rows",
    )
    commands = parser.add_subparsers(dest="retention_command", required=True)
    commands.add_parser("show", help="partitions, their rows and what is past the horizons")
    apply = commands.add_parser(
        "apply",
        help="create partitions ahead, drop and delete what is past the horizons (a dry run "
        "unless --execute)",
    )
    apply.add_argument("--execute", action="store_true", help="change the database")


def run_retention_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_run(args, settings, sys.stdout))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"worker retention {args.retention_command}: {describe(exc)}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    days = settings.proctoring_retention_days
    interview_days = settings.interview_retention_days
    conn = await asyncpg.connect(settings.database_url)
    try:
        if args.retention_command == "show":
            await _show(conn, await retention.plan(conn, days, None, interview_days), out)
        elif args.execute:
            done = await retention.apply_locked(
                conn, days, wait=True, interview_days=interview_days
            )
            assert done is not None
            _print_plan(done, out, executed=True)
        else:
            plan = await retention.plan(conn, days, None, interview_days)
            _print_plan(plan, out, executed=False)
    finally:
        await conn.close()
    return 0


def _when(instant: dt.datetime | None, open_end: str) -> str:
    return open_end if instant is None else instant.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def _print_horizon(
    family: str, variable: str, span: Span, bound: dt.datetime | None, now: dt.datetime, out: TextIO
) -> None:
    """One family's horizon: what is removed, which records are expired, what was removed."""
    if span.days is None:
        out.write(f"{family} horizon: none ({variable} unset: kept forever)\n")
    elif family == "proctoring":
        out.write(
            f"{family} horizon: {span.days} days; partitions wholly before "
            f"{_when(bound, '-')} UTC are dropped\n"
        )
    else:
        out.write(
            f"{family} horizon: {span.days} days; rows whose latest record is before "
            f"{_when(bound, '-')} UTC are deleted\n"
        )
    cutoff = span.cutoff(now)
    out.write(
        f"{family} records before {_when(cutoff, '-')} UTC store nothing (expired)\n"
        if cutoff is not None
        else f"no {family} record is expired\n"
    )
    out.write(f"removed so far: everything before {_when(span.expired_before, 'nothing')}\n")


async def _show(conn: asyncpg.Connection, plan: retention.Plan, out: TextIO) -> None:
    iv = plan.interview
    _print_horizon(
        "proctoring",
        Settings.env_name("proctoring_retention_days"),
        Span(plan.days, plan.expired_before),
        plan.bound,
        plan.now,
        out,
    )
    _print_horizon(
        "interview",
        Settings.env_name("interview_retention_days"),
        Span(iv.days, iv.expired_before),
        iv.bound,
        plan.now,
        out,
    )
    dropping = {p.name for t in plan.tables for p in t.drop}
    out.write(f"\n{'partition':<36} {'from':<17} {'to':<17} {'rows':>10}  state\n")
    for table, _ in retention.TABLES:
        for p in await retention.partitions(conn, table, rows=True):
            state = "past the horizon: dropped by apply" if p.name in dropping else "kept"
            if p.name not in dropping and plan.bound and p.lo is not None and p.lo < plan.bound:
                state = "partly past the horizon: kept until wholly past"
            out.write(
                f"{p.name:<36} {_when(p.lo, 'MINVALUE'):<17} {_when(p.hi, 'MAXVALUE'):<17} "
                f"{p.rows:>10}  {state}\n"
            )
    out.write("\n")
    _print_plan(plan, out, executed=False)


def _print_plan(plan: retention.Plan, out: TextIO, executed: bool) -> None:
    verb = "done" if executed else "plan"
    if plan.empty:
        out.write(f"{verb}: nothing to do\n")
        return
    for t in plan.tables:
        if t.ahead:
            out.write(f"{verb}: {t.table}: create {retention.describe_months(t.ahead)}\n")
        if t.back:
            out.write(
                f"{verb}: {t.table}: split far_past into "
                f"{retention.describe_months(t.back)} (its rows move)\n"
            )
        for p in t.drop:
            out.write(f"{verb}: {t.table}: drop {p.name} (before {_when(p.hi, '-')})\n")
    if any(t.drop for t in plan.tables):
        out.write(
            f"{verb}: proctoring_sessions: delete {plan.sessions} sessions whose last event is "
            f"before {_when(plan.new_expired_before, '-')}\n"
        )
    for table, rows in plan.interview.rows.items():
        if rows:
            out.write(
                f"{verb}: {table}: delete {rows} rows whose latest record is before "
                f"{_when(plan.interview.bound, '-')}\n"
            )
    if not executed:
        out.write("dry run: nothing changed; add --execute to apply\n")
