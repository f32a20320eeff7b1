"""Which failures are the record's fault, which are the world's, and how long to wait.

Only a record the database rejects for its content (class 22 data exceptions, class 23
constraint violations, class 54 program limits such as an oversized index row) can be
dead-lettered. Everything else, a lost connection, a deadlock, a restart, a bug of ours such as
a missing table, is retried: dead-lettering valid records because the world is broken would
turn an outage into data loss.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import asyncpg
from aiokafka.errors import KafkaError

# Errors that say "the world is broken, try again", as opposed to a bug in this program.
TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A connection whose query was cancelled mid-flight (a client timeout during an outage)
    # refuses the next command with this; the pool replaces it.
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
    KafkaError,
)

RECORD_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
)


# Failures a smaller batch avoids: a statement cut off by statement_timeout or by the client's
# command timeout, memory the server ran out of for this much data. The batch is split and its
# halves committed in turn. A message over PostgreSQL's 1 GB protocol limit is one too, but
# the server answers it by closing the connection (`is_dropped_connection`), which only the
# database still answering tells from an outage.
#
# Of these, only the data's own size (OVERSIZED, the message limit) condemns a single record:
# alone and failing again, it is dead-lettered. A single record that runs out of time is
# retried, since a lock held elsewhere looks the same as a slow record.
OVERSIZED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ProtocolViolationError,
    asyncpg.exceptions.OutOfMemoryError,
)
SIZE_ERRORS: tuple[type[BaseException], ...] = (
    *OVERSIZED,
    asyncpg.exceptions.QueryCanceledError,
    TimeoutError,
)


def is_dropped_connection(exc: BaseException) -> bool:
    """The connection closed in the middle of a statement without a word from the server.

    That is how PostgreSQL refuses a protocol message over its 1 GB limit: it logs "invalid
    message length" and closes the connection, and asyncpg raises ConnectionDoesNotExistError
    (which `Transaction.__aexit__` then buries under an InterfaceError, hence the walk down
    the chain). A server that ends a session for a reason (an administrator's terminate, a
    shutdown) says so first: asyncpg makes that message the error's cause. Whether the
    database still answers, which tells this from an outage, is the caller's question."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, asyncpg.exceptions.ConnectionDoesNotExistError):
            return not isinstance(current.__cause__, asyncpg.PostgresError)
        current = current.__cause__ or current.__context__
    return False


def is_record_error(exc: BaseException) -> bool:
    """The database refused this data; retrying the same data can never succeed."""
    return isinstance(exc, RECORD_ERRORS)


def is_oversized(exc: BaseException) -> bool:
    """The batch's data was too large for the server (not too slow)."""
    return isinstance(exc, OVERSIZED)


def is_size_error(exc: BaseException) -> bool:
    """The batch failed for its size or duration: a smaller one may succeed."""
    return isinstance(exc, SIZE_ERRORS)


def describe(exc: BaseException) -> str:
    """A one-line description without connection details (a DSN may carry a password)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or "?"
        detail = getattr(exc, "detail", None)
        text = f"{type(exc).__name__} [{sqlstate}]: {exc}"
        return f"{text} ({detail})" if detail else text
    text = str(exc)
    name = type(exc).__name__
    # Kafka errors already start with their class name.
    return text if text.startswith(name) else f"{name}: {text}"


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's recommendation)."""

    initial_s: float = 0.2
    max_s: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
