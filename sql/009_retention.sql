-- Retention that holds (issue 25; docs/contract.md §7, worker/horizon.py, worker/retention.py).
--
-- Interview data has a horizon too (WORKER_INTERVIEW_RETENTION_DAYS). Its tables are upserted
-- rows, not a log, so they are aged per row: `last_event_at` is the latest instant of the
-- records the worker stored into the row, stale ones included, rounded up to the end of its
-- UTC day, written in the transaction that stores them (a new row is born with it; a row stored
-- before is written again once its age moves to a later day, hence the rounding). Once a day,
-- retention deletes the rows whose `last_event_at` is past the horizon by a sweep of the primary
-- key, a bounded batch per transaction; a report's proctoring_violations go with it (ON DELETE
-- CASCADE). NULL (the rows already here, and rows an earlier release writes during a rolling
-- upgrade): such a row ages from its `updated_at`, when the worker last wrote it. No index on
-- the column: an index would add a write per index to each raise (worker/retention.py).
--
-- `interview_expired_before`: what interview retention has deleted; an interview record older
-- than it stores nothing, whatever the horizon says now (as `expired_before` for the proctoring
-- tables, which may now be unset while only interview data was removed).
--
-- Additive: an earlier release ignores the new columns, which are added without a rewrite.

ALTER TABLE interview_reports ADD COLUMN last_event_at timestamptz;
ALTER TABLE interviews ADD COLUMN last_event_at timestamptz;
ALTER TABLE applicants ADD COLUMN last_event_at timestamptz;

ALTER TABLE retention_state
    ALTER COLUMN expired_before DROP NOT NULL,
    ADD COLUMN interview_expired_before timestamptz;
