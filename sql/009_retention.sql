-- Retention that holds (issue 25; docs/contract.md §7, worker/horizon.py, worker/retention.py).
--
-- Interview data has a horizon too (WORKER_INTERVIEW_RETENTION_DAYS). Its tables are upserted
-- rows, not a log, so they are aged per row: `last_event_at` is the latest instant of the
-- records the worker stored into the row, stale ones included, raised in the transaction that
-- stores them. Retention deletes the rows whose `last_event_at` is past the horizon through
-- these indexes, a bounded batch per transaction; a report's proctoring_violations go with it
-- (ON DELETE CASCADE). NULL (the rows already here, and rows an earlier release writes
-- during a rolling upgrade): such a row ages from its `updated_at`, when the worker last wrote it, so no backfill holds these tables now. An
-- interview row is written a few times in its life, so an index on its age costs little; the
-- sessions, rewritten by nearly every batch, get none (their updates stay HOT, sql/002).
--
-- `interview_expired_before`: what interview retention has deleted; an interview record older
-- than it stores nothing, whatever the horizon says now (as `expired_before` for the proctoring
-- tables, which may now be unset while only interview data was removed).
--
-- Additive: an earlier release ignores the new columns. Building the indexes holds writes to
-- the three tables for as long as the build takes (seconds per million rows).

ALTER TABLE interview_reports ADD COLUMN last_event_at timestamptz;
ALTER TABLE interviews ADD COLUMN last_event_at timestamptz;
ALTER TABLE applicants ADD COLUMN last_event_at timestamptz;
CREATE INDEX interview_reports_last_event_idx ON interview_reports (last_event_at);
CREATE INDEX interviews_last_event_idx ON interviews (last_event_at);
CREATE INDEX applicants_last_event_idx ON applicants (last_event_at);
-- The rows without an age, by when the worker last wrote them (small once they are aged).
CREATE INDEX interview_reports_unaged_idx ON interview_reports (updated_at)
    WHERE last_event_at IS NULL;
CREATE INDEX interviews_unaged_idx ON interviews (updated_at) WHERE last_event_at IS NULL;
CREATE INDEX applicants_unaged_idx ON applicants (updated_at) WHERE last_event_at IS NULL;

ALTER TABLE retention_state
    ALTER COLUMN expired_before DROP NOT NULL,
    ADD COLUMN interview_expired_before timestamptz;
