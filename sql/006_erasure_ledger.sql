-- The erasure ledger (docs: README "Data lifecycle", contract §7).
--
-- `erasures`: one row per `worker forget --execute`: when, how many rows it deleted per table,
-- and the end offset of every partition of the consumed topics at that moment. The candidate
-- is named only by `subject`, an HMAC-SHA256 of the identifier under this database's own
-- random key (`erasure_state.key`): never the identifier in clear.
--
-- `erasure_state`: one row, the key and how many erasures there are. Every batch reads it FOR
-- SHARE before it writes (one round trip; the count 0 skips the ledger entirely) and an
-- erasure updates it before it deletes: so an erasure waits for the batches in flight to
-- commit and then deletes what they wrote, and a batch that starts meanwhile waits for the
-- erasure and then sees its ledger row. Neither can miss the other.
--
-- Additive only: a worker of the previous release ignores both tables.

CREATE TABLE erasure_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key       bytea   NOT NULL,
    erasures  bigint  NOT NULL DEFAULT 0
);

-- 32 bytes from PostgreSQL's strong random source (gen_random_uuid, built in since 13).
INSERT INTO erasure_state (key)
VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

CREATE TABLE erasures (
    erasure_id   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject      bytea       NOT NULL,
    erased_at    timestamptz NOT NULL,
    log_ends     jsonb       NOT NULL,
    rows_deleted jsonb       NOT NULL
);

CREATE INDEX erasures_subject_idx ON erasures (subject);
