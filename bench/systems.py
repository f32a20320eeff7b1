"""The worker builds one benchmark run measures: this tree, and any revision beside it.

`python -m bench.run --baseline-rev REV` exports REV with `git archive` into a temporary
directory and runs that tree's `python -m worker run` (and `python -m worker migrate`) with
this venv's interpreter, alternately with this tree's, on the same records, broker and
PostgreSQL. `--compare PATH` does the same with a tree already on disk (a checkout, an
export). Both sides use this venv's packages: a revision whose dependencies differ must be
measured from a venv of its own.

Why a plain PYTHONPATH is not enough: the venv installs this tree in editable mode, and
setuptools' editable finder (appended to `sys.meta_path`) maps `worker.sql` to THIS tree's
top-level `sql/` (pyproject.toml's package-dir). A tree run from its own directory finds its
`worker` package first on `sys.path`, but it has no `worker/sql` directory, so `worker.sql`
falls through to that finder: the other tree's code would apply this tree's migrations. The
export therefore gets a `worker/sql -> ../sql` link, and nothing is taken on trust:

- before every run, a probe started exactly like the worker (same interpreter, directory and
  environment) reports where `worker` and `worker.sql` were imported from and the checksum of
  every migration `worker.migrate.load_migrations()` returns; they must be the tree's own
  (its `sql/*.sql` files, hashed as the migrator hashes them);
- after every run, the database's `schema_migrations` must hold exactly those checksums.

A mismatch stops the benchmark: figures from the wrong code are worse than none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
_MIGRATION = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")

# Run in the system's environment: what the interpreter really imports.
_PROBE = """
import json, sys
import worker, worker.sql
from aiokafka.record.memory_records import MemoryRecords
from worker.migrate import load_migrations
print(json.dumps({
    "aiokafka_record_reader": MemoryRecords.__module__,
    "worker": worker.__file__,
    "worker.sql": list(worker.sql.__path__),
    "version": getattr(worker, "__version__", None),
    "migrations": {str(m.version): m.checksum for m in load_migrations()},
}))
"""


class WrongCode(RuntimeError):
    """A system would run (or ran) other code or other migrations than its tree's."""


def tree_migrations(root: Path) -> dict[int, str]:
    """The migrations of the tree at `root`, as the migrator checksums them (the text read
    as importlib.resources reads it)."""
    found: dict[int, str] = {}
    for path in sorted((root / "sql").iterdir()):
        match = _MIGRATION.match(path.name)
        if match:
            text = path.read_text(encoding="utf-8")
            found[int(match[1])] = hashlib.sha256(text.encode()).hexdigest()
    return found


def _git(*args: str, cwd: Path = REPO) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True)
    return out.stdout.decode().strip()


@dataclass
class System:
    """One build of the worker: `name` labels its rows ("worker" for this tree)."""

    name: str
    root: Path
    rev: str  # the commit (short), with "+dirty" when the working tree differs from it
    migrations: dict[int, str] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    _tmp: Path | None = None

    @property
    def is_this_tree(self) -> bool:
        return self.root == REPO

    def env(self) -> dict[str, str]:
        """Added to the environment of its processes (the directory is their cwd too); a
        PYTHONPATH of the caller's (bench/gcprobe) stays, after the tree."""
        outer = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": os.pathsep.join([str(self.root), *([outer] if outer else [])])}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root": str(self.root),
            "rev": self.rev,
            "migrations": {str(v): c[:12] for v, c in self.migrations.items()},
            "probe": self.probe,
        }

    def check(self) -> None:
        """Probe what this system's processes import; raise WrongCode unless it is the tree's
        own worker and migrations."""
        env = {**os.environ, **self.env()}
        out = subprocess.run(
            [sys.executable, "-c", _PROBE],
            cwd=self.root,
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        )
        if out.returncode != 0:
            raise WrongCode(f"{self.name}: probe failed:\n{out.stderr.decode()[-2000:]}")
        probe = json.loads(out.stdout.decode().strip().splitlines()[-1])
        root = self.root.resolve()
        worker_file = Path(probe["worker"]).resolve()
        sql_dirs = [Path(p).resolve() for p in probe["worker.sql"]]
        problems = []
        if not worker_file.is_relative_to(root):
            problems.append(f"`worker` imported from {worker_file}, not from {root}")
        if sql_dirs != [(root / "sql").resolve()]:
            problems.append(f"`worker.sql` is {sql_dirs}, not {root / 'sql'}")
        loaded = {int(v): c for v, c in probe["migrations"].items()}
        if loaded != self.migrations:
            problems.append(f"migrations loaded {loaded} differ from the tree's {self.migrations}")
        if problems:
            raise WrongCode(f"{self.name}: " + "; ".join(problems))
        self.probe = {**probe, "migrations": len(loaded)}

    async def migrate(self, database_url: str, worker_env: Mapping[str, str]) -> None:
        """Apply this tree's migrations with this tree's `worker migrate`."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "migrate",
            cwd=self.root,
            env={**os.environ, **worker_env, **self.env(), "DATABASE_URL": database_url},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: worker migrate failed:\n{output.decode()[-2000:]}")
        await self.verify_database(database_url)

    async def verify_database(self, database_url: str) -> None:
        """The database holds exactly this tree's migrations (checked after every run too)."""
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        finally:
            await conn.close()
        applied = {r["version"]: r["checksum"] for r in rows}
        if applied != self.migrations:
            raise WrongCode(
                f"{self.name}: the database holds migrations {applied}, "
                f"the tree has {self.migrations}"
            )

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def this_tree() -> System:
    rev = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        rev += "+dirty"
    return System("worker", REPO, rev, tree_migrations(REPO))


def _linked(root: Path) -> None:
    """`worker/sql -> ../sql`, so that `worker.sql` is found inside the tree (see above)."""
    link = root / "worker" / "sql"
    if not link.exists():
        link.symlink_to(Path("..") / "sql", target_is_directory=True)


def exported(rev: str) -> System:
    """REV exported from this repository into a temporary directory."""
    sha = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{sha}-"))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", sha], cwd=REPO, capture_output=True, check=True
    ).stdout
    tar_path = tmp / "tree.tar"
    tar_path.write_bytes(archive)
    root = tmp / "tree"
    with tarfile.open(tar_path) as tar:
        tar.extractall(root, filter="data")
    tar_path.unlink()
    _linked(root)
    system = System(f"worker@{sha}", root, sha, tree_migrations(root))
    system._tmp = tmp
    return system


def on_disk(path: str) -> System:
    """A tree already on disk (`--compare PATH`), copied to a temporary directory (sources only)
    and linked like an export, so that the tree itself is left as it is."""
    source = Path(path).resolve()
    if not (source / "worker" / "__init__.py").exists() or not (source / "sql").is_dir():
        raise SystemExit(f"--compare {path}: not a tree of this project (worker/, sql/)")
    if source == REPO:
        raise SystemExit(f"--compare {path}: that is this tree")
    try:
        rev = _git("rev-parse", "--short", "HEAD", cwd=source)
        if _git("status", "--porcelain", "--untracked-files=no", cwd=source):
            rev += "+dirty"
    except (subprocess.CalledProcessError, OSError):
        rev = "unknown"
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{source.name}-"))
    root = tmp / "tree"
    shutil.copytree(
        source,
        root,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", ".dev"
        ),
    )
    _linked(root)
    system = System(f"worker@{source.name}", root, rev, tree_migrations(root))
    system._tmp = tmp
    return system
