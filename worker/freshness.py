"""Freshness: how old the data a partition last stored is, in two clocks.

Per partition, when a batch commits, two gauges (seconds since the epoch, Prometheus'
convention for instants) are set from the last record of the partition's part:

- `worker_last_stored_record_timestamp_seconds`: the Kafka timestamp of the last record whose
  offset the batch committed (stored, dead-lettered or discarded alike: the offset passes it).
  The producer's or the broker's clock, depending on the topic's `message.timestamp.type`.
- `worker_last_stored_event_timestamp_seconds`: the event's own instant (a proctoring event's
  `createdAt`, an interview or applicant event's `date_modified`/`date_created`/
  `date_started`), read from the last decoded item of the part that has one.

Why the last item and not the largest instant of the part: it costs one attribute read per
partition and batch instead of one per record (the per-record path gains nothing), and a
producer's clock error (an event dated 9999-12-31) would pin a maximum for ever, where the last
item's instant is replaced by the next batch. Records of types that carry no instant (recording
and score events) are skipped, looking back at most LOOKBACK items; a part without any leaves
the gauge where it was.

Lag in seconds is derived in PromQL, not here: `time() - worker_last_stored_record_timestamp_
seconds` is the age of the newest data stored, which is the consumer's delay only while records
wait (`worker_consumer_lag > 0`); a partition with nothing new is idle, not late. The dashboard
and the alert rules (deploy/) join the two for that reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from schemas import interview as iv
from schemas import proctoring as pr
from worker.handlers.base import Item

# Items looked at, from the last backwards, for one with an instant.
LOOKBACK = 8


def _data_modified(event: Any) -> dt.datetime | None:
    return event.data.date_modified or event.data.date_created


def _none(event: Any) -> None:
    return None


def _classes(base: type) -> list[type]:
    out = []
    for cls in base.__subclasses__():
        out.append(cls)
        out.extend(_classes(cls))
    return out


# The instant of each event class: declared per family, checked complete below.
_INSTANT: dict[type, Callable[[Any], dt.datetime | None]] = {
    **{cls: (lambda e: e.createdAt) for cls in _classes(pr.ProctoringEvent)},
    iv.InterviewStarted: lambda e: e.data.date_started,
    iv.InterviewReportCreated: _data_modified,
    iv.InterviewRecordingCompleted: _none,
    iv.InterviewWebcamRecordingCompleted: _none,
    iv.ProctoringScoreCompleted: _none,
    **{cls: _data_modified for cls in _classes(iv.ApplicantEvent)},
}
_missing = {*iv.INTERVIEW_STRUCTS, *pr.PROCTORING_STRUCTS} - _INSTANT.keys()
assert not _missing, f"no event instant declared for {_missing}"


def event_instant(event: Any) -> dt.datetime | None:
    """The instant `event` says it happened (None: its type carries none)."""
    instant = _INSTANT.get(type(event))
    return None if instant is None else instant(event)


def last_event_time(items: Sequence[Item]) -> float | None:
    """Seconds since the epoch of the last of `items` that carries an instant."""
    for item in items[-1 : -LOOKBACK - 1 : -1]:
        instant = event_instant(item.event)
        if instant is not None:
            return instant.timestamp()
    return None


def record_time(record: Any) -> float | None:
    """A Kafka record's timestamp in seconds (None: the record has none)."""
    ms = record.timestamp
    return ms / 1000 if ms is not None and ms >= 0 else None
