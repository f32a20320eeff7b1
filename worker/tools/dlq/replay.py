"""Planning a replay: which dead letters go back to their topics, and which the guards hold
back; then, with `execute`, publishing them (worker/tools/dlq/publish.py).

A dead letter whose replay fails again comes back to the dead-letter topic carrying
`dlq.replay.count` and `dlq.replay.of` (the worker keeps a record's headers when it
dead-letters it), and two guards stop a loop:

- the loop guard: a dead letter whose `dlq.replay.count` is at least `max_replays` (default 1)
  is not replayed;
- the already-replayed guard: a dead letter that a later dead letter names in `dlq.replay.of`
  was replayed before and failed again; replaying it once more would restart the chain with a
  fresh count, so it is skipped (`include_replayed` turns this guard off).

A dead letter without a usable `dlq.original.topic` (absent, or the dead-letter topic itself)
is never replayed. A dead letter without a signed `dlq.origin` (written by a release before the
signed origins) is held back unless `allow_unsigned`: its replay would carry no origin the
erasure ledger believes, so an erased person's old record would come back as new
(docs/contract.md §7). Without `execute` nothing is sent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from aiokafka.structs import RecordMetadata

from worker.config import Settings
from worker.dlq import Header
from worker.tools.dlq.publish import publish_replay
from worker.tools.dlq.read import (
    DEFAULT_IDLE_S,
    DEFAULT_TIMEOUT_S,
    DeadLetterFilter,
    DeadLetterView,
    scan_dead_letters,
)


@dataclass(slots=True)
class ReplayPlan:
    read: int
    selected: list[DeadLetterView]  # matched the filters (and the limit)
    to_replay: list[DeadLetterView]
    skipped_loop_guard: list[DeadLetterView]
    skipped_already_replayed: list[DeadLetterView]
    skipped_not_dead_letter: list[DeadLetterView]  # no dlq.original.topic, or points at the DLQ
    max_replays: int
    complete: bool
    skipped_unsigned: list[DeadLetterView] = field(default_factory=list)  # no dlq.origin

    @property
    def skipped(self) -> int:
        return (
            len(self.skipped_loop_guard)
            + len(self.skipped_already_replayed)
            + len(self.skipped_not_dead_letter)
            + len(self.skipped_unsigned)
        )


@dataclass(slots=True)
class ReplayResult:
    plan: ReplayPlan
    executed: bool
    replayed: list[tuple[DeadLetterView, RecordMetadata]] = field(default_factory=list)
    failed: list[tuple[DeadLetterView, str]] = field(default_factory=list)

    @property
    def by_topic(self) -> dict[str, int]:
        views = [v for v, _ in self.replayed] if self.executed else self.plan.to_replay
        return dict(sorted(Counter(v.original_topic or "?" for v in views).items()))


async def plan_replay(
    settings: Settings,
    filters: DeadLetterFilter,
    *,
    limit: int | None = None,
    max_replays: int = 1,
    include_replayed: bool = False,
    allow_unsigned: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    idle_s: float = DEFAULT_IDLE_S,
) -> ReplayPlan:
    """Which dead letters a replay would send, and which the guards hold back."""
    scan = await scan_dead_letters(settings, timeout_s=timeout_s, idle_s=idle_s)
    replayed_before = {v.replay_of for v in scan.views if v.replay_of}
    selected = [v for v in scan.views if filters.matches(v)]
    if limit is not None:
        selected = selected[:limit]
    plan = ReplayPlan(
        read=scan.read,
        selected=selected,
        to_replay=[],
        skipped_loop_guard=[],
        skipped_already_replayed=[],
        skipped_not_dead_letter=[],
        max_replays=max_replays,
        complete=scan.complete,
    )
    for view in selected:
        if not view.original_topic or view.original_topic == settings.dlq_topic:
            plan.skipped_not_dead_letter.append(view)
        elif view.replay_count >= max_replays:
            plan.skipped_loop_guard.append(view)
        elif not include_replayed and view.ref in replayed_before:
            plan.skipped_already_replayed.append(view)
        elif not allow_unsigned and Header.ORIGIN not in view.headers:
            plan.skipped_unsigned.append(view)
        else:
            plan.to_replay.append(view)
    return plan


async def replay_dead_letters(
    settings: Settings,
    filters: DeadLetterFilter = DeadLetterFilter(),  # noqa: B008 (frozen: shared safely)
    *,
    limit: int | None = None,
    max_replays: int = 1,
    include_replayed: bool = False,
    allow_unsigned: bool = False,
    execute: bool = False,
    progress: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    idle_s: float = DEFAULT_IDLE_S,
) -> ReplayResult:
    """Plan a replay of the dead letters `filters` accepts and, with `execute`, publish it.
    Without `execute` nothing is sent."""
    plan = await plan_replay(
        settings,
        filters,
        limit=limit,
        max_replays=max_replays,
        include_replayed=include_replayed,
        allow_unsigned=allow_unsigned,
        timeout_s=timeout_s,
        idle_s=idle_s,
    )
    result = ReplayResult(plan=plan, executed=execute)
    if execute:
        result.replayed, result.failed = await publish_replay(
            settings, plan.to_replay, progress=progress
        )
    return result
