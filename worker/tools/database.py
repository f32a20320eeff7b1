"""The operator commands' own database connection: one, with a bounded connect, and an error
that names the database without its password."""

from __future__ import annotations

import asyncpg

from worker.config import Settings, redact_url
from worker.retry import describe

CONNECT_TIMEOUT_S = 15.0


class DatabaseUnavailable(Exception):
    pass


async def connect(settings: Settings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"database {redact_url(settings.database_url)}: {describe(exc)}"
        ) from None
