"""The ingest side of retention (worker/horizon.py, docs/contract.md §7), without a database:
which records are older than the horizon, by which instant, against the reference model.

- Fixed cases: a current system check with a 1970 clock is kept (defect 8 of issue 25); a
  `createdAt` more than an hour ahead of an old Kafka timestamp is aged by the Kafka timestamp,
  one earlier than it by its own; the part events of a report by their Kafka timestamp; what
  was removed stays expired when a horizon is lengthened or removed.
- Property: for any own times, Kafka timestamps (absent, negative, any instant), horizons and
  removed bounds, `Horizon.sift` expires exactly the records the model expires, with or
  without the batch's oldest timestamp as a shortcut.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support.reference_model import Model
from support.storage import INTERVIEW_TOPIC, PROCTORING_TOPIC, decode_ok

from worker.decode import interview_decoder, proctoring_decoder
from worker.handlers.base import Item
from worker.horizon import Horizon, Span, instant, kafka_instant

UTC = dt.UTC
NOW = dt.datetime(2026, 12, 3, 12, tzinfo=UTC)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


def ms(at: dt.datetime) -> int:
    return (at - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)


def proctoring(created: dt.datetime, check: dt.datetime | None = None) -> Any:
    body: dict[str, Any] = {
        "examId": "e",
        "candidateId": "c",
        "type": "TAB_NOT_FOCUS" if check is None else "SYSTEM_CHECK_COMPLETED",
        "createdAt": created.isoformat(),
    }
    if check is not None:
        body["systemCheck"] = {"success": True, "timestamp": check.isoformat(), "data": []}
    return decode_ok(proctoring_decoder, json.dumps(body).encode())


def interview(event: str, **data: Any) -> Any:
    ids = {"report_id": "r", "candidate_id": "c", "interview_id": "i"}
    if event.startswith("applicant."):
        ids = {"micro1_job_application_id": "a", "candidate_id": "c"}
    body = {"event": event, "data": {**ids, **data}}
    return decode_ok(interview_decoder, json.dumps(body).encode())


def sifted(horizon: Horizon, records: list[tuple[Any, int | None]]) -> list[int]:
    """The offsets `horizon` expires among `records` (event, Kafka timestamp)."""
    items = [
        Item(e, PROCTORING_TOPIC if hasattr(e, "createdAt") else INTERVIEW_TOPIC, 0, n)
        for n, (e, _) in enumerate(records)
    ]
    _, gone = horizon.sift(items, lambda i: records[i.offset][1], None, NOW)
    return [i.offset for i in gone]


def test_the_instant_retention_ages_a_record_by() -> None:
    old, new, epoch = NOW - 200 * DAY, NOW - DAY, dt.datetime(1970, 1, 1, tzinfo=UTC)
    h = Horizon(Span(90), Span(90))
    records = [
        (proctoring(new), ms(new)),  # 0: current
        (proctoring(old), ms(new)),  # 1: old by its own account (a late delivery)
        (proctoring(new, check=epoch), ms(new)),  # 2: a 1970 browser clock on the check only
        (proctoring(new), ms(old)),  # 3: createdAt 199 days ahead of the log: absurd, old
        (proctoring(old + HOUR), ms(old)),  # 4: an hour ahead: believed, and old
        (proctoring(new), None),  # 5: no Kafka timestamp: createdAt decides
        (interview("interview_recording.completed"), ms(old)),  # 6: no own time: the log's
        (interview("interview_recording.completed"), ms(new)),  # 7
        (interview("proctoring_score.completed"), -1),  # 8: no time at all: never expired
        (interview("applicant.created", date_created=new.isoformat()), ms(old)),  # 9: absurd
        (interview("applicant.created", date_modified=old.isoformat()), ms(new)),  # 10
        (interview("interview.started", date_started=new.isoformat()), ms(new)),  # 11
    ]
    assert sifted(h, records) == [1, 3, 4, 6, 9, 10]
    assert instant(records[3][0], records[3][1]) == old
    assert instant(records[4][0], records[4][1]) == old + HOUR
    # Only the proctoring horizon: interview records are all kept, and the other way round.
    assert sifted(Horizon(Span(90)), records) == [1, 3, 4]
    assert sifted(Horizon(None, Span(90)), records) == [6, 9, 10]
    # What was removed stays expired when a horizon is lengthened or removed.
    removed = NOW - 60 * DAY
    for days in (None, 365):
        assert sifted(Horizon(Span(days, removed)), records) == [1, 3, 4]
    assert sifted(Horizon(), records) == []


# -- against the model -----------------------------------------------------------------------

# Kafka timestamps around the horizons and far from them; own times at offsets from them that
# straddle the hour a clock may run ahead.
NEAR = [NOW - d * DAY + k * dt.timedelta(minutes=30) for d in (0, 1, 90, 365) for k in range(-4, 5)]
FAR = [NOW - 200 * DAY, NOW - 20000 * DAY]
AHEAD = [dt.timedelta(0), dt.timedelta(minutes=30), HOUR, HOUR + dt.timedelta(seconds=1), 2 * HOUR]
OFFSETS = st.sampled_from([*AHEAD, -HOUR, -DAY, -200 * DAY, 200 * DAY])
INSTANTS = st.sampled_from(NEAR + FAR)
TIMESTAMPS = st.one_of(st.none(), st.just(-1), INSTANTS.map(ms))
KINDS = (
    "proctoring",
    "check",
    "interview.started",
    "interview_report.created",
    "interview_recording.completed",
    "interview_webcam_recording.completed",
    "proctoring_score.completed",
    "applicant.updated",
)


@st.composite
def records(draw: st.DrawFn) -> tuple[Any, int | None]:
    kind = draw(st.sampled_from(KINDS))
    ts = draw(TIMESTAMPS)
    base = kafka_instant(ts) or draw(INSTANTS)

    def when() -> str:
        return (base + draw(OFFSETS)).isoformat()

    if kind == "proctoring":
        return proctoring(dt.datetime.fromisoformat(when())), ts
    if kind == "check":
        return proctoring(dt.datetime.fromisoformat(when()), check=draw(INSTANTS)), ts
    fields = {
        "interview.started": ("date_started",),
        "interview_report.created": ("date_modified", "date_created"),
        "applicant.updated": ("date_modified", "date_created"),
    }.get(kind, ())
    return interview(kind, **{f: when() for f in fields if draw(st.booleans())}), ts


SPANS = st.builds(Span, st.sampled_from((None, 1, 90, 365)), st.one_of(st.none(), INSTANTS))


@settings(max_examples=400, deadline=None)
@given(batch=st.lists(records(), min_size=1, max_size=12), p=SPANS, i=SPANS)
def test_sift_expires_what_the_model_expires(
    batch: list[tuple[Any, int | None]], p: Span, i: Span
) -> None:
    model = Model(p.days, NOW, i.days)
    model.expired_before, model.interview_expired_before = p.expired_before, i.expired_before
    expected = []
    for n, (event, ts) in enumerate(batch):
        before = sum(model.expired.values())
        model.apply(event, "t", 0, n, timestamp=ts)
        if sum(model.expired.values()) > before:
            expected.append(n)
    horizon = Horizon(p, i)
    assert sifted(horizon, batch) == expected
    # The batch's oldest Kafka timestamp only spares look-ups, never changes the answer.
    known = [ts for _, ts in batch if ts is not None and ts >= 0]
    items = [Item(e, "t", 0, n) for n, (e, _) in enumerate(batch)]
    oldest = kafka_instant(min(known)) if known else None
    _, gone = horizon.sift(items, lambda it: batch[it.offset][1], oldest, NOW)
    assert [it.offset for it in gone] == expected
