-- Finding a person by email whatever the database's locale (docs/contract.md §7).
--
-- Two emails are the same when their normal forms are equal: trimmed of white space and
-- lower-cased as Python's `str.strip` and `str.lower` do (the erasure ledger's subjects are
-- HMACs of that form, worker/erasure.py `normal_email`). sql/008 indexed `lower(email)`,
-- which PostgreSQL computes by the database's collation (under `C` it lower-cases ASCII
-- only) and without a trim: a stored `ÄNN@example.com`, or `ann@example.com` with a blank
-- after it, was not linked to the person although the ledger screened their records.
--
-- An email (or an id that is an address) is *usual* when it is ASCII and has no ASCII white
-- space at either end: its normal form is then `lower(x COLLATE "C")` in every locale, and
-- `worker_email_key` indexes it. Every other one is *unusual* (`worker_email_unusual`): few,
-- indexed by a partial index each, and compared by `worker forget|show --email` in Python,
-- by the normal form itself. Every row is in one of the two indexes, so the linking is
-- complete; Python checks every candidate the indexes give, so it is exact.
--
-- Additive for a worker of the previous release (its `forget` and `show` link through the
-- sql/008 indexes, which go: they plan a scan instead, and still link what they linked). The
-- indexes are built under a SHARE lock on their tables (writes wait for the build).

CREATE FUNCTION worker_email_key(x text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT lower(x COLLATE "C") $$;

-- Python's ASCII white space (str.isspace): tab, LF, VT, FF, CR, FS, GS, RS, US and space.
CREATE FUNCTION worker_email_unusual(x text) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT octet_length(x) <> length(x)
              OR x <> btrim(x, E'\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f ') $$;

DROP INDEX candidates_email_lower_idx, applicants_email_lower_idx,
    proctoring_sessions_candidate_address_idx, system_checks_candidate_address_idx,
    candidates_candidate_address_idx, applicants_candidate_address_idx,
    interviews_candidate_address_idx, interview_reports_candidate_address_idx;

CREATE INDEX candidates_email_key_idx ON candidates (worker_email_key(email));
CREATE INDEX candidates_email_unusual_idx ON candidates (candidate_id)
    WHERE worker_email_unusual(email);
CREATE INDEX applicants_email_key_idx ON applicants (worker_email_key(email));
CREATE INDEX applicants_email_unusual_idx ON applicants (candidate_id)
    WHERE worker_email_unusual(email);

CREATE INDEX proctoring_sessions_candidate_address_idx ON proctoring_sessions
    (worker_email_key(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX proctoring_sessions_candidate_unusual_idx ON proctoring_sessions (candidate_id)
    WHERE candidate_id LIKE '%@%' AND worker_email_unusual(candidate_id);
CREATE INDEX system_checks_candidate_address_idx ON system_checks
    (worker_email_key(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX system_checks_candidate_unusual_idx ON system_checks (candidate_id)
    WHERE candidate_id LIKE '%@%' AND worker_email_unusual(candidate_id);
CREATE INDEX candidates_candidate_address_idx ON candidates
    (worker_email_key(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX candidates_candidate_unusual_idx ON candidates (candidate_id)
    WHERE candidate_id LIKE '%@%' AND worker_email_unusual(candidate_id);
CREATE INDEX applicants_candidate_address_idx ON applicants
    (worker_email_key(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX applicants_candidate_unusual_idx ON applicants (candidate_id)
    WHERE candidate_id LIKE '%@%' AND worker_email_unusual(candidate_id);
CREATE INDEX interviews_candidate_address_idx ON interviews
    (worker_email_key(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX interviews_candidate_unusual_idx ON interviews (candidate_id)
    WHERE candidate_id LIKE '%@%' AND worker_email_unusual(candidate_id);
CREATE INDEX interview_reports_candidate_address_idx ON interview_reports
    (worker_email_key(candidate_id)) WHERE candidate_id LIKE '%@%';
CREATE INDEX interview_reports_candidate_unusual_idx ON interview_reports (candidate_id)
    WHERE candidate_id LIKE '%@%' AND worker_email_unusual(candidate_id);
