"""Settings from the environment (12-factor), validated once at start.

A bad value raises `ConfigError` whose message is one line naming the variable; the CLI prints
it and exits 2. Secrets (the SASL password, a password inside DATABASE_URL) are kept out of
`repr`, logs and error messages: use `Settings.describe()` for anything printed.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_LOG_FORMATS = ("json", "console")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap_servers: str = "localhost:9092"
    database_url: str = field(default="postgresql://localhost/postgres", repr=False)
    group_id: str = "event-worker"
    proctoring_topic: str = "proctoring.events"
    interview_topic: str = "interview.events"
    dlq_topic: str = "events.dlq"
    log_format: str = "json"
    log_level: str = "INFO"
    auto_migrate: bool = True
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    # Tuning. Defaults suit the 2-core machine the benchmark runs on.
    max_batch_records: int = 20000
    fetch_wait_ms: int = 50
    shutdown_timeout_s: float = 30.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 30.0
    # Concurrent commit lanes (one connection each); partitions are split between them.
    db_lanes: int = 2
    db_pool_size: int = 3
    db_command_timeout_s: float = 60.0
    # Group membership: a member that stops heartbeating for session_timeout_ms loses its
    # partitions; that is also how long partitions of a SIGKILLed worker stay idle.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    # 0 turns the HTTP endpoint off. Built in code (tests, embedding) it is off by default;
    # from the environment it defaults to 9464 as the contract says.
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    # /readyz turns unready once a transient failure has lasted this long.
    ready_max_retry_s: float = 60.0

    @property
    def topics(self) -> tuple[str, str]:
        return (self.proctoring_topic, self.interview_topic)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        r = _Reader(env)
        settings = cls(
            bootstrap_servers=r.text("KAFKA_BOOTSTRAP_SERVERS", _default("bootstrap_servers")),
            database_url=r.database_url("DATABASE_URL", "postgresql://localhost/postgres"),
            group_id=r.text("WORKER_GROUP_ID", _default("group_id")),
            proctoring_topic=r.topic("WORKER_PROCTORING_TOPIC", _default("proctoring_topic")),
            interview_topic=r.topic("WORKER_INTERVIEW_TOPIC", _default("interview_topic")),
            dlq_topic=r.topic("WORKER_DLQ_TOPIC", _default("dlq_topic")),
            log_format=r.choice(
                "WORKER_LOG_FORMAT", _default("log_format"), _LOG_FORMATS, lower=True
            ),
            log_level=r.choice("WORKER_LOG_LEVEL", _default("log_level"), _LOG_LEVELS, upper=True),
            auto_migrate=r.boolean("WORKER_AUTO_MIGRATE", True),
            security_protocol=r.choice(
                "KAFKA_SECURITY_PROTOCOL",
                _default("security_protocol"),
                _SECURITY_PROTOCOLS,
                upper=True,
            ),
            sasl_mechanism=r.optional_choice("KAFKA_SASL_MECHANISM", _SASL_MECHANISMS),
            sasl_username=r.optional("KAFKA_SASL_USERNAME"),
            sasl_password=r.optional("KAFKA_SASL_PASSWORD"),
            ssl_cafile=r.file("KAFKA_SSL_CAFILE"),
            max_batch_records=r.integer(
                "WORKER_MAX_BATCH_RECORDS", _default("max_batch_records"), 1, 100_000
            ),
            fetch_wait_ms=r.integer("WORKER_FETCH_WAIT_MS", _default("fetch_wait_ms"), 0, 60_000),
            shutdown_timeout_s=r.number(
                "WORKER_SHUTDOWN_TIMEOUT_S", _default("shutdown_timeout_s"), 1, 3600
            ),
            retry_initial_s=r.number(
                "WORKER_RETRY_INITIAL_S", _default("retry_initial_s"), 0.01, 60
            ),
            retry_max_s=r.number("WORKER_RETRY_MAX_S", _default("retry_max_s"), 0.1, 3600),
            db_lanes=r.integer("WORKER_DB_LANES", _default("db_lanes"), 1, 32),
            db_pool_size=r.integer("WORKER_DB_POOL_SIZE", _default("db_pool_size"), 1, 100),
            db_command_timeout_s=r.number(
                "WORKER_DB_COMMAND_TIMEOUT_S", _default("db_command_timeout_s"), 1, 3600
            ),
            session_timeout_ms=r.integer(
                "KAFKA_SESSION_TIMEOUT_MS", _default("session_timeout_ms"), 1_000, 3_600_000
            ),
            heartbeat_interval_ms=r.integer(
                "KAFKA_HEARTBEAT_INTERVAL_MS", _default("heartbeat_interval_ms"), 100, 3_600_000
            ),
            max_poll_interval_ms=r.integer(
                "KAFKA_MAX_POLL_INTERVAL_MS", _default("max_poll_interval_ms"), 1_000, 86_400_000
            ),
            metrics_port=r.integer("WORKER_METRICS_PORT", 9464, 0, 65535),
            metrics_host=r.text("WORKER_METRICS_HOST", _default("metrics_host")),
            ready_max_retry_s=r.number(
                "WORKER_READY_MAX_RETRY_S", _default("ready_max_retry_s"), 1, 86400
            ),
        )
        if settings.heartbeat_interval_ms >= settings.session_timeout_ms:
            raise ConfigError(
                "KAFKA_HEARTBEAT_INTERVAL_MS: must be lower than KAFKA_SESSION_TIMEOUT_MS"
            )
        if settings.db_pool_size < settings.db_lanes:
            raise ConfigError(
                f"WORKER_DB_POOL_SIZE: must be at least WORKER_DB_LANES ({settings.db_lanes})"
            )
        settings._check_security()
        if len({*settings.topics, settings.dlq_topic}) != 3:
            raise ConfigError(
                "WORKER_DLQ_TOPIC: the proctoring, interview and dead-letter topics must differ"
            )
        return settings

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
        """Everything worth logging at start, with secrets removed."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "database": redact_url(self.database_url),
            "group_id": self.group_id,
            "topics": list(self.topics),
            "dlq_topic": self.dlq_topic,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "auto_migrate": self.auto_migrate,
            "max_batch_records": self.max_batch_records,
        }


def _default(name: str) -> Any:
    return Settings.__dataclass_fields__[name].default


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _get(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self._get(name) or default

    def optional(self, name: str) -> str | None:
        return self._get(name)

    def topic(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if len(value) > 249 or not all(c.isalnum() or c in "._-" for c in value):
            raise ConfigError(
                f"{name}: {value!r} is not a valid Kafka topic name "
                "(letters, digits, '.', '_', '-'; at most 249)"
            )
        return value

    def choice(
        self,
        name: str,
        default: str,
        allowed: tuple[str, ...],
        *,
        lower: bool = False,
        upper: bool = False,
    ) -> str:
        value = self.text(name, default)
        value = value.lower() if lower else value.upper() if upper else value
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        return value

    def optional_choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        value = self._get(name)
        if value is None:
            return None
        return self.choice(name, value, allowed, upper=True)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}: {value!r} is not a boolean (true/false)")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not an integer") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}: {number} is outside {low}..{high}")
        return number

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a number") from None
        if not low <= number <= high:
            raise ConfigError(f"{name}: {number} is outside {low}..{high}")
        return number

    def file(self, name: str) -> str | None:
        value = self._get(name)
        if value is not None and not os.path.isfile(value):
            raise ConfigError(f"{name}: no such file: {value}")
        return value

    def database_url(self, name: str, default: str) -> str:
        value = self.text(name, default)
        try:
            parts = urlsplit(value)
        except ValueError:
            raise ConfigError(f"{name}: not a valid URL") from None
        if parts.scheme not in ("postgresql", "postgres"):
            # The value may hold a password: name the problem, never echo the value.
            raise ConfigError(f"{name}: must be a postgresql:// URL (got scheme {parts.scheme!r})")
        return value
