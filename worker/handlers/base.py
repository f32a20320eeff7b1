"""What every handler shares: the item it receives and the interface it implements.

A handler receives all of a batch's events of its types, in partition order, and writes them
with a few set-based statements inside a transaction the caller owns. `INSERT ... ON CONFLICT
DO UPDATE` may touch a row only once per statement, so a batch is first folded to one row per
key, with the same rule the SQL applies between batches (worker/handlers/merge.py); rows are
then sorted by key so that concurrent workers lock shared rows in one order. What several
handlers write (candidates, jobs, interviews) goes into the transaction's `Registers`, written
once after every handler (worker/handlers/registers.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import asyncpg
import msgspec

if TYPE_CHECKING:
    from worker.handlers.registers import Registers


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

    async def write(
        self, conn: asyncpg.Connection, prepared: Any, registers: Registers
    ) -> None: ...


class RowHandler(Handler, Protocol):
    """A handler whose preparation starts from one row per event, which the worker can build
    while it decodes the records (one pass over them instead of two)."""

    def row(self, event: Any, topic: str, partition: int, offset: int) -> Any: ...

    def prepare_rows(self, rows: list[Any], items: Sequence[Item]) -> Any:
        """`prepare(items)` given `rows`, the `row` of each of `items` in order."""
        ...


class BatchHandler:
    """A handler whose preparation is the items themselves."""

    name: str

    def prepare(self, items: Sequence[Item]) -> Any:
        return items

    def combine(self, parts: Sequence[Any]) -> Any:
        return [item for part in parts for item in part]

    async def write(self, conn: asyncpg.Connection, prepared: Any, registers: Registers) -> None:
        raise NotImplementedError


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Transpose rows into the per-column arrays that `unnest($1::t[], ...)` takes."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


def to_json(value: msgspec.Struct | list[Any]) -> str:
    return msgspec.json.encode(value).decode()
