"""Fixtures of the chaos campaigns; the machinery lives in tests/support/chaos.py.

tests/conftest.py (the servers, `database_url`, `topic_factory`) applies here too. pytest puts
tests/ on sys.path (it has no __init__.py) when it imports its conftest, which makes
`support` importable; the insertion below only makes that explicit for a run started elsewhere.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

from support import chaos, infra  # noqa: E402


@pytest.fixture
async def fresh_database(pg_stack: infra.PgStack) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Creates extra fresh databases (references); drops them all at teardown."""
    created: list[str] = []

    async def create() -> str:
        pg_stack.ensure_running()
        url = await infra.create_database(pg_stack.admin_url)
        created.append(url)
        return url

    yield create
    pg_stack.ensure_running()
    for url in created:
        await infra.drop_database(pg_stack.admin_url, url)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not chaos.FIGURES:
        return
    terminalreporter.section(f"chaos figures (CHAOS_SCALE={chaos.SCALE})")
    for campaign, figures in chaos.FIGURES.items():
        terminalreporter.write_line(f"{campaign}:")
        for name, value in figures.items():
            terminalreporter.write_line(f"    {name}: {value}")
