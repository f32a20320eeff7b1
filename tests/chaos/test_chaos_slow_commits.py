"""Campaign 7, slow commits during a rebalance storm: campaign 2's storm (three production
processes in one group on 6-partition topics, members joining, leaving by SIGTERM and dying by
SIGKILL every few seconds while events flow), with every commit taking seconds.

Before any member starts, the database is migrated and statement-level triggers are installed
that sleep 0.5-3 s once per transaction: on consumer_offsets (INSERT and UPDATE, which every
commit does: the first one of a partition inserts its row, the others update it) and on
proctoring_events (INSERT, when the statement inserted rows), so the sleep comes at the first
of those statements whatever order a worker writes them in. Transactions therefore stay open,
holding their offset rows, while members join, leave and die: a SIGKILLed member's open
transaction is rolled back by PostgreSQL, and a revoked member's commit may outlast its
revocation. The new owner must neither apply a batch twice nor skip one.

Judged exactly as campaign 2: the tables against the reference, the committed offsets, the
dead-letter topic, and every graceful leave exiting 0; never by the workers' own counters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from support import infra
from support.chaos import SEED, SIZES, count_in_log, ensure_migrated
from test_chaos_rebalance_storm import rebalance_storm

from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SIZES.test_timeout_s)]

MIN_SLEEP_S = 0.5
MAX_SLEEP_S = 3.0
# A statement's client-side timeout (WORKER_DB_COMMAND_TIMEOUT_S) well above the sleep: a
# slow commit must be waited for, not abandoned as a database failure.
DB_COMMAND_TIMEOUT_S = 30.0

# Everything the campaign adds lives in its own schema, outside the contract tables the checks
# compare. nextval survives a rollback, so `sleeps` counts every slowed transaction, and the
# rows of `committed` only those that committed (one per transaction; the GUC keyed by the
# transaction id makes later statements of the same transaction skip the sleep).
SLOW_COMMITS_SQL = f"""
CREATE SCHEMA chaos_slow;
CREATE SEQUENCE chaos_slow.sleeps;
CREATE TABLE chaos_slow.committed (
    txid    bigint PRIMARY KEY,
    slept_s double precision NOT NULL
);

CREATE FUNCTION chaos_slow.sleep_once() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    seconds double precision;
BEGIN
    IF current_setting('chaos_slow.txid', true) IS NOT DISTINCT FROM txid_current()::text THEN
        RETURN;
    END IF;
    PERFORM set_config('chaos_slow.txid', txid_current()::text, true);
    PERFORM nextval('chaos_slow.sleeps');
    seconds := {MIN_SLEEP_S} + random() * {MAX_SLEEP_S - MIN_SLEEP_S};
    INSERT INTO chaos_slow.committed VALUES (txid_current(), seconds);
    PERFORM pg_sleep(seconds);
END $$;

CREATE FUNCTION chaos_slow.offsets_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM chaos_slow.sleep_once();
    RETURN NULL;
END $$;

CREATE FUNCTION chaos_slow.events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM inserted) THEN
        PERFORM chaos_slow.sleep_once();
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER chaos_slow_offsets_update AFTER UPDATE ON consumer_offsets
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_slow.offsets_written();
CREATE TRIGGER chaos_slow_offsets_insert AFTER INSERT ON consumer_offsets
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_slow.offsets_written();
CREATE TRIGGER chaos_slow_events AFTER INSERT ON proctoring_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_slow.events_inserted();
"""

# Counted in the member logs, as figures only. A member logs the first when a revoked
# partition's commit outlasts its wait at revocation, the second at every revocation.
REVOKED_STILL_COMMITTING = "revoked partitions still committing"
PARTITIONS_REVOKED = "partitions revoked"
# A SIGTERM whose stop did not finish in time (the process still exits 0 after one signal).
FORCED_EXIT = "forcing exit"


async def install_slow_commits(settings: Settings) -> None:
    """Migrate the members' database and install the sleeping triggers."""
    assert settings.db_command_timeout_s > 2 * MAX_SLEEP_S, settings.db_command_timeout_s
    await ensure_migrated(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(SLOW_COMMITS_SQL)
    finally:
        await conn.close()


def slow_commit_figures(database_url: str) -> Callable[[Sequence[Path]], Awaitable[dict[str, Any]]]:
    async def figures(logs: Sequence[Path]) -> dict[str, Any]:
        conn = await asyncpg.connect(database_url)
        try:
            seq = await conn.fetchrow("SELECT last_value, is_called FROM chaos_slow.sleeps")
            row = await conn.fetchrow(
                "SELECT count(*) AS n, coalesce(avg(slept_s), 0) AS mean, "
                "coalesce(sum(slept_s), 0) AS total FROM chaos_slow.committed"
            )
        finally:
            await conn.close()
        slow = seq["last_value"] if seq["is_called"] else 0
        assert slow > 0 and row["n"] > 0, "no commit was slowed down: the triggers never fired"
        return {
            "slow_commits": slow,
            "slow_commits_committed": row["n"],
            "slow_commits_rolled_back": slow - row["n"],
            "slept_mean_s": round(row["mean"], 2),
            "slept_total_s": round(row["total"], 1),
            "revoked_still_committing": sum(
                count_in_log(p, REVOKED_STILL_COMMITTING) for p in logs
            ),
            "partitions_revoked": sum(count_in_log(p, PARTITIONS_REVOKED) for p in logs),
            "forced_exits": sum(count_in_log(p, FORCED_EXIT) for p in logs),
            "db_command_timeout_s": DB_COMMAND_TIMEOUT_S,
        }

    return figures


async def test_slow_commits_during_rebalance_storm_commit_each_record_once(
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: infra.TopicFactory,
    fresh_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
) -> None:
    await rebalance_storm(
        "7 slow commits during a rebalance storm",
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_factory=topic_factory,
        fresh_database=fresh_database,
        tmp_path=tmp_path,
        # The storm's actions follow from the seed: with the default CHAOS_SEED this one kills,
        # leaves and joins even in CI's 15 s (kill, leave, join, leave, join).
        seed=SEED + 92,
        events=SIZES.slow_events,
        seconds=SIZES.slow_seconds,
        tag="w",
        before_members=install_slow_commits,
        extra_figures=slow_commit_figures(database_url),
        db_command_timeout_s=DB_COMMAND_TIMEOUT_S,
    )
