"""Settings from the environment (12-factor), validated once at start.

Invariants:

- Each setting is declared once, as a field of `Settings` whose metadata is a `Setting`: its
  variable, type rules (bounds or choices) and help. `Settings.from_env` and the README's
  configuration table (`markdown_table()`, printed by `python -m worker.config`) are derived
  from those declarations; tests/test_config.py fails when the README differs.
- A bad value raises `ConfigError` whose message is one line starting with the variable's name;
  the CLI prints it and exits 2. Settings built in code (`Settings(...)`,
  `dataclasses.replace`) are not validated: they come from tests and embedders, not operators.
- Secrets (the SASL password; a password anywhere in DATABASE_URL) never reach `repr`, logs or
  error messages: `Settings.describe()` is what gets printed, and `redact_url` hides every place
  asyncpg reads a password from a URL. asyncpg accepts only URLs (connect_utils.
  _parse_connect_dsn_and_args): it reads a password from the user info and from the query
  parameters `password` and `sslpassword`; `passfile` and `service` name files, not secrets.
  A DATABASE_URL that asyncpg could misread (an unencoded '@', '/', '?' or '#' in the
  password moves part of it into the host, path or query) is refused, and messages about it
  never repeat any of it. `redact_url` never raises: what it cannot parse it hides whole.
- `describe()` has one key per setting, named like the field.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_POSTGRES_SCHEMES = ("postgresql", "postgres")

UNPARSEABLE_URL = "<unparseable URL>"
_MASK = "***"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


# -- declarations -----------------------------------------------------------------------------

Kind = Literal["text", "topic", "choice", "boolean", "integer", "number", "file", "database_url"]
_METADATA_KEY = "setting"
# Marks "the environment's default is the field's own" (dataclasses.MISSING would mean "no
# default" to the dataclass machinery of Setting itself).
_SAME: Any = object()


@dataclass(frozen=True, slots=True)
class Setting:
    """How one field of `Settings` is read from the environment and documented."""

    env: str
    help: str
    kind: Kind = "text"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    case: Literal["lower", "upper"] | None = None
    # From the environment the default may differ from the field's (see metrics_port).
    env_default: Any = _SAME
    secret: bool = False


def _declare(default: Any, env: str, help: str, kind: Kind = "text", **rules: Any) -> Any:
    spec = Setting(env=env, help=help, kind=kind, **rules)
    # repr=False keeps a secret out of every repr of Settings (and of tracebacks showing locals).
    return field(default=default, repr=not spec.secret, metadata={_METADATA_KEY: spec})


def setting_of(f: dataclasses.Field[Any]) -> Setting:
    """The declaration of one field of `Settings`."""
    spec = f.metadata.get(_METADATA_KEY)
    if not isinstance(spec, Setting):
        raise TypeError(f"Settings.{f.name} has no Setting declaration")
    return spec


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap_servers: str = _declare(
        "localhost:9092", "KAFKA_BOOTSTRAP_SERVERS", "comma-separated `host:port` list"
    )
    database_url: str = _declare(
        "postgresql://localhost/postgres",
        "DATABASE_URL",
        "`postgresql://` URL (libpq `key=value` strings are refused); several `host:port` "
        "allowed; TLS via `?sslmode=verify-full&sslrootcert=...`; passwords logged as `***`",
        "database_url",
        secret=True,
    )
    group_id: str = _declare(
        "event-worker", "WORKER_GROUP_ID", "consumer group; also the key of `consumer_offsets` rows"
    )
    proctoring_topic: str = _declare(
        "proctoring.events", "WORKER_PROCTORING_TOPIC", "Proctorme events", "topic"
    )
    interview_topic: str = _declare(
        "interview.events", "WORKER_INTERVIEW_TOPIC", "micro1 events", "topic"
    )
    dlq_topic: str = _declare("events.dlq", "WORKER_DLQ_TOPIC", "dead letters", "topic")
    log_format: str = _declare(
        "json",
        "WORKER_LOG_FORMAT",
        "`json` lines, or `console` for people",
        "choice",
        choices=_LOG_FORMATS,
        case="lower",
    )
    log_level: str = _declare(
        "INFO",
        "WORKER_LOG_LEVEL",
        "`DEBUG` adds one line per batch and per dead letter",
        "choice",
        choices=_LOG_LEVELS,
        case="upper",
    )
    auto_migrate: bool = _declare(
        True, "WORKER_AUTO_MIGRATE", "apply migrations at start of `worker run`", "boolean"
    )
    security_protocol: str = _declare(
        "PLAINTEXT",
        "KAFKA_SECURITY_PROTOCOL",
        "how the worker talks to Kafka",
        "choice",
        choices=_SECURITY_PROTOCOLS,
        case="upper",
    )
    sasl_mechanism: str | None = _declare(
        None,
        "KAFKA_SASL_MECHANISM",
        "required with `SASL_SSL` and `SASL_PLAINTEXT`, refused otherwise",
        "choice",
        choices=_SASL_MECHANISMS,
        case="upper",
    )
    sasl_username: str | None = _declare(None, "KAFKA_SASL_USERNAME", "required with SASL")
    sasl_password: str | None = _declare(
        None, "KAFKA_SASL_PASSWORD", "required with SASL; never logged", secret=True
    )
    ssl_cafile: str | None = _declare(
        None, "KAFKA_SSL_CAFILE", "CA bundle for SSL/SASL_SSL (system CAs otherwise)", "file"
    )
    # Tuning. Defaults suit the 2-core machine the benchmark runs on.
    max_batch_records: int = _declare(
        20000,
        "WORKER_MAX_BATCH_RECORDS",
        "records per batch (one transaction) at most; batches are smaller when traffic is light",
        "integer",
        low=1,
        high=100_000,
    )
    max_batch_bytes: int = _declare(
        16 * 1024 * 1024,
        "WORKER_MAX_BATCH_BYTES",
        "a batch stops growing once its records' keys and values reach this many bytes "
        "(a single larger record still forms a batch of its own)",
        "integer",
        low=65_536,
        high=1_073_741_824,
    )
    fetch_wait_ms: int = _declare(
        50,
        "WORKER_FETCH_WAIT_MS",
        "how long a fetch waits for records (also the broker-side fetch wait)",
        "integer",
        low=0,
        high=60_000,
    )
    shutdown_timeout_s: float = _declare(
        30.0, "WORKER_SHUTDOWN_TIMEOUT_S", "bound on a clean shutdown", "number", low=1, high=3600
    )
    retry_initial_s: float = _declare(
        0.2,
        "WORKER_RETRY_INITIAL_S",
        "first backoff delay after a transient failure",
        "number",
        low=0.01,
        high=60,
    )
    retry_max_s: float = _declare(
        30.0,
        "WORKER_RETRY_MAX_S",
        "longest backoff delay between retries",
        "number",
        low=0.1,
        high=3600,
    )
    # Concurrent commit lanes (one connection each); partitions are split between them.
    db_lanes: int = _declare(
        2,
        "WORKER_DB_LANES",
        "concurrent commit lanes (partitions are split between them; one connection each)",
        "integer",
        low=1,
        high=32,
    )
    db_pool_size: int = _declare(
        3,
        "WORKER_DB_POOL_SIZE",
        "PostgreSQL connections per worker (at least the lanes)",
        "integer",
        low=1,
        high=100,
    )
    db_command_timeout_s: float = _declare(
        60.0,
        "WORKER_DB_COMMAND_TIMEOUT_S",
        "client-side timeout of one statement",
        "number",
        low=1,
        high=3600,
    )
    # Group membership: a member that stops heartbeating for session_timeout_ms loses its
    # partitions; that is also how long partitions of a SIGKILLed worker stay idle.
    session_timeout_ms: int = _declare(
        10_000,
        "KAFKA_SESSION_TIMEOUT_MS",
        "a member silent this long loses its partitions (also how long a killed worker's "
        "partitions stay idle)",
        "integer",
        low=1_000,
        high=3_600_000,
    )
    heartbeat_interval_ms: int = _declare(
        3_000,
        "KAFKA_HEARTBEAT_INTERVAL_MS",
        "group heartbeat period; below the session timeout",
        "integer",
        low=100,
        high=3_600_000,
    )
    max_poll_interval_ms: int = _declare(
        300_000,
        "KAFKA_MAX_POLL_INTERVAL_MS",
        "longest pause between two fetches before the group evicts the member",
        "integer",
        low=1_000,
        high=86_400_000,
    )
    # 0 turns the HTTP endpoint off. Built in code (tests, embedding) it is off by default, so
    # several workers fit in one process; from the environment it defaults to 9464 as the
    # contract says.
    metrics_port: int = _declare(
        0,
        "WORKER_METRICS_PORT",
        "`/metrics`, `/healthz`, `/readyz`; `0` turns the endpoint off",
        "integer",
        low=0,
        high=65535,
        env_default=9464,
    )
    metrics_host: str = _declare(
        "0.0.0.0", "WORKER_METRICS_HOST", "address the endpoint listens on"
    )
    ready_max_retry_s: float = _declare(
        60.0,
        "WORKER_READY_MAX_RETRY_S",
        "`/readyz` turns unready once a transient failure lasts this long",
        "number",
        low=1,
        high=86400,
    )

    proctoring_retention_days: int | None = _declare(
        None,
        "WORKER_PROCTORING_RETENTION_DAYS",
        "proctoring events, system checks and sessions older than this many days are dropped, "
        'and records older than it store nothing (README "Data lifecycle"); unset: kept forever',
        "integer",
        low=1,
        high=36_500,
    )
    interview_retention_days: int | None = _declare(
        None,
        "WORKER_INTERVIEW_RETENTION_DAYS",
        "interview reports (transcripts, evaluations, recording URLs), interviews and applicants "
        "whose latest record is older than this many days are deleted, and records older than "
        'it store nothing (README "Data lifecycle"); unset: kept forever',
        "integer",
        low=1,
        high=36_500,
    )

    def __post_init__(self) -> None:
        # Here rather than in the parser: settings built in code connect the same way.
        object.__setattr__(self, "database_url", with_read_write_default(self.database_url))

    @property
    def topics(self) -> tuple[str, str]:
        return (self.proctoring_topic, self.interview_topic)

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of the field `name`, for messages about its value."""
        return setting_of(cls.__dataclass_fields__[name]).env

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` return these settings (None values left
        out): how a test or a supervisor starts a worker process with them."""
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            env[setting_of(f).env] = str(value)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {f.name: _read(f, env) for f in dataclasses.fields(cls)}
        settings = cls(**values)
        settings._check_consistency()
        return settings

    def _check_consistency(self) -> None:
        """The rules that involve two settings; each message names the one to change."""
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigError(
                "KAFKA_HEARTBEAT_INTERVAL_MS: must be lower than KAFKA_SESSION_TIMEOUT_MS"
            )
        if self.db_pool_size < self.db_lanes:
            raise ConfigError(
                f"WORKER_DB_POOL_SIZE: must be at least WORKER_DB_LANES ({self.db_lanes})"
            )
        self._check_security()
        if len({*self.topics, self.dlq_topic}) != 3:
            raise ConfigError(
                "WORKER_DLQ_TOPIC: the proctoring, interview and dead-letter topics must differ"
            )

    def _check_security(self) -> None:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl:
            if self.sasl_mechanism is None:
                raise ConfigError(
                    f"KAFKA_SASL_MECHANISM: required when KAFKA_SECURITY_PROTOCOL="
                    f"{self.security_protocol} (one of {', '.join(_SASL_MECHANISMS)})"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(
                    "KAFKA_SASL_USERNAME: KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are "
                    f"required when KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
                )
        elif self.sasl_mechanism is not None:
            raise ConfigError(
                "KAFKA_SASL_MECHANISM: set, but KAFKA_SECURITY_PROTOCOL is "
                f"{self.security_protocol}; use SASL_SSL or SASL_PLAINTEXT"
            )

    def kafka_options(self) -> dict[str, Any]:
        """Connection options shared by the consumer, the producer and the admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options

    def describe(self) -> dict[str, Any]:
        """Every setting by field name, secrets hidden: what the worker logs at start."""
        return {
            f.name: _shown(setting_of(f), getattr(self, f.name)) for f in dataclasses.fields(self)
        }


def _shown(spec: Setting, value: Any) -> Any:
    if spec.kind == "database_url":
        return redact_url(value)
    if spec.secret and value is not None:
        return _MASK
    return value


# -- reading the environment ------------------------------------------------------------------


def _read(f: dataclasses.Field[Any], env: Mapping[str, str]) -> Any:
    spec = setting_of(f)
    raw = (env.get(spec.env) or "").strip()
    if not raw:  # unset and blank both mean "the default", as compose files often set "".
        return f.default if spec.env_default is _SAME else spec.env_default
    return _PARSERS[spec.kind](spec, raw)


def _text(spec: Setting, raw: str) -> str:
    return raw


def _topic(spec: Setting, raw: str) -> str:
    if len(raw) > 249 or not all(c.isalnum() or c in "._-" for c in raw):
        raise ConfigError(
            f"{spec.env}: {raw!r} is not a valid Kafka topic name "
            "(letters, digits, '.', '_', '-'; at most 249)"
        )
    return raw


def _choice(spec: Setting, raw: str) -> str:
    value = raw.lower() if spec.case == "lower" else raw.upper() if spec.case == "upper" else raw
    if value not in spec.choices:
        raise ConfigError(f"{spec.env}: {value!r} is not one of {', '.join(spec.choices)}")
    return value


def _boolean(spec: Setting, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{spec.env}: {raw!r} is not a boolean (true/false)")


def _integer(spec: Setting, raw: str) -> int:
    try:
        number = int(raw)
    except ValueError:
        raise ConfigError(f"{spec.env}: {raw!r} is not an integer") from None
    return _bounded(spec, number)


def _number(spec: Setting, raw: str) -> float:
    try:
        number = float(raw)
    except ValueError:
        raise ConfigError(f"{spec.env}: {raw!r} is not a number") from None
    return _bounded(spec, number)


def _bounded(spec: Setting, number: Any) -> Any:
    assert spec.low is not None and spec.high is not None, spec.env
    if not spec.low <= number <= spec.high:
        raise ConfigError(f"{spec.env}: {number} is outside {_num(spec.low)}..{_num(spec.high)}")
    return number


def _file(spec: Setting, raw: str) -> str:
    if not os.path.isfile(raw):
        raise ConfigError(f"{spec.env}: no such file: {raw}")
    return raw


def _database_url(spec: Setting, raw: str) -> str:
    problem = database_url_problem(raw)
    if problem is not None:
        raise ConfigError(f"{spec.env}: {problem}")
    return raw


_PARSERS: dict[Kind, Callable[[Setting, str], Any]] = {
    "text": _text,
    "topic": _topic,
    "choice": _choice,
    "boolean": _boolean,
    "integer": _integer,
    "number": _number,
    "file": _file,
    "database_url": _database_url,
}


# -- DATABASE_URL -----------------------------------------------------------------------------

_ENCODE_HINT = "percent-encode '@', '/', '?', '#' and '&' in the user and password"
_BRACKETED = re.compile(r"\[[^\]]+\](?::(?P<port>[^,]*))?")


def database_url_problem(url: str) -> str | None:
    """Why asyncpg would refuse or misread `url`, in words that quote none of it; None if fine.

    Mirrors asyncpg's own parsing so that its errors, which do quote parts of the URL (a port,
    a query field), are never reached.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"not a valid URL ({_ENCODE_HINT})"
    if parts.scheme not in _POSTGRES_SCHEMES or not _has_authority(url, parts.scheme):
        if "=" in url and "://" not in url:
            return (
                "a libpq keyword/value string (host=... password=...) is not accepted; "
                "asyncpg takes a postgresql:// URL"
            )
        return "must be a postgresql:// or postgres:// URL"
    if "#" in url:
        return f"has a '#', which ends a URL ({_ENCODE_HINT}; '#' is %23)"
    if parts.netloc.count("@") > 1 or "@" in parts.path:
        return f"has an '@' outside the user info ({_ENCODE_HINT}; '@' is %40)"
    hostspec = parts.netloc.rpartition("@")[2]
    return _hosts_problem(hostspec) or _query_problem(parts.query)


# asyncpg's own environment variable for the same choice; an operator who sets it decides.
_SESSION_ATTRS_ENV = "PGTARGETSESSIONATTRS"


def with_read_write_default(url: str) -> str:
    """`url` asking for a read-write server when it lists several hosts and says nothing
    about which to take (no `target_session_attrs`, no PGTARGETSESSIONATTRS).

    asyncpg's default is `any`: the first host that accepts a connection. With a primary and
    its standbys listed, that is a read-only standby whenever the primary is down (during a
    failover, before a promotion): the worker would connect, answer SELECT 1, and fail every
    commit. With `read-write` it connects only where it can write, and waits for a primary
    otherwise. An explicit choice (in the URL or the environment) is left as it is."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2].split(",")
    query = parse_qsl(parts.query, keep_blank_values=True)
    for name, value in query:
        if name == "host":
            hosts += value.split(",")
        if name == "target_session_attrs":
            return url
    if len([h for h in hosts if h]) < 2 or os.environ.get(_SESSION_ATTRS_ENV):
        return url
    # Appended as text: the URL is otherwise kept exactly as given ('#' is refused anyway).
    separator = "&" if parts.query else "" if url.endswith("?") else "?"
    return f"{url}{separator}target_session_attrs=read-write"


def _has_authority(url: str, scheme: str) -> bool:
    # urlsplit lower-cases the scheme; compare the rest of the original.
    return url[len(scheme) : len(scheme) + 3] == "://"


def _hosts_problem(hostspec: str) -> str | None:
    if not hostspec:
        return None  # asyncpg's defaults (PGHOST, the local sockets)
    for host in hostspec.split(","):
        if not host:
            return "has an empty host in its host list"
        if host.startswith("["):
            match = _BRACKETED.fullmatch(host)
            if match is None:
                return f"has a malformed [IPv6] host ({_ENCODE_HINT})"
            port = match["port"] or ""
        else:
            port = host.partition(":")[2]
        if port and not _is_port(unquote(port)):
            return f"has a port that is not a number in 1..65535 ({_ENCODE_HINT})"
    return None


def _query_problem(query: str) -> str | None:
    if not query:
        return None
    # asyncpg parses the query with strict_parsing: every field must be name=value.
    pairs = [pair.partition("=") for pair in query.split("&")]
    if any(not sep for _, sep, _ in pairs):
        return (
            "has a malformed query string: write each option as name=value "
            "and percent-encode '&', '=' and '#' inside values"
        )
    for name, _, value in pairs:
        if unquote_plus(name) == "port" and not all(
            _is_port(p) for p in unquote_plus(value).split(",")
        ):
            return "has a port option that is not a number in 1..65535"
    return None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def redact_url(url: str) -> str:
    """`url` with every password hidden, for logs and messages; never raises.

    Hides the user info's password and the values of query options named like a password
    (`password`, `sslpassword`). Anything whose password cannot be located with certainty
    (not a URL, an '@' or '#' where it cannot belong, a malformed query) is hidden whole.
    """
    try:
        return _redact(url)
    except Exception:  # a redactor that raises would take the worker down with it
        return UNPARSEABLE_URL


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or not _has_authority(url, parts.scheme):
        return UNPARSEABLE_URL  # e.g. libpq's "host=h password=x": no structure to keep
    # An unencoded '/', '?' or '#' in a password ends the authority early and pushes the
    # rest of the user info, up to its '@', into the path, query or fragment.
    if "#" in url or "@" in parts.path or "@" in parts.query:
        return UNPARSEABLE_URL
    # The last '@' ends the user info: an unencoded '@' in the password is hidden with it.
    userinfo, at, hostspec = parts.netloc.rpartition("@")
    auth = ""
    if at:
        user, colon, _ = userinfo.partition(":")
        auth = f"{user}:{_MASK}@" if colon else f"{user}@"
    query = f"?{_redact_query(parts.query)}" if parts.query else ""
    return f"{parts.scheme}://{auth}{hostspec}{parts.path}{query}"


def _redact_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        name, sep, _ = pair.partition("=")
        if not sep:
            raise ValueError("malformed query field")  # hidden whole by redact_url
        # Case-insensitively, and any option naming a password: over-hiding costs nothing.
        pairs.append(f"{name}={_MASK}" if "password" in unquote_plus(name).lower() else pair)
    return "&".join(pairs)


# -- documentation ----------------------------------------------------------------------------


def markdown_table() -> str:
    """The README's configuration table, one row per declared setting."""
    rows = [
        "| variable | default | values | meaning |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(Settings):
        spec = setting_of(f)
        default = f.default if spec.env_default is _SAME else spec.env_default
        rows.append(f"| `{spec.env}` | {_cell(default)} | {_values(spec)} | {spec.help} |")
    return "\n".join(rows) + "\n"


def _cell(default: Any) -> str:
    if default is None:
        return "–"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float):
        return f"`{_num(default)}`"
    return f"`{default}`"


def _values(spec: Setting) -> str:
    if spec.kind == "choice":
        return ", ".join(f"`{c}`" for c in spec.choices)
    if spec.kind in ("integer", "number"):
        assert spec.low is not None and spec.high is not None
        what = "integer" if spec.kind == "integer" else "number"
        return f"{what} {_num(spec.low)}..{_num(spec.high)}"
    return {
        "text": "text",
        "topic": "topic name",
        "boolean": "`true`/`false`",
        "file": "file path",
        "database_url": "URL",
    }[spec.kind]


def _num(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


if __name__ == "__main__":
    print(markdown_table(), end="")
