"""What every handler shares: the item it receives and the in-batch folding helpers.

A handler receives all of a batch's events of its types, in partition order, and writes them
with a few set-based statements inside a transaction the caller owns. `INSERT ... ON CONFLICT
DO UPDATE` may touch a row only once per statement, so a batch is first folded to one row per
key, with the same rule the SQL applies between batches; rows are then sorted by key so that
concurrent workers lock shared rows (a job, a candidate) in one order and do not deadlock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import asyncpg
import msgspec


class Item(NamedTuple):
    """A decoded event and the Kafka coordinates it came from."""

    event: Any
    topic: str
    partition: int
    offset: int


class Handler(Protocol):
    """`prepare` is pure CPU work (the worker runs it while the previous batch commits);
    `write` sends the prepared batch inside the caller's transaction."""

    name: str

    def prepare(self, items: Sequence[Item]) -> Any: ...

    def combine(self, parts: Sequence[Any]) -> Any:
        """One prepared batch from the preparations of consecutive slices of it."""
        ...

    async def write(self, conn: asyncpg.Connection, prepared: Any) -> None: ...

    async def apply(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None: ...


class BatchHandler:
    """A handler whose preparation is the items themselves."""

    name: str

    def prepare(self, items: Sequence[Item]) -> Any:
        return items

    def combine(self, parts: Sequence[Any]) -> Any:
        return [item for part in parts for item in part]

    async def write(self, conn: asyncpg.Connection, prepared: Any) -> None:
        raise NotImplementedError

    async def apply(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        await self.write(conn, self.prepare(items))


def last_non_null(
    rows: Iterable[tuple[Hashable, list[Any]]],
    keep_first: frozenset[int] = frozenset(),
    keep_least: frozenset[int] = frozenset(),
) -> list[list[Any]]:
    """Fold rows by key: for each column, the last non-null value wins (SQL: COALESCE(new, old)),
    except columns in `keep_first`, where the first non-null wins (SQL: COALESCE(old, new)),
    and columns in `keep_least`, where the smallest wins (SQL: LEAST(old, new)).

    Each row is `(key, values)`; the key's columns are part of `values`. Output is sorted by key.
    """
    merged: dict[Hashable, list[Any]] = {}
    for key, values in rows:
        current = merged.get(key)
        if current is None:
            merged[key] = list(values)
        else:
            for i, value in enumerate(values):
                if value is None:
                    continue
                if current[i] is None:
                    current[i] = value
                elif i in keep_least:
                    current[i] = min(current[i], value)
                elif i not in keep_first:
                    current[i] = value
    return [merged[k] for k in sorted(merged, key=_sort_key)]


def newest(rows: Iterable[tuple[Hashable, Any]], rank: Callable[[Any], Any]) -> list[Any]:
    """Fold rows by key keeping the highest `rank`; on a tie the later row wins (SQL: `>=`)."""
    chosen: dict[Hashable, Any] = {}
    for key, row in rows:
        current = chosen.get(key)
        if current is None or rank(row) >= rank(current):
            chosen[key] = row
    return [chosen[k] for k in sorted(chosen, key=_sort_key)]


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Transpose rows into the per-column arrays that `unnest($1::t[], ...)` takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


def _sort_key(key: Hashable) -> Any:
    return key


def to_json(value: msgspec.Struct | list[Any]) -> str:
    return msgspec.json.encode(value).decode()
