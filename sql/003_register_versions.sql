-- Registers (README "What each table promises"): a column of candidates, jobs and interviews
-- holds the value with the greatest (event time, value) any event carried; its `<column>_at`
-- keeps that time, so a later batch can compare with it. NULL means "carried by an event
-- without a time", the oldest; rows written before this migration have NULL and are
-- therefore replaced by the first event that carries the column with a time.
--
-- Additive only: a worker of the previous release keeps writing these tables as it did and
-- leaves the new columns alone.

ALTER TABLE candidates
    ADD COLUMN name_at  timestamptz,
    ADD COLUMN email_at timestamptz;

ALTER TABLE jobs
    ADD COLUMN name_at       timestamptz,
    ADD COLUMN ats_job_id_at timestamptz;

ALTER TABLE interviews
    ADD COLUMN interview_name_at         timestamptz,
    ADD COLUMN candidate_id_at           timestamptz,
    ADD COLUMN job_id_at                 timestamptz,
    ADD COLUMN ats_job_id_at             timestamptz,
    ADD COLUMN ats_job_application_id_at timestamptz;
