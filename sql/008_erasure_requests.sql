-- Erasure that holds against every path (issue 25; docs/contract.md §7).
--
-- 1. The ledger's lock apart from its key. `erasure_lock` is the row every batch reads FOR
--    SHARE and that `worker forget --execute` locks (LOCK TABLE ... IN EXCLUSIVE MODE), with
--    the count of erasures (0: the batch skips the ledger). FOR SHARE needs the UPDATE
--    privilege, so the worker's role needs UPDATE here, where no key is; `erasure_state`
--    keeps the key and is only read by the worker (SELECT). `erasure_state.erasures` stays
--    and is still incremented by `forget`, for replicas of the previous release during a
--    rolling upgrade (they read the count and lock the row there; `forget` locks both tables).
--
-- 2. `erasures.request_id`: an erasure by email covers several subjects (each linked id and
--    the email), one ledger row each, so that the batches' lookup stays one indexed read of
--    `subject`; the rows of one request share its id (NULL on rows of earlier releases: one
--    subject each).
--
-- 3. Finding a person by email, case-insensitively: the stored emails lower-cased, and the
--    candidate ids that are addresses. The latter indexes are partial (ids with an `@`), so
--    the ingest of ordinary ids does not write them.
--
-- 4. `erasure_audit`, append-only: one row per `show`, `forget` and `dlq inspect --candidate`,
--    with the keyed hashes of the identifiers asked about (never one in clear). Appended
--    through `erasure_audit_append` (SECURITY DEFINER), so a SELECT-only role can append;
--    UPDATE, DELETE and TRUNCATE are refused by triggers, whoever asks.
--
-- Additive: a worker of the previous release ignores the new table, column, indexes and
-- functions. The indexes are built under a SHARE lock on their tables (writes wait for the
-- build; one scan of each table).

CREATE TABLE erasure_lock (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    erasures  bigint  NOT NULL DEFAULT 0
);
INSERT INTO erasure_lock (erasures) SELECT erasures FROM erasure_state;

ALTER TABLE erasures ADD COLUMN request_id bigint;

CREATE INDEX candidates_email_lower_idx ON candidates (lower(email));
CREATE INDEX applicants_email_lower_idx ON applicants (lower(email));
CREATE INDEX proctoring_sessions_candidate_address_idx ON proctoring_sessions
    (lower(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX system_checks_candidate_address_idx ON system_checks
    (lower(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX candidates_candidate_address_idx ON candidates
    (lower(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX applicants_candidate_address_idx ON applicants
    (lower(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX interviews_candidate_address_idx ON interviews
    (lower(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX interview_reports_candidate_address_idx ON interview_reports
    (lower(candidate_id)) WHERE candidate_id LIKE '%@%';

CREATE TABLE erasure_audit (
    audit_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL,
    command   text        NOT NULL,
    operator  text        NOT NULL,
    ticket    text,
    subjects  bytea[]     NOT NULL,
    counts    jsonb       NOT NULL
);
CREATE INDEX erasure_audit_subjects_idx ON erasure_audit USING gin (subjects);
REVOKE UPDATE, DELETE, TRUNCATE ON erasure_audit FROM PUBLIC;

CREATE FUNCTION erasure_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'erasure_audit is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER erasure_audit_append_only BEFORE UPDATE OR DELETE ON erasure_audit
    FOR EACH ROW EXECUTE FUNCTION erasure_audit_refuse();
CREATE TRIGGER erasure_audit_no_truncate BEFORE TRUNCATE ON erasure_audit
    FOR EACH STATEMENT EXECUTE FUNCTION erasure_audit_refuse();

-- The server's clock, not the operator's: when the request was answered.
CREATE FUNCTION erasure_audit_append(
    command text, operator text, ticket text, subjects bytea[], counts jsonb
) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    INSERT INTO erasure_audit (at, command, operator, ticket, subjects, counts)
    VALUES (statement_timestamp(), command, operator, ticket, subjects, counts)
    RETURNING audit_id
$$;
