-- proctoring_events and system_checks become range-partitioned by time (created_at, checked_at),
-- one partition per UTC month, so that retention (worker/retention.py, CONTRACT §7) removes old
-- rows by dropping whole partitions: no row DELETE, no bloat, no vacuum debt.
--
-- Layout of each table, kept by worker/retention.py from then on:
--
--   <table>_far_past   [MINVALUE, first month)   instants before the first month (year 1 ...)
--   <table>_pYYYYMM    one per month, contiguous  created ahead of the data
--   <table>_far_future [after the last month, MAXVALUE)   instants past them (... year 9999)
--
-- Both catch-alls are bounded partitions, not a DEFAULT partition: PostgreSQL refuses to
-- create a partition whose range holds rows of the DEFAULT partition, so one far-future event
-- in a DEFAULT would block creating next month's partition. A bounded catch-all is instead
-- split by detaching it, creating the months and re-inserting its (few) rows.
--
-- The rows this database holds are copied into the partitioned tables in this transaction
-- (bench/migration_lock.py measures how long that holds the tables' lock: README "Data
-- lifecycle"). Months are laid out from the oldest row of the last ten years, so that
-- retention can drop them month by month; older instants stay in far_past.

-- Month boundaries are UTC whatever the session's TimeZone (date_trunc with a zone).
CREATE FUNCTION worker_month_partition(parent text, instant timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('month', instant, 'UTC');
    hi timestamptz := date_trunc('month', lo + interval '32 days', 'UTC');
    name text := parent || '_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMM');
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
        name, parent, lo, hi);
    RETURN name;
END
$$;
COMMENT ON FUNCTION worker_month_partition(text, timestamptz) IS
    'Creates (if missing) the partition of parent for the UTC month holding instant; '
    'used by migration 005 and worker/retention.py';

ALTER TABLE proctoring_events RENAME TO proctoring_events_unpartitioned;
ALTER INDEX proctoring_events_pkey RENAME TO proctoring_events_unpartitioned_pkey;
ALTER TABLE system_checks RENAME TO system_checks_unpartitioned;
ALTER INDEX system_checks_pkey RENAME TO system_checks_unpartitioned_pkey;
ALTER INDEX system_checks_candidate_idx RENAME TO system_checks_unpartitioned_candidate_idx;

-- The same columns, defaults and CHECK constraints (declared once, in 001).
CREATE TABLE proctoring_events (
    LIKE proctoring_events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
) PARTITION BY RANGE (created_at);
CREATE TABLE system_checks (
    LIKE system_checks_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
) PARTITION BY RANGE (checked_at);

DO $$
DECLARE
    floor timestamptz := now() - interval '10 years';
    first_month timestamptz;
    -- The current month and the next two, as worker/retention.py's AHEAD_MONTHS keeps them.
    last_month timestamptz := date_trunc('month', now(), 'UTC') + interval '70 days';
    parent text;
    m timestamptz;
BEGIN
    SELECT date_trunc('month', LEAST(
        now(),
        (SELECT min(created_at) FROM proctoring_events_unpartitioned WHERE created_at >= floor),
        (SELECT min(checked_at) FROM system_checks_unpartitioned WHERE checked_at >= floor)
    ), 'UTC') INTO first_month;
    last_month := date_trunc('month', last_month, 'UTC');  -- the start of the month after next
    FOREACH parent IN ARRAY ARRAY['proctoring_events', 'system_checks'] LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (MINVALUE) TO (%L)',
            parent || '_far_past', parent, first_month);
        m := first_month;
        WHILE m <= last_month LOOP
            PERFORM worker_month_partition(parent, m);
            m := date_trunc('month', m + interval '32 days', 'UTC');
        END LOOP;
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (MAXVALUE)',
            parent || '_far_future', parent, m);
    END LOOP;
END
$$;

-- Rows first, indexes after: one sorted build per partition is cheaper than index inserts.
INSERT INTO proctoring_events SELECT * FROM proctoring_events_unpartitioned;
INSERT INTO system_checks SELECT * FROM system_checks_unpartitioned;
DROP TABLE proctoring_events_unpartitioned;
DROP TABLE system_checks_unpartitioned;
ALTER TABLE proctoring_events ADD PRIMARY KEY (exam_id, candidate_id, type, created_at);
ALTER TABLE system_checks ADD PRIMARY KEY (exam_id, candidate_id, checked_at);
CREATE INDEX system_checks_candidate_idx ON system_checks (candidate_id);

-- Everything before this instant was dropped by retention: a record older than it stores
-- nothing, whatever WORKER_PROCTORING_RETENTION_DAYS says now (a replay cannot bring back
-- what was dropped, even after the horizon is lengthened or removed). One row at most.
CREATE TABLE retention_state (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    expired_before timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
