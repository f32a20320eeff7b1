"""The SQL is ready for the Citus layout of worker/distribution.py (docs/scaling.md).

Two rules Citus puts on a distributed table, checked with PostgreSQL's own parser (pglast is
libpg_query) against the statements the worker really sends and the catalogue of a migrated
database:

1. No function that is not immutable in `ON CONFLICT ... DO UPDATE SET` (and its WHERE), in
   `UPDATE ... SET`, or in `RETURNING`: Citus evaluates them on the shards and rejects them.
   (Citus allows a stable function without column references in UPDATE SET; refusing it
   there too keeps one rule: the worker binds every time it writes.) Volatility comes from
   `pg_proc` of the same database, conservatively: a name with any non-immutable overload of
   that arity fails, and so does the SQL-standard `CURRENT_TIMESTAMP` family.
2. Every primary key and unique index of a distributed table holds its distribution column,
   and every table of the schema has a declared placement.

The statements come from two places, so that neither can be vacuous: every statement an
in-process worker sends while it stores all nine interview samples and the proctoring
samples twice (the second time through the staged path), captured by asyncpg's query logger
on each pooled connection; and every SQL string the worker's modules hold (module constants
and the SQL built into handler and table objects), which also covers the operator commands.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pglast
import pytest
from pglast import ast, enums
from support.e2e import expected_offsets, running_worker, settings_for, wait_for_offsets
from support.infra import Topics, produce

import worker
import worker.clients
from worker.dev.seeds import interview_samples, proctoring_samples
from worker.distribution import PLACEMENTS, Kind, markdown
from worker.migrate import migrate_url

pytestmark = pytest.mark.integration

_STATEMENT_START = ("INSERT", "UPDATE", "WITH", "DELETE")
_VOLATILITY = {"i": "immutable", "s": "stable", "v": "volatile"}


# -- the parse tree ---------------------------------------------------------------------------


def _walk(node: Any) -> Iterator[ast.Node]:
    if isinstance(node, ast.Node):
        yield node
        for name in type(node).__slots__:
            yield from _walk(getattr(node, name, None))
    elif isinstance(node, (list, tuple)):
        for child in node:
            yield from _walk(child)


def _restricted(statement: ast.Node) -> Iterator[tuple[str, Any]]:
    """(clause, subtree) for every clause of `statement` where Citus wants immutable functions."""
    for node in _walk(statement):
        if isinstance(node, ast.InsertStmt):
            oc = node.onConflictClause
            if oc is not None and oc.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
                yield "ON CONFLICT DO UPDATE SET", oc.targetList
                yield "ON CONFLICT DO UPDATE WHERE", oc.whereClause
        if isinstance(node, ast.UpdateStmt):
            yield "UPDATE SET", node.targetList
        if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)):
            yield "RETURNING", node.returningClause


Procs = dict[str, list[tuple[int, bool, str]]]


async def _procs(conn: asyncpg.Connection) -> Procs:
    procs: Procs = {}
    for r in await conn.fetch(
        "SELECT proname, pronargs, provariadic <> 0, provolatile::text FROM pg_proc"
    ):
        procs.setdefault(r[0], []).append((r[1], r[2], r[3]))
    return procs


def _mutable_calls(sql: str, procs: Procs) -> list[str]:
    """What in `sql` is not immutable where Citus needs it to be; empty if nothing."""
    found = []
    for raw in pglast.parse_sql(sql):
        for clause, subtree in _restricted(raw.stmt):
            for node in _walk(subtree):
                if isinstance(node, ast.SQLValueFunction):
                    found.append(f"{clause}: {node.op.name} (stable)")
                elif isinstance(node, ast.FuncCall):
                    name = node.funcname[-1].sval
                    arity = len(node.args or ())
                    overloads = [
                        vol for n, variadic, vol in procs.get(name, []) if n == arity or variadic
                    ]
                    if not overloads:
                        found.append(f"{clause}: {name}/{arity} (unknown function)")
                    elif set(overloads) != {"i"}:
                        worst = "volatile" if "v" in overloads else "stable"
                        found.append(f"{clause}: {name}() ({worst})")
    return found


# -- where the statements come from -----------------------------------------------------------


def _is_statement(text: str) -> bool:
    # Case-sensitive: the worker writes SQL keywords in capitals, prose starts "With ...".
    return text.lstrip().startswith(_STATEMENT_START)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
        return
    names = list(getattr(value, "__dict__", {}))
    for cls in type(value).__mro__:
        names += list(getattr(cls, "__slots__", ()))
    for name in names:
        attr = getattr(value, name, None)
        if isinstance(attr, str):
            yield attr


def module_statements() -> dict[str, str]:
    """Every SQL statement held by a module of the worker package: {where: sql}."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(worker.__path__, "worker."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.startswith("__") or isinstance(value, (type, types.ModuleType)):
                continue
            for text in _strings(value):
                if _is_statement(text):
                    found.setdefault(text, f"{info.name}.{name}")
    return {where: sql for sql, where in found.items()}


async def test_module_statements_are_immutable_where_citus_needs_it(pg_admin_url: str) -> None:
    statements = module_statements()
    # Not vacuous: the upserts of every handler and the offsets' statements are among them.
    held = "\n".join(statements.values())
    for table in ("interview_reports", "applicants", "candidates", "consumer_offsets"):
        assert f"INTO {table}" in held or f"UPDATE {table}" in held, table
    # pg_proc is the same in every database of the server.
    conn = await asyncpg.connect(pg_admin_url)
    try:
        procs = await _procs(conn)
    finally:
        await conn.close()
    problems = {
        where: bad for where, sql in statements.items() if (bad := _mutable_calls(sql, procs))
    }
    assert not problems, "\n".join(f"{where}: {bad}" for where, bad in problems.items())


async def test_statements_the_worker_sends_are_immutable_where_citus_needs_it(
    kafka_bootstrap: str,
    database_url: str,
    topics: Topics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: set[str] = set()
    real_create_pool = asyncpg.create_pool

    def logged_pool(*args: Any, **kwargs: Any) -> Any:
        async def init(conn: asyncpg.Connection) -> None:
            conn.add_query_logger(lambda logged: sent.add(logged.query))

        return real_create_pool(*args, init=init, **kwargs)

    monkeypatch.setattr(worker.clients.asyncpg, "create_pool", logged_pool)

    interview = [(b"cand", value) for value in interview_samples()]
    proctoring = [(b"exam:cand", value) for value in proctoring_samples("exam-c", "cand-c")]
    metas = await produce(kafka_bootstrap, topics.interview, interview)
    metas += await produce(kafka_bootstrap, topics.proctoring, proctoring)
    settings = settings_for(kafka_bootstrap, database_url, topics)
    async with running_worker(settings):
        await wait_for_offsets(database_url, topics.group_id, expected_offsets(metas))
        # The same events again: the direct COPY meets them, and the staged path stores.
        metas += await produce(kafka_bootstrap, topics.proctoring, proctoring)
        await wait_for_offsets(database_url, topics.group_id, expected_offsets(metas))

    conn = await asyncpg.connect(database_url)
    try:
        procs = await _procs(conn)
    finally:
        await conn.close()
    written = "\n".join(sent)
    for target in (
        "INSERT INTO interview_reports",
        "INSERT INTO applicants",
        "INSERT INTO candidates",
        "INSERT INTO jobs",
        "INSERT INTO interviews",
        "INSERT INTO proctoring_sessions",
        "INSERT INTO proctoring_events",  # the staged path's
        "consumer_offsets",
    ):
        assert target in written, f"no statement with {target!r} was captured"
    problems = {
        sql: bad for sql in sent if _is_statement(sql) and (bad := _mutable_calls(sql, procs))
    }
    assert not problems, "\n\n".join(f"{sql}\n-> {bad}" for sql, bad in problems.items())


# -- keys and placements ----------------------------------------------------------------------

_UNIQUE_KEYS = """
SELECT c.relname, i.relname,
       array(SELECT a.attname FROM unnest(x.indkey) AS k(n)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.n)
FROM pg_index x
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace s ON s.oid = c.relnamespace
WHERE x.indisunique AND s.nspname = 'public' AND NOT c.relispartition
"""

_TABLES = """
SELECT c.relname, array(SELECT attname FROM pg_attribute
                        WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)
FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
WHERE s.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""


async def test_every_table_is_placed_and_its_unique_keys_hold_its_distribution_column(
    database_url: str,
) -> None:
    await migrate_url(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        tables = {r[0]: set(r[1]) for r in await conn.fetch(_TABLES)}
        keys = await conn.fetch(_UNIQUE_KEYS)
    finally:
        await conn.close()
    assert "interview_reports" in tables and keys  # a migrated database, not an empty one
    assert set(tables) <= set(PLACEMENTS), (
        f"tables without a placement: {set(tables) - set(PLACEMENTS)}"
    )
    assert set(PLACEMENTS) <= set(tables), (
        f"placements of no table: {set(PLACEMENTS) - set(tables)}"
    )
    for table, placement in PLACEMENTS.items():
        if placement.kind is Kind.DISTRIBUTED:
            assert placement.column in tables[table], (table, placement.column)
    missing = [
        f"{index} on {table} {list(columns)} lacks {PLACEMENTS[table].column}"
        for table, index, columns in keys
        if PLACEMENTS[table].kind is Kind.DISTRIBUTED and PLACEMENTS[table].column not in columns
    ]
    assert not missing, missing


def test_the_layout_table_of_the_scaling_doc_is_generated_from_the_placements() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scaling.md").read_text("utf-8")
    assert markdown() in doc, "docs/scaling.md is stale: paste `python -m worker.distribution`"
