"""Event type to handler: a lookup on the struct class the decoder produced, never an if-chain.

Several event types may share one handler instance when they write the same rows; grouping a
batch by handler then turns, say, all 13 proctoring types into one statement.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import asyncpg

from schemas import interview as iv
from schemas import proctoring as pr
from schemas.common import tag_of
from worker.handlers.applicants import ApplicantHandler
from worker.handlers.base import Handler, Item, RowHandler
from worker.handlers.interviews import InterviewStartedHandler
from worker.handlers.merge import Born
from worker.handlers.proctoring import ProctoringHandler
from worker.handlers.registers import Registers
from worker.handlers.reports import report_handler


def _build_routes() -> dict[type, Handler]:
    proctoring = ProctoringHandler()
    applicants = ApplicantHandler()
    routes: dict[type, Handler] = {cls: proctoring for cls in pr.PROCTORING_STRUCTS}
    routes.update(
        {
            iv.InterviewStarted: InterviewStartedHandler(),
            iv.InterviewReportCreated: report_handler,
            iv.InterviewRecordingCompleted: report_handler,
            iv.InterviewWebcamRecordingCompleted: report_handler,
            iv.ProctoringScoreCompleted: report_handler,
            iv.ApplicantCreated: applicants,
            iv.ApplicantInvited: applicants,
            iv.ApplicantUpdated: applicants,
            iv.ApplicantCompleted: applicants,
        }
    )
    return routes


ROUTES: Mapping[type, Handler] = _build_routes()

# Every struct either decoder can produce has a handler; a gap here is a programming error
# that must stop the process at import, not dead-letter records at run time.
_missing = {tag_of(c) for c in (*pr.PROCTORING_STRUCTS, *iv.INTERVIEW_STRUCTS)} - {
    tag_of(c) for c in ROUTES
}
if _missing:
    raise RuntimeError(f"event types without a handler: {sorted(_missing)}")


# The order handlers write in, the same in every transaction whatever the batch holds: two
# lanes then lock the rows of different tables in one table order (and within a table in key
# order), so neither can hold what the other waits for.
_WRITE_ORDER: dict[Handler, int] = {h: n for n, h in enumerate(dict.fromkeys(ROUTES.values()))}


def group_by_handler(items: Iterable[Item]) -> dict[Handler, list[Item]]:
    """Split a batch by handler, keeping each group's records in their stream order; the
    groups in `_WRITE_ORDER`."""
    groups: dict[Handler, list[Item]] = {}
    for item in items:
        handler = ROUTES[type(item.event)]
        group = groups.get(handler)
        if group is None:
            groups[handler] = [item]
        else:
            group.append(item)
    if len(groups) == 1:
        return groups
    return {h: groups[h] for h in sorted(groups, key=_WRITE_ORDER.__getitem__)}


Prepared = list[tuple[Handler, Any]]


class PrepareError(Exception):
    """A handler could not turn an event into rows: the record's content is at fault (a gap
    in validation), not the database. The worker isolates and dead-letters such a record
    rather than stopping on it at every restart."""


def _prepare(handler: Handler, items: Sequence[Item]) -> Any:
    try:
        return handler.prepare(items)
    except Exception as exc:
        raise PrepareError(f"{handler.name}: {type(exc).__name__}: {exc}") from exc


def prepare_batch(items: Iterable[Item]) -> Prepared:
    """The CPU part of writing a batch, done while the previous batch is still committing."""
    return [
        (handler, _prepare(handler, group)) for handler, group in group_by_handler(items).items()
    ]


async def prepare_batch_cooperatively(items: Iterable[Item], slice_size: int = 500) -> Prepared:
    """`prepare_batch` in slices, yielding to the event loop between them: a commit waiting
    for its next round trip must not sit behind tens of milliseconds of encoding."""
    prepared: Prepared = []
    for handler, group in group_by_handler(items).items():
        parts = []
        for start in range(0, len(group), slice_size):
            parts.append(_prepare(handler, group[start : start + slice_size]))
            await asyncio.sleep(0)
        prepared.append((handler, parts[0] if len(parts) == 1 else handler.combine(parts)))
    return prepared


def row_handler(structs: Iterable[type]) -> RowHandler | None:
    """The handler that takes every one of `structs` (a decoder's family), if there is one
    and it builds rows while the worker decodes (worker/handlers/base.py RowHandler)."""
    handlers = {ROUTES[cls] for cls in structs}
    if len(handlers) != 1:
        return None
    (handler,) = handlers
    return handler if hasattr(handler, "row") and hasattr(handler, "prepare_rows") else None


class Decoded(Protocol):
    """A part of a batch as worker/batch.py keeps it: its items and, when its decoder's family
    has a RowHandler, that handler and the rows built while decoding."""

    items: list[Item]
    rows: list[Any]
    row_handler: RowHandler | None


async def prepare_parts(parts: Iterable[Decoded], slice_size: int = 500) -> Prepared:
    """`prepare_batch_cooperatively` over the items of `parts`; the parts whose rows were all
    built while decoding go straight to their handler's `prepare_rows` (one pass per batch),
    the others (their rows incomplete, or no RowHandler) the way of `prepare_batch`."""
    built: dict[Handler, tuple[list[Any], list[Item]]] = {}
    loose: list[Item] = []
    for part in parts:
        handler = part.row_handler
        if handler is not None and len(part.rows) == len(part.items):
            rows, items = built.setdefault(handler, ([], []))
            rows.extend(part.rows)
            items.extend(part.items)
        else:
            loose.extend(part.items)
    prepared = dict(await prepare_batch_cooperatively(loose, slice_size))
    for handler, (rows, items) in built.items():
        row_handler: RowHandler = handler  # type: ignore[assignment]
        try:
            done = row_handler.prepare_rows(rows, items)
        except Exception as exc:
            raise PrepareError(f"{handler.name}: {type(exc).__name__}: {exc}") from exc
        mine = prepared.get(handler)
        prepared[handler] = done if mine is None else handler.combine([mine, done])
        await asyncio.sleep(0)
    return [(h, prepared[h]) for h in sorted(prepared, key=_WRITE_ORDER.__getitem__)]


async def write_batch(
    conn: asyncpg.Connection,
    prepared: Prepared,
    at: dt.datetime | None = None,
    guarded: bool = True,
    ages: Mapping[str, Born] | None = None,
) -> None:
    """Write a prepared batch through its handlers, in the caller's transaction; then the
    registers they all contributed to, once. `at`: the transaction's time (now if None);
    `guarded`: the caller wrote a savepoint to roll a failure back to (Registers.guarded);
    `ages`: what the rows created are born with (Registers.ages)."""
    registers = Registers(at, guarded, ages)
    for handler, payload in prepared:
        await handler.write(conn, payload, registers)
    await registers.write(conn)


async def apply_batch(
    conn: asyncpg.Connection,
    items: Sequence[Item],
    at: dt.datetime | None = None,
    ages: Mapping[str, Born] | None = None,
) -> None:
    """Write a batch of decoded events through their handlers, in the caller's transaction."""
    await write_batch(conn, prepare_batch(items), at, True, ages)
