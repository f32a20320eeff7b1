"""The retention horizon on the path of a record (docs/contract.md §7): which records are older
than it, and the age each interview row keeps for retention to delete it by. The partitions,
the drops and the deletes are worker/retention.py's.

A record's *instant* is its own time (`worker.freshness.event_instant`: a proctoring event's
`createdAt`, `interview.started`'s `date_started`, a report's or an applicant's `date_modified`
else `date_created`), or its Kafka timestamp where it has none (the recording, webcam-recording
and score events) or where its own time is *absurd*: later than the Kafka timestamp by more than
`CLOCK_AHEAD`. An event is not produced before it happens, so a clock that far ahead is wrong,
and it must not make a record outlive the horizon. A time earlier than the Kafka timestamp is
believed however far (a late delivery, a backfill): the tables place and drop rows by it, so a
record dated into a range retention dropped has nowhere to go and could only bring it back.
Hence the instant is never later than the own time, and a record whose own time is past the
horizon is past it whatever its Kafka timestamp says.

Ingest (`Horizon.sift`, before the commit transaction): a record whose instant lies before its
family's cutoff, `max(now - days, expired_before)`, is *expired*: it stores nothing, is counted
in `worker_records_expired_total{topic}`, and its offset commits. Proctoring and interview
records have a `Span` each (WORKER_PROCTORING_RETENTION_DAYS, WORKER_INTERVIEW_RETENTION_DAYS;
the two `expired_before` values of `retention_state`, which only grow).

Ages (`row_ages`, in the commit transaction): every `interview_reports`, `interviews` and
`applicants` row that a stored record was applied to, stale or not, gets
`last_event_at = GREATEST(last_event_at, age_of(instant))`: the instant rounded up to the end of
its day, `NEVER` for a record without an instant. A row the handlers create is born with its age
(their upsert's born column); `raise_ages`, after the handlers, writes only rows stored before
whose age moves to a later day (a second write of a row in its transaction costs ingest: a
quarter of the mixed workload's rate when every new row was written twice). The handlers lock
every row of the batch before `raise_ages` runs, so it waits for no one.

Why a replay after retention deleted rows brings none back: retention deletes a row only when
its `last_event_at` is before its bound, so every record ever applied to it has an instant
before the bound and is expired from then on (the bound is at most `now - days - GRACE`, and
`interview_expired_before` keeps it once passed); and a record not expired finds each of its
rows still there, and is applied again as in any replay (docs/contract.md §5; §7 says what
that can change in a kept row).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from schemas import interview as iv
from schemas.proctoring import ProctoringEvent
from worker.freshness import event_instant
from worker.handlers.base import Item
from worker.handlers.merge import ROW_AGE, param, wire

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
# The age of a row that a record without any instant was applied to: it is never deleted.
NEVER = dt.datetime.max.replace(tzinfo=UTC)
# How far an event's own time may run ahead of its Kafka timestamp before it is not believed:
# the tolerance recent brokers give a producer's clock (`message.timestamp.after.max.ms`).
CLOCK_AHEAD = dt.timedelta(hours=1)

# The Kafka timestamp of an item's record, in milliseconds (None or negative: it has none).
TimestampOf = Callable[[Item], int | None]


def kafka_instant(timestamp: int | None) -> dt.datetime | None:
    if timestamp is None or timestamp < 0:
        return None
    return EPOCH + dt.timedelta(milliseconds=timestamp)


def instant(event: Any, timestamp: int | None) -> dt.datetime | None:
    """The instant retention ages a record by (None: it has none, and never expires)."""
    kafka = kafka_instant(timestamp)
    own = event_instant(event)
    if own is None or (kafka is not None and own > kafka + CLOCK_AHEAD):
        return kafka
    return own


def age_of(at: dt.datetime | None) -> dt.datetime:
    """The age a record gives the rows it is applied to: its instant rounded up to the end of
    its UTC day, so that the rows of one day's records are written once for their age, not
    once per record; `NEVER` for a record without an instant (what never expires is not
    deleted from under it either)."""
    if at is None or at.date() >= NEVER.date():
        return NEVER
    return dt.datetime.combine(at.date() + dt.timedelta(days=1), dt.time(), UTC)


@dataclass(slots=True)
class Span:
    """One family's horizon: `days` (None: no age rule) and what retention already removed."""

    days: int | None = None
    expired_before: dt.datetime | None = None

    def cutoff(self, now: dt.datetime) -> dt.datetime | None:
        """Instants before this are expired; None: nothing is."""
        bound = self.expired_before
        if self.days is not None:
            by_age = now - dt.timedelta(days=self.days)
            bound = by_age if bound is None else max(bound, by_age)
        return bound


class Horizon:
    """Which records are past the horizon; the spans' `expired_before` are kept current by
    worker/retention.py's `Maintenance`."""

    __slots__ = ("interview", "proctoring")

    def __init__(self, proctoring: Span | None = None, interview: Span | None = None) -> None:
        self.proctoring = proctoring or Span()
        self.interview = interview or Span()

    def sift(
        self,
        items: Sequence[Any],
        timestamp_of: TimestampOf | None = None,
        oldest: dt.datetime | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[list[Any], list[Any]]:
        """`items` split into (kept, expired), each in order. `timestamp_of` gives an item's
        Kafka timestamp (None: not known for any); `oldest`, if given, is the earliest of
        them, so that items it cannot age are not looked up."""
        now = now or dt.datetime.now(UTC)
        cuts = (self.proctoring.cutoff(now), self.interview.cutoff(now))
        if cuts == (None, None):
            return items if isinstance(items, list) else list(items), []
        # Own times up to this are believed whatever the batch's Kafka timestamps: the common
        # case, decided without looking a record up (see _older).
        believed = [_believed(cut, timestamp_of, oldest) for cut in cuts]
        kept: list[Any] = []
        gone: list[Any] = []
        for item in items:
            event = item.event
            if isinstance(event, ProctoringEvent):
                cut, own, sure = cuts[0], event.createdAt, believed[0]
            else:
                cut, own, sure = cuts[1], event_instant(event), believed[1]
            if cut is None or (own is not None and cut <= own <= sure):
                kept.append(item)
            elif (own is not None and own < cut) or _older(item, cut, timestamp_of):
                gone.append(item)
            else:
                kept.append(item)
        return kept, gone

    def sift_part(self, part: Any, now: dt.datetime | None = None) -> tuple[list[Any], list[Any]]:
        """`sift` of a batch's part (worker/batch.py), with its records' Kafka timestamps."""
        known = [t for t in (r.timestamp for r in part.records) if t is not None and t >= 0]
        if not known:
            return self.sift(part.items, None, None, now)

        def timestamp_of(item: Item) -> int | None:
            return part.record_at(item.offset).timestamp

        return self.sift(part.items, timestamp_of, kafka_instant(min(known)), now)


def _believed(
    cut: dt.datetime | None, timestamp_of: TimestampOf | None, oldest: dt.datetime | None
) -> dt.datetime:
    """The latest own time that no Kafka timestamp of the batch can make older than `cut`:
    any, without timestamps or when none of them is before `cut`; else up to the oldest
    timestamp plus `CLOCK_AHEAD` (a later one could be absurd); unknown timestamps: none."""
    if cut is None or timestamp_of is None or (oldest is not None and oldest >= cut):
        return NEVER
    return EPOCH if oldest is None else oldest + CLOCK_AHEAD


def _older(item: Item, cut: dt.datetime, timestamp_of: TimestampOf | None) -> bool:
    """Whether `item`'s instant, by its record's Kafka timestamp, lies before `cut`."""
    if timestamp_of is None:
        return False
    at = instant(item.event, timestamp_of(item))
    return at is not None and at < cut


# -- the ages of interview rows -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgedTable:
    """A table whose rows interview retention deletes by `last_event_at`."""

    name: str
    key: str

    @property
    def age_sql(self) -> str:
        return f"""
UPDATE {self.name} AS t SET {ROW_AGE.name} = v.at
FROM unnest($1::text[], {param(2, "timestamptz")}) AS v(key, at)
WHERE t.{self.key} = ANY($1::text[]) AND t.{self.key} = v.key
  AND (t.{ROW_AGE.name} IS NULL OR t.{ROW_AGE.name} < v.at)
"""


REPORTS = AgedTable("interview_reports", "report_id")
INTERVIEWS = AgedTable("interviews", "interview_id")
APPLICANTS = AgedTable("applicants", "job_application_id")
# proctoring_violations go with their report (ON DELETE CASCADE).
AGED_TABLES: tuple[AgedTable, ...] = (REPORTS, INTERVIEWS, APPLICANTS)

Rows = Callable[[Any], tuple[tuple[AgedTable, str], ...]]


def _report(event: Any) -> tuple[tuple[AgedTable, str], ...]:
    return ((REPORTS, event.data.report_id),)


def _applicant(event: Any) -> tuple[tuple[AgedTable, str], ...]:
    return ((APPLICANTS, event.data.micro1_job_application_id),)


# The aged rows each interview event is applied to, stale or not (the handlers' own rules:
# a report event offers its interview's register whatever its version).
ROWS: dict[type, Rows] = {
    iv.InterviewStarted: lambda e: ((INTERVIEWS, e.data.interview_id),),
    iv.InterviewReportCreated: lambda e: (
        (REPORTS, e.data.report_id),
        (INTERVIEWS, e.data.interview_id),
    ),
    iv.InterviewRecordingCompleted: _report,
    iv.InterviewWebcamRecordingCompleted: _report,
    iv.ProctoringScoreCompleted: _report,
    **{cls: _applicant for cls in iv.INTERVIEW_STRUCTS if issubclass(cls, iv.ApplicantEvent)},
}
_missing = set(iv.INTERVIEW_STRUCTS) - ROWS.keys()
assert not _missing, f"no aged rows declared for {_missing}"


# By table name, the age of each row a batch's stored records were applied to.
Ages = dict[str, dict[str, dt.datetime]]


def row_ages(items: Sequence[Item], timestamp_of: TimestampOf | None) -> Ages:
    """The age of each interview row the `items` are applied to, stale or not: the latest of
    their records' ages."""
    latest: Ages = {}
    rows_of = ROWS.get
    for item in items:
        rows = rows_of(type(item.event))
        if rows is None:
            continue
        at = instant(item.event, None if timestamp_of is None else timestamp_of(item))
        at = age_of(at)
        for table, key in rows(item.event):
            seen = latest.setdefault(table.name, {})
            if key not in seen or seen[key] < at:
                seen[key] = at
    return latest


async def raise_ages(conn: asyncpg.Connection, ages: Ages) -> None:
    """Raise `last_event_at` of the rows in `ages` to their age (in the caller's transaction,
    after the handlers wrote them). A row the handlers created was born with its age
    (`ROW_AGE`, worker/handlers/merge.py), so only rows stored before are written here, and
    only once their age moves to a later day."""
    for table in AGED_TABLES:
        latest = ages.get(table.name)
        if latest:
            keys = sorted(latest)
            ats = wire("timestamptz", [latest[k] for k in keys])
            await conn.execute(table.age_sql, keys, ats)
