"""How values merge (README "What each table promises"), declared once per column; the upsert
SQL, the `unnest` arrays and the in-batch fold are derived from the declaration.

Two kinds of table:

- A **register table** (`candidates`, `jobs`, `interviews`, and the columns the recording,
  webcam-recording and score events own): every column is a register holding the non-null
  value with the greatest (time, value) any event carried. `max` is commutative, associative
  and idempotent, so the final value cannot depend on arrival order, partitioning, batching or
  redelivery. A batch is folded to one row per key with the same comparison the SQL makes
  between the batch and the stored row; a column whose sources have a time keeps that time in
  a `<column>_at` version column.
- A **gated row** (`applicants`, the `interview_report.created` columns): an event older than
  the row's version changes nothing; a current one replaces every column it carries non-null.
  That is not commutative, so the batch is folded in stream order starting from the stored
  version, read under `FOR UPDATE` (see `GatedTable.stored_versions`): exactly the events a
  one-at-a-time application would apply are applied.

Values compare as the README says, identically here and in the SQL: text by code point
(`COLLATE "C"`; Python compares `str` by code point too), numbers numerically and then by
their decimal text, timestamps and dates chronologically; a missing time is older than any.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg


class Rule(enum.Enum):
    KEY = "key"
    # Greatest (time, value) of all events carrying it; versioned by `<name>_at`.
    NEWEST = "newest"
    # Greatest value: for columns whose sources carry no time.
    GREATEST = "greatest"
    # In a gated row: a current event's non-null value replaces the stored one.
    REPLACE = "replace"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # PostgreSQL type: text, numeric, date, timestamptz, jsonb
    rule: Rule = Rule.REPLACE

    @property
    def version(self) -> str:
        return f"{self.name}_at"

    @property
    def versioned(self) -> bool:
        return self.rule is Rule.NEWEST

    def sql_order(self, ref: str) -> str:
        """The SQL comparison key of this column's value in `ref` (a row alias)."""
        v = f"{ref}.{self.name}"
        if self.type == "text":
            return f'{v} COLLATE "C"'
        if self.type == "numeric":
            return f'{v}, {v}::text COLLATE "C"'
        return v


# The age of an interview row, which retention deletes it by (worker/horizon.py): the born
# column of the tables the interview handlers create rows in.
ROW_AGE = Column("last_event_at", "timestamptz")

# The values of a table's born column for the rows a batch may create, by key (None: none).
# Retention's row ages (worker/horizon.py) are one: a row created with its age needs no second
# write of its age in the same transaction.
Born = Mapping[Any, Any] | None


# -- parameters -------------------------------------------------------------------------------


def param(index: int, pg_type: str) -> str:
    """The SQL of array parameter `index` of `pg_type`. Timestamps travel as ISO text and are
    cast by PostgreSQL: asyncpg's binary encoder turns datetime.min and datetime.max (valid
    instants: 0001-01-01T00:00Z, 9999-12-31T23:59:59.999999Z) into -infinity and infinity."""
    if pg_type == "timestamptz":
        return f"${index}::text[]::timestamptz[]"
    return f"${index}::{pg_type}[]"


def stamp(index: int) -> str:
    """`updated_at` set from parameter `index`: the transaction's time, bound by the worker
    (`worker.clock.transaction_time`). Never `now()`: Citus refuses a function that is
    not immutable in `ON CONFLICT ... DO UPDATE SET` (worker/distribution.py)."""
    return f"updated_at = ${index}::timestamptz"


def wire(pg_type: str, values: list[Any]) -> list[Any]:
    """`values` as `param` sends them."""
    if pg_type == "timestamptz":
        return [None if v is None else v.isoformat() for v in values]
    return values


# -- the comparison, in Python ------------------------------------------------------------------

OLDEST: tuple[int] = (0,)


def time_order(moment: dt.datetime | None) -> tuple[Any, ...]:
    """A missing time is older than any time."""
    return OLDEST if moment is None else (1, moment)


def value_order(value: Any) -> Any:
    """The Python twin of `Column.sql_order`: numbers numerically, then by decimal text."""
    if isinstance(value, Decimal):
        return (value, format(value, "f"))
    return value


# -- register tables -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterTable:
    """A table whose key column is followed by register columns (NEWEST or GREATEST)."""

    name: str
    key: Column
    columns: tuple[Column, ...]
    # A column written only when the upsert creates the row, never on conflict (`Born`).
    born: Column | None = None
    sql: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sql", self._upsert_sql())

    def wins(self, c: Column) -> str:
        """SQL: the batch's value of `c` beats the stored one."""
        new, old = c.sql_order("EXCLUDED"), c.sql_order("t")
        if c.versioned:
            new = f"COALESCE(EXCLUDED.{c.version}, '-infinity'), {new}"
            old = f"COALESCE(t.{c.version}, '-infinity'), {old}"
        return f"(EXCLUDED.{c.name} IS NOT NULL AND (t.{c.name} IS NULL OR ({new}) > ({old})))"

    def _stored(self) -> list[str]:
        names = [self.key.name]
        for c in self.columns:
            names += [c.name, c.version] if c.versioned else [c.name]
        return names

    def _types(self) -> list[str]:
        types = [self.key.type]
        for c in self.columns:
            types += [c.type, "timestamptz"] if c.versioned else [c.type]
        return types

    def inserted(self) -> tuple[list[str], list[str]]:
        """The names and types of the columns an insert writes (the born one last)."""
        names, types = self._stored(), self._types()
        if self.born is not None:
            names, types = [*names, self.born.name], [*types, self.born.type]
        return names, types

    def _upsert_sql(self) -> str:
        names, types = self.inserted()
        params = ", ".join(param(i, t) for i, t in enumerate(types, 1))
        sets = []
        for c in self.columns:
            wins = self.wins(c)
            sets.append(f"{c.name} = CASE WHEN {wins} THEN EXCLUDED.{c.name} ELSE t.{c.name} END")
            if c.versioned:
                sets.append(
                    f"{c.version} = CASE WHEN {wins} THEN EXCLUDED.{c.version} "
                    f"ELSE t.{c.version} END"
                )
        # The WHERE skips rows that would not change, so replays do not rewrite (and lock)
        # hot rows such as a popular job.
        return (
            f"INSERT INTO {self.name} AS t ({', '.join(names)})\n"
            f"SELECT * FROM unnest({params})\n"
            f"ON CONFLICT ({self.key.name}) DO UPDATE SET\n    "
            + ",\n    ".join([*sets, stamp(len(types) + 1)])
            + "\nWHERE "
            + "\n   OR ".join(self.wins(c) for c in self.columns)
        )

    def fold(self) -> RegisterFold:
        return RegisterFold(self)


class RegisterFold:
    """One batch's contributions to a register table, folded to one row per key."""

    __slots__ = ("_rows", "table")

    def __init__(self, table: RegisterTable) -> None:
        self.table = table
        # key -> column name -> (order, value, time)
        self._rows: dict[Any, dict[str, tuple[Any, Any, dt.datetime | None]]] = {}

    def add(self, key: Any, moment: dt.datetime | None, values: dict[str, Any]) -> None:
        """One event's values (by column name) for the row `key`, at the event's time."""
        if key is None:
            return
        row = self._rows.setdefault(key, {})
        for name, value in values.items():
            if value is None:
                continue  # absent and null never erase, nor compete
            order = (time_order(moment), value_order(value))
            current = row.get(name)
            if current is None or order > current[0]:
                row[name] = (order, value, moment)

    def __len__(self) -> int:
        return len(self._rows)

    def arrays(self, born: Born = None) -> list[list[Any]]:
        """Per-column arrays for the upsert, rows in key order (the lock order)."""
        _, types = self.table.inserted()
        arrays: list[list[Any]] = [[] for _ in types]
        for key in sorted(self._rows):
            row = self._rows[key]
            values: list[Any] = [key]
            for c in self.table.columns:
                _, value, moment = row.get(c.name, (None, None, None))
                values += [value, moment] if c.versioned else [value]
            if self.table.born is not None:
                values.append(None if born is None else born.get(key))
            for array, value in zip(arrays, values, strict=True):
                array.append(value)
        return [wire(t, a) for t, a in zip(types, arrays, strict=True)]

    async def write(self, conn: asyncpg.Connection, at: dt.datetime, born: Born = None) -> None:
        if self._rows:
            await conn.execute(self.table.sql, *self.arrays(born), at)


# -- gated rows ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatedTable:
    """A row that only current events change.

    `version` is the SQL row expression of a row's version over `{ref}`, compared with `>=`;
    `version_columns` are the stored columns it is made of and `order` turns their values
    into the same order in Python. `fresh` is SQL true of a stored row that no event has
    gated yet (every event is current for it)."""

    name: str
    key: Column
    columns: tuple[Column, ...]
    version: str
    version_columns: tuple[str, ...]
    order: Callable[..., Any]
    fresh: str | None = None
    # Columns the upsert sets to a constant (e.g. has_report = true).
    constants: tuple[tuple[str, str], ...] = ()
    # A column written only when the upsert creates the row, never on conflict (`Born`).
    born: Column | None = None
    sql: str = field(init=False, repr=False)
    select_versions: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sql", self._upsert_sql())
        stored = ", ".join(f"t.{name}" for name in self.version_columns)
        object.__setattr__(
            self,
            "select_versions",
            f"SELECT t.{self.key.name}, {self._fresh('t')}, {stored} "
            f"FROM {self.name} AS t WHERE t.{self.key.name} = ANY($1::{self.key.type}[]) "
            f"ORDER BY t.{self.key.name} FOR UPDATE",
        )

    def _upsert_sql(self) -> str:
        cols = [self.key, *self.columns, *([] if self.born is None else [self.born])]
        names = [c.name for c in cols] + [name for name, _ in self.constants]
        params = ", ".join(param(i, c.type) for i, c in enumerate(cols, 1))
        consts = "".join(f", {value}" for _, value in self.constants)
        sets = [f"{c.name} = COALESCE(EXCLUDED.{c.name}, t.{c.name})" for c in self.columns]
        sets += [f"{name} = {value}" for name, value in self.constants]
        # Redundant with the fold for rows of one partition; keeps the stored version from
        # ever moving backwards if one row's events arrive through two partitions anyway.
        gate = f"{self.version.format(ref='EXCLUDED')} >= {self.version.format(ref='t')}"
        if self.fresh is not None:
            gate = f"{self._fresh('t')} OR {gate}"
        return (
            f"INSERT INTO {self.name} AS t ({', '.join(names)})\n"
            f"SELECT *{consts} FROM unnest({params})\n"
            f"ON CONFLICT ({self.key.name}) DO UPDATE SET\n    "
            + ",\n    ".join([*sets, stamp(len(cols) + 1)])
            + f"\nWHERE {gate}"
        )

    def _fresh(self, ref: str) -> str:
        return "false" if self.fresh is None else self.fresh.format(ref=ref)

    async def stored_versions(self, conn: asyncpg.Connection, keys: Iterable[Any]) -> Stored:
        """The stored rows' versions (None: not gated yet), locked: a concurrent writer of the
        same row waits, and what the batch decides from them stays true until it commits."""
        rows = await conn.fetch(self.select_versions, sorted(set(keys)))
        return {r[0]: (None if r[1] else self.order(*r[2:])) for r in rows}


Stored = dict[Any, Any]


class GatedFold:
    """A batch's events for a gated table, applied one at a time in stream order from each
    row's stored version: the result is the row as a one-at-a-time application leaves it."""

    __slots__ = ("_rows", "_versions", "table")

    def __init__(self, table: GatedTable, stored: Stored) -> None:
        self.table = table
        self._versions: dict[Any, Any] = dict(stored)
        self._rows: dict[Any, dict[str, Any]] = {}

    def offer(self, key: Any, version: Any, values: dict[str, Any]) -> bool:
        """Apply one event if it is current (not older than the row); True if it was."""
        current = self._versions.get(key)
        if current is not None and version < current:
            return False
        self._versions[key] = version
        row = self._rows.setdefault(key, {})
        for name, value in values.items():
            if value is not None:
                row[name] = value
        return True

    def keys(self) -> list[Any]:
        """The rows some event changed, in key order (the lock order)."""
        return sorted(self._rows)

    def arrays(self, born: Born = None) -> list[list[Any]]:
        keys = self.keys()
        arrays = [wire(self.table.key.type, keys)]
        for c in self.table.columns:
            arrays.append(wire(c.type, [self._rows[k].get(c.name) for k in keys]))
        if self.table.born is not None:
            values = [None if born is None else born.get(k) for k in keys]
            arrays.append(wire(self.table.born.type, values))
        return arrays

    async def write(self, conn: asyncpg.Connection, at: dt.datetime, born: Born = None) -> None:
        if self._rows:
            await conn.execute(self.table.sql, *self.arrays(born), at)
