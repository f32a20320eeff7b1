"""No password of DATABASE_URL, in any form asyncpg takes one, reaches an output.

asyncpg's `connect_utils._parse_connect_dsn_and_args` reads a password from three places of a
URL: the user info (`postgresql://u:secret@h/db`) and the query parameters `password` and
`sslpassword` (the client key's passphrase). `passfile` and `service` name files, not secrets;
PGPASSWORD is the environment's. asyncpg takes only URLs, never libpq's `host=h password=x`
strings. The worker's outputs are its log lines, `/metrics`, `/readyz` and its dead letters:
the integration tests run real workers with a password in each form and search all of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
from asyncpg import connect_utils
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from support import infra
from support.e2e import (
    WorkerProcess,
    count_rows,
    http_get,
    running_worker,
    settings_for,
    wait_for,
    worker_process,
)

from worker.config import ConfigError, Settings, database_url_problem, redact_url
from worker.dev.seeds import proctoring_samples
from worker.dev.stack import free_port

SECRET = "s3cr3t-Zq9"
WHOLE = "<unparseable URL>"

# (url, what redact_url must make of it)
REDACTIONS = [
    ("postgresql://u:s3cr3t-Zq9@db:5432/x", "postgresql://u:***@db:5432/x"),
    ("postgres://u:s3cr3t-Zq9@db/x", "postgres://u:***@db/x"),
    ("postgresql://u:s3cr3t%2DZq9@db/x", "postgresql://u:***@db/x"),
    ("postgresql://u@db/x?password=s3cr3t-Zq9", "postgresql://u@db/x?password=***"),
    ("postgresql://u@db/x?PASSWORD=s3cr3t-Zq9", "postgresql://u@db/x?PASSWORD=***"),
    (
        "postgresql://u@db/x?sslmode=verify-full&sslpassword=s3cr3t-Zq9&sslkey=/k.pem",
        "postgresql://u@db/x?sslmode=verify-full&sslpassword=***&sslkey=/k.pem",
    ),
    (
        "postgresql://u:a@db/x?password=s3cr3t-Zq9&password=s3cr3t-Zq9",
        "postgresql://u:***@db/x?password=***&password=***",
    ),
    ("postgresql://u:s3cr3t-Zq9@h1:5432,h2:5433/x", "postgresql://u:***@h1:5432,h2:5433/x"),
    (
        "postgresql://u:s3cr3t-Zq9@[::1]:5432,[fe80::1]/x?target_session_attrs=primary",
        "postgresql://u:***@[::1]:5432,[fe80::1]/x?target_session_attrs=primary",
    ),
    (
        "postgresql:///x?host=/run/pg&password=s3cr3t-Zq9",
        "postgresql:///x?host=/run/pg&password=***",
    ),
    # An unencoded '@' in the password: everything before the last '@' is hidden.
    ("postgresql://u:s3cr3t@Zq9@db/x", "postgresql://u:***@db/x"),
    # No password anywhere: unchanged (passfile is a path, not a secret).
    ("postgresql://u@h1:5432,h2/x?sslmode=require", "postgresql://u@h1:5432,h2/x?sslmode=require"),
    ("postgresql://u@db/x?passfile=/etc/pgpass", "postgresql://u@db/x?passfile=/etc/pgpass"),
    ("postgresql://localhost/postgres", "postgresql://localhost/postgres"),
]

# Strings whose password cannot be located with certainty: hidden whole.
UNPARSEABLE = [
    "host=db user=u password=s3cr3t-Zq9",  # libpq keyword/value
    "password=s3cr3t-Zq9",
    "s3cr3t-Zq9",
    "postgresql:s3cr3t-Zq9@db",  # no authority
    "postgresql://u:s3cr3t/Zq9@db/x",  # an unencoded '/', '?' or '#' ends the authority early
    "postgresql://u:s3cr3t?Zq9@db/x",
    "postgresql://u:s3cr3t#Zq9@db/x",
    "postgresql://u:12?password=s3cr3t-Zq9@db/x",
    "postgresql://u:s3cr3t-Zq9@[db/x",  # urlsplit raises
    "postgresql://u@db/x?password=s3cr3t&Zq9",  # an unencoded '&' in a value
    "postgresql://u@db/x?password=s3cr3t-Zq9&",
]

# Valid for asyncpg and for the worker.
ACCEPTED = [
    "postgresql://u:s3cr3t-Zq9@db:5432/x",
    "postgresql://u@db/x?password=s3cr3t-Zq9",
    "postgresql://u@db/x?sslmode=disable&sslpassword=s3cr3t-Zq9",
    "postgresql://u:s3cr3t-Zq9@h1:5432,h2:5433/x",
    "postgresql://u:s3cr3t-Zq9@[::1]:5432,[::2]/x",
    "postgres://u:s3cr3t%40Zq9@db/x?sslmode=verify-full&sslrootcert=/ca.pem",
    "postgresql:///x?host=/run/postgresql&password=s3cr3t-Zq9",
    "postgresql://%2Frun%2Fpostgresql/x",
]

# Rejected at start, with a message that repeats nothing of the value.
REJECTED = [
    "host=db user=u password=s3cr3t-Zq9",
    "dbname=x password=s3cr3t-Zq9",
    "s3cr3t-Zq9",
    "mysql://u:s3cr3t-Zq9@db/x",
    "postgresql:s3cr3t-Zq9@db",
    "postgresql://u:s3cr3t@Zq9@db/x",
    "postgresql://u:s3cr3t/Zq9@db/x",
    "postgresql://u:s3cr3t?Zq9@db/x",
    "postgresql://u:s3cr3t#Zq9@db/x",
    "postgresql://u:s3cr3t-Zq9@[db/x",
    "postgresql://u:s3cr3t-Zq9@db:s3cr3t/x",
    "postgresql://u:s3cr3t-Zq9@db:99999/x",
    "postgresql://u:s3cr3t-Zq9@h1,,h2/x",
    "postgresql://u@db/x?password=s3cr3t&Zq9",
    "postgresql://u@db/x?port=s3cr3t",
]


def _pieces(secret: str) -> list[str]:
    """The secret, its percent-encoding, and its runs of letters and digits: a leak of a part
    of a password is a leak."""
    runs = [run for run in re.split(r"[^A-Za-z0-9]", secret) if len(run) >= 3]
    return [secret, quote(secret, safe=""), *runs]


def _assert_hidden(text: str, *secrets: str) -> None:
    for secret in secrets:
        for piece in _pieces(secret):
            assert piece not in text, f"{piece!r} leaked into {text!r}"


def _telling_pieces(secret: str, form: str) -> list[str]:
    """The pieces of `secret` whose presence in a redaction can only be a leak: not found in
    the form around it nor in the redaction's own words."""
    around = form.format("***") + WHOLE
    return [p for p in _pieces(secret) if len(p) >= 3 and p not in around and "***" not in p]


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), REDACTIONS)
def test_redact_url_hides_every_password_form(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize("url", UNPARSEABLE)
def test_redact_url_hides_what_it_cannot_parse_whole(url: str) -> None:
    assert redact_url(url) == WHOLE


_FORMS = [
    "postgresql://user:{}@db.example:5432/events",
    "postgresql://user:{}@h1.example:5432,h2.example:5433/events",
    "postgresql://user:{}@[::1]:5432,[::2]/events?target_session_attrs=any",
    "postgresql://user@db.example/events?sslmode=require&password={}",
    "postgresql://user@db.example/events?password={}&sslmode=require",
    "postgresql://user@db.example/events?sslpassword={}&sslcert=/c.pem",
]
_SECRET_TEXT = st.text(
    alphabet=st.sampled_from("abcdefghXYZ0123456789@/?#&=:%+[], ;é"), min_size=6, max_size=24
)


@hypothesis_settings(max_examples=400, deadline=None)
@given(form=st.sampled_from(_FORMS), secret=_SECRET_TEXT, encoded=st.booleans())
def test_redact_url_never_raises_nor_leaks(form: str, secret: str, encoded: bool) -> None:
    # A user-info password may be pasted unencoded; query values are tested encoded, since an
    # unencoded '&' there makes a second parameter that asyncpg also reads as one.
    in_userinfo = "?" not in form or form.index("{}") < form.index("?")
    url = form.format(secret if in_userinfo and not encoded else quote(secret, safe=""))
    redacted = redact_url(url)
    for piece in _telling_pieces(secret, form):
        assert piece not in redacted, (url, redacted)


_ANYWHERE = [
    "postgresql://user:{}@db.example:5432/events",
    "postgresql://user:{}@h1.example:5432,h2.example/events",
    "postgresql://user:{}@[::1]:5432,[::2]/events",
    "postgresql://user@db.example/events?password={}",
    "postgresql://user@db.example/events?application_name=w&password={}&target_session_attrs=any",
]


def _asyncpg_reads(url: str) -> Any:
    """What asyncpg's own parser makes of `url` (files and TLS kept out of it)."""
    return connect_utils._parse_connect_dsn_and_args(
        dsn=url,
        host=None,
        port=None,
        user=None,
        password=None,
        passfile="/nonexistent/pgpass",
        database=None,
        ssl=False,
        service=None,
        servicefile="/nonexistent/pg_service.conf",
        direct_tls=None,
        server_settings=None,
        target_session_attrs=None,
        krbsrvname=None,
        gsslib=None,
    )[1]


@hypothesis_settings(max_examples=400, deadline=None)
@given(form=st.sampled_from(_ANYWHERE), secret=_SECRET_TEXT, encoded=st.booleans())
def test_what_asyncpg_reads_as_a_password_is_hidden(form: str, secret: str, encoded: bool) -> None:
    """Ties both halves to asyncpg itself: a URL the worker accepts parses in asyncpg (so
    asyncpg's errors, which quote the URL, are never reached), and whatever password asyncpg
    reads from it, however mangled the URL, is hidden by redact_url."""
    url = form.format(quote(secret, safe="") if encoded else secret)
    if database_url_problem(url) is not None:
        return  # refused at start: asyncpg never sees it
    password = _asyncpg_reads(url).password
    redacted = redact_url(url)
    for piece in _telling_pieces(password or "", form):
        assert piece not in redacted, (url, redacted)


def test_redact_url_never_raises_on_junk() -> None:
    for junk in ["", "://", "postgresql://", "postgresql://[", "postgresql://a@b@c", "%%%"]:
        assert isinstance(redact_url(junk), str)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ACCEPTED)
def test_database_url_forms_are_accepted_and_described_without_the_password(url: str) -> None:
    s = Settings.from_env({"DATABASE_URL": url})
    # Kept as written; one naming several hosts gains only target_session_attrs=read-write.
    sep = "&" if "?" in url else "?"
    assert s.database_url in (url, f"{url}{sep}target_session_attrs=read-write")
    described = s.describe()
    _assert_hidden(repr(described), SECRET)
    _assert_hidden(json.dumps(described), SECRET)
    _assert_hidden(repr(s), SECRET)
    assert "***" in described["database_url"] or SECRET not in url


@pytest.mark.parametrize("url", REJECTED)
def test_bad_database_url_is_rejected_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"DATABASE_URL": url})
    message = str(err.value)
    assert message.startswith("DATABASE_URL: ")
    assert "\n" not in message
    _assert_hidden(message, SECRET)


def test_keyword_value_dsn_gets_a_message_saying_so() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"DATABASE_URL": "host=db password=s3cr3t-Zq9"})
    assert "keyword" in str(err.value) and "postgresql://" in str(err.value)


def test_cli_rejects_a_keyword_dsn_in_one_line_without_the_password() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "DATABASE_URL": "host=db user=u password=s3cr3t-Zq9",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    _assert_hidden(done.stdout + done.stderr, SECRET)


# -- real workers -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Login:
    """A role with a password of its own and a database it owns: with trust authentication any
    password connects, with password authentication this one does."""

    host: str
    port: int
    role: str
    password: str
    database: str
    admin_db_url: str  # the same database, through the admin's URL (for checking rows)


@pytest.fixture
async def login(pg_admin_url: str) -> AsyncIterator[Login]:
    parts = urlsplit(pg_admin_url)
    role = infra.unique_name("r_")
    database = infra.unique_name()
    password = f"Pw-{uuid.uuid4().hex}"
    conn = await asyncpg.connect(pg_admin_url)
    try:
        try:
            await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        except asyncpg.InsufficientPrivilegeError:
            pytest.skip("the test PostgreSQL's admin cannot create roles")
        await conn.execute(f'CREATE DATABASE "{database}" OWNER {role}')
    finally:
        await conn.close()
    yield Login(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        role=role,
        password=password,
        database=database,
        admin_db_url=infra.database_url_for(pg_admin_url, database),
    )
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await conn.close()


def _url(login: Login, form: str, ssl_secret: str) -> str:
    where = f"{login.host}:{login.port}"
    pw = quote(login.password, safe="")
    if form == "userinfo":
        return f"postgresql://{login.role}:{pw}@{where}/{login.database}"
    if form == "password_parameter":
        return f"postgresql://{login.role}@{where}/{login.database}?password={pw}"
    if form == "sslpassword_parameter":
        # sslpassword unlocks a client key; with TLS off asyncpg reads and ignores it.
        return (
            f"postgresql://{login.role}:{pw}@{where}/{login.database}"
            f"?sslmode=disable&sslpassword={quote(ssl_secret, safe='')}"
        )
    if form == "multi_host":
        # The first host refuses connections, so every connection is made to the second.
        dead = f"{login.host}:{free_port()}"
        return f"postgresql://{login.role}:{pw}@{dead},{where}/{login.database}?password={pw}"
    raise AssertionError(form)


def _alive(proc: WorkerProcess) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"worker exited with {proc.returncode}:\n{proc.log_tail()}")


@pytest.mark.integration
@pytest.mark.parametrize(
    "form", ["userinfo", "password_parameter", "sslpassword_parameter", "multi_host"]
)
async def test_a_running_worker_never_shows_the_password(
    form: str,
    login: Login,
    kafka_bootstrap: str,
    topics: infra.Topics,
    tmp_path: Path,
) -> None:
    ssl_secret = f"Key-{uuid.uuid4().hex}"
    url = _url(login, form, ssl_secret)
    port = free_port()
    settings = settings_for(kafka_bootstrap, url, topics, metrics_port=port, log_level="DEBUG")
    proc = worker_process(
        settings, tmp_path / "worker.log", extra_env={"WORKER_METRICS_HOST": "127.0.0.1"}
    )
    try:
        valid = proctoring_samples(exam_id="exam-secret")[0]
        await infra.produce(
            kafka_bootstrap, topics.proctoring, [(b"e:c", b"{not json"), (b"e:c", valid)]
        )

        async def stored() -> bool:
            _alive(proc)
            return await count_rows(login.admin_db_url, "proctoring_events") >= 1

        await wait_for(stored, 90, f"the valid event stored by a worker with {form}")
        dead_letters = await infra.consume_all(kafka_bootstrap, topics.dlq, 1, timeout=60)
        assert len(dead_letters) == 1

        async def ready() -> tuple[int, bytes] | None:
            _alive(proc)
            answer = await http_get(port, "/readyz")
            return answer if answer[0] == 200 else None

        _, readyz = await wait_for(ready, 30, "/readyz to answer ready")
        status, metrics = await http_get(port, "/metrics")
        assert status == 200
    finally:
        code = proc.terminate_and_wait()
    log = proc.log_path.read_text("utf-8", errors="replace")
    assert code == 0, log[-4000:]
    assert "worker starting" in log and login.database in log  # the URL is logged, redacted

    secrets = (login.password, ssl_secret)
    _assert_hidden(log, *secrets)
    _assert_hidden(metrics.decode(), *secrets)
    _assert_hidden(readyz.decode(), *secrets)
    (letter,) = dead_letters
    assert dict(letter.headers)["dlq.reason"] == b"invalid_json"
    for name, value in [("key", letter.key), ("value", letter.value), *letter.headers]:
        _assert_hidden(name, *secrets)
        _assert_hidden((value or b"").decode("utf-8", errors="replace"), *secrets)


@pytest.mark.integration
async def test_multi_host_url_worker_starts_and_consumes(
    login: Login, kafka_bootstrap: str, topics: infra.Topics
) -> None:
    where = f"{login.host}:{login.port}"
    pw = quote(login.password, safe="")
    url = f"postgresql://{login.role}:{pw}@{where},{where}/{login.database}"
    # Two hosts: the worker asks for a read-write server (docs/contract.md §2).
    read_write = f"{url}?target_session_attrs=read-write"
    assert Settings.from_env({"DATABASE_URL": url}).database_url == read_write
    settings = settings_for(kafka_bootstrap, url, topics)
    async with running_worker(settings):
        await infra.produce(kafka_bootstrap, topics.proctoring, [(b"e:c", proctoring_samples()[0])])

        async def stored() -> bool:
            return await count_rows(login.admin_db_url, "proctoring_events") >= 1

        await wait_for(stored, 90, "the event stored through a two-host URL")
