"""structlog set-up: JSON lines for machines by default, colourless console lines for people.

The libraries' own stdlib logging (aiokafka, asyncpg) goes through the same renderer, so an
operator greps one format. aiokafka logs every failed reconnect attempt, many a second while a
broker is down; a rate limit lets each distinct message through once per window.

A partition is named one way everywhere an operator reads it (log fields, `/readyz`, the tools):
`topic[partition]`, by `tp_name` (`tp_names` for several).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from aiokafka import TopicPartition


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka narrates every join and assignment at INFO; the worker logs those itself.
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))
    # On the handler, not the logger: logger filters do not apply to child loggers.
    handler.addFilter(RateLimit(prefix="aiokafka", window_s=30.0))


class RateLimit(logging.Filter):
    """Pass each distinct message template of loggers under `prefix` once per window."""

    def __init__(self, prefix: str, window_s: float) -> None:
        super().__init__()
        self._prefix = prefix
        self._window = window_s
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._window:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


def tp_name(tp: TopicPartition) -> str:
    """`topic[partition]`."""
    return f"{tp.topic}[{tp.partition}]"


def tp_names(tps: Iterable[TopicPartition]) -> list[str]:
    """The names of `tps`, in partition order."""
    return [tp_name(tp) for tp in sorted(tps)]
