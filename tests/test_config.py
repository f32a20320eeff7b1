"""Configuration: defaults of docs/contract.md §2, one clear line per bad value, no secret
echoed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker import config
from worker.config import ConfigError, Settings, redact_url


def test_defaults_are_the_contracts() -> None:
    s = Settings.from_env({})
    assert s.bootstrap_servers == "localhost:9092"
    assert s.database_url == "postgresql://localhost/postgres"
    assert s.group_id == "event-worker"
    assert s.proctoring_topic == "proctoring.events"
    assert s.interview_topic == "interview.events"
    assert s.dlq_topic == "events.dlq"
    assert s.log_format == "json"
    assert s.log_level == "INFO"
    assert s.auto_migrate is True
    assert s.security_protocol == "PLAINTEXT"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WORKER_LOG_FORMAT": "xml"}, "WORKER_LOG_FORMAT"),
        ({"WORKER_LOG_LEVEL": "LOUD"}, "WORKER_LOG_LEVEL"),
        ({"WORKER_AUTO_MIGRATE": "maybe"}, "WORKER_AUTO_MIGRATE"),
        ({"WORKER_DLQ_TOPIC": "bad topic!"}, "WORKER_DLQ_TOPIC"),
        ({"WORKER_DLQ_TOPIC": "proctoring.events"}, "WORKER_DLQ_TOPIC"),
        ({"DATABASE_URL": "mysql://u:p@h/db"}, "DATABASE_URL"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
            "KAFKA_SASL_USERNAME",
        ),
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
        ({"WORKER_MAX_BATCH_RECORDS": "0"}, "WORKER_MAX_BATCH_RECORDS"),
        ({"WORKER_MAX_BATCH_RECORDS": "lots"}, "WORKER_MAX_BATCH_RECORDS"),
    ],
)
def test_bad_value_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    message = str(err.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message


def test_database_url_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"DATABASE_URL": "mysql://user:s3cret@host/db"})
    assert "s3cret" not in str(err.value)
    assert redact_url("postgresql://user:s3cret@db:5432/x") == "postgresql://user:***@db:5432/x"
    described = Settings.from_env({"DATABASE_URL": "postgresql://u:s3cret@db/x"}).describe()
    assert "s3cret" not in repr(described)
    assert "s3cret" not in repr(Settings.from_env({"DATABASE_URL": "postgresql://u:s3cret@db/x"}))


def test_sasl_and_ssl_reach_the_kafka_clients(tmp_path: os.PathLike[str]) -> None:
    s = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "scram-sha-512",
            "KAFKA_SASL_USERNAME": "svc",
            "KAFKA_SASL_PASSWORD": "pw",
        }
    )
    options = s.kafka_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == "pw"
    assert options["ssl_context"] is not None
    assert "pw" not in repr(s)


def test_cli_exits_2_with_one_line_for_a_bad_value() -> None:
    env = {**os.environ, "WORKER_LOG_FORMAT": "yaml", "KAFKA_SASL_PASSWORD": "hunter2"}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "WORKER_LOG_FORMAT" in lines[0]
    assert "hunter2" not in done.stderr + done.stdout


# -- one declaration per setting ------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]

# Every variable and default that existed before the settings were declared once; none may
# change (docs/contract.md §2 fixes the first eight, operators' environments the rest).
# field: (variable, default from the environment)
KNOWN: dict[str, tuple[str, object]] = {
    "bootstrap_servers": ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
    "database_url": ("DATABASE_URL", "postgresql://localhost/postgres"),
    "group_id": ("WORKER_GROUP_ID", "event-worker"),
    "proctoring_topic": ("WORKER_PROCTORING_TOPIC", "proctoring.events"),
    "interview_topic": ("WORKER_INTERVIEW_TOPIC", "interview.events"),
    "dlq_topic": ("WORKER_DLQ_TOPIC", "events.dlq"),
    "log_format": ("WORKER_LOG_FORMAT", "json"),
    "log_level": ("WORKER_LOG_LEVEL", "INFO"),
    "auto_migrate": ("WORKER_AUTO_MIGRATE", True),
    "security_protocol": ("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
    "sasl_mechanism": ("KAFKA_SASL_MECHANISM", None),
    "sasl_username": ("KAFKA_SASL_USERNAME", None),
    "sasl_password": ("KAFKA_SASL_PASSWORD", None),
    "ssl_cafile": ("KAFKA_SSL_CAFILE", None),
    "max_batch_records": ("WORKER_MAX_BATCH_RECORDS", 20000),
    "max_batch_bytes": ("WORKER_MAX_BATCH_BYTES", 16 * 1024 * 1024),
    "fetch_wait_ms": ("WORKER_FETCH_WAIT_MS", 50),
    "shutdown_timeout_s": ("WORKER_SHUTDOWN_TIMEOUT_S", 30.0),
    "retry_initial_s": ("WORKER_RETRY_INITIAL_S", 0.2),
    "retry_max_s": ("WORKER_RETRY_MAX_S", 30.0),
    "db_lanes": ("WORKER_DB_LANES", 2),
    "db_pool_size": ("WORKER_DB_POOL_SIZE", 3),
    "db_command_timeout_s": ("WORKER_DB_COMMAND_TIMEOUT_S", 60.0),
    "session_timeout_ms": ("KAFKA_SESSION_TIMEOUT_MS", 10_000),
    "heartbeat_interval_ms": ("KAFKA_HEARTBEAT_INTERVAL_MS", 3_000),
    "max_poll_interval_ms": ("KAFKA_MAX_POLL_INTERVAL_MS", 300_000),
    "metrics_port": ("WORKER_METRICS_PORT", 9464),
    "metrics_host": ("WORKER_METRICS_HOST", "0.0.0.0"),
    "ready_max_retry_s": ("WORKER_READY_MAX_RETRY_S", 60.0),
    "proctoring_retention_days": ("WORKER_PROCTORING_RETENTION_DAYS", None),
    "interview_retention_days": ("WORKER_INTERVIEW_RETENTION_DAYS", None),
}

# variable: (low, high), as enforced before the declarations existed (plus the new one).
BOUNDS: dict[str, tuple[float, float]] = {
    "WORKER_MAX_BATCH_RECORDS": (1, 100_000),
    "WORKER_MAX_BATCH_BYTES": (65_536, 1_073_741_824),
    "WORKER_FETCH_WAIT_MS": (0, 60_000),
    "WORKER_SHUTDOWN_TIMEOUT_S": (1, 3600),
    "WORKER_RETRY_INITIAL_S": (0.01, 60),
    "WORKER_RETRY_MAX_S": (0.1, 3600),
    "WORKER_DB_LANES": (1, 32),
    "WORKER_DB_POOL_SIZE": (1, 100),
    "WORKER_DB_COMMAND_TIMEOUT_S": (1, 3600),
    "KAFKA_SESSION_TIMEOUT_MS": (1_000, 3_600_000),
    "KAFKA_HEARTBEAT_INTERVAL_MS": (100, 3_600_000),
    "KAFKA_MAX_POLL_INTERVAL_MS": (1_000, 86_400_000),
    "WORKER_METRICS_PORT": (0, 65535),
    "WORKER_READY_MAX_RETRY_S": (1, 86400),
    "WORKER_PROCTORING_RETENTION_DAYS": (1, 36_500),
    "WORKER_INTERVIEW_RETENTION_DAYS": (1, 36_500),
}

# What a bound needs from the other settings to be accepted (the cross-field checks).
COMPANIONS: dict[tuple[str, str], dict[str, str]] = {
    ("WORKER_DB_POOL_SIZE", "low"): {"WORKER_DB_LANES": "1"},
    ("WORKER_DB_LANES", "high"): {"WORKER_DB_POOL_SIZE": "100"},
    ("KAFKA_SESSION_TIMEOUT_MS", "low"): {"KAFKA_HEARTBEAT_INTERVAL_MS": "100"},
}


def test_every_setting_is_declared_once_with_its_variable_and_help() -> None:
    declared = {f.name: config.setting_of(f) for f in dataclasses.fields(Settings)}
    assert set(declared) == set(KNOWN)
    for name, spec in declared.items():
        assert spec.env == KNOWN[name][0], name
        assert spec.help and "\n" not in spec.help, name
    variables = [spec.env for spec in declared.values()]
    assert len(variables) == len(set(variables))


def test_defaults_from_the_environment_and_from_code() -> None:
    from_env = Settings.from_env({})
    in_code = Settings()
    for name, (_, default) in KNOWN.items():
        assert getattr(from_env, name) == default, name
        # Built in code, the HTTP endpoint is off: tests and embedders run several workers.
        expected = 0 if name == "metrics_port" else default
        assert getattr(in_code, name) == expected, name


def test_from_env_reads_every_declared_variable() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "DATABASE_URL": "postgresql://u@db:5433/x",
        "WORKER_GROUP_ID": "g",
        "WORKER_PROCTORING_TOPIC": "p",
        "WORKER_INTERVIEW_TOPIC": "i",
        "WORKER_DLQ_TOPIC": "d",
        "WORKER_LOG_FORMAT": "Console",
        "WORKER_LOG_LEVEL": "debug",
        "WORKER_AUTO_MIGRATE": "off",
        "KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
        "KAFKA_SASL_MECHANISM": "plain",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "pw",
        "KAFKA_SSL_CAFILE": __file__,
        "WORKER_MAX_BATCH_RECORDS": "7",
        "WORKER_MAX_BATCH_BYTES": "65536",
        "WORKER_FETCH_WAIT_MS": "9",
        "WORKER_SHUTDOWN_TIMEOUT_S": "2.5",
        "WORKER_RETRY_INITIAL_S": "0.5",
        "WORKER_RETRY_MAX_S": "5",
        "WORKER_DB_LANES": "3",
        "WORKER_DB_POOL_SIZE": "4",
        "WORKER_DB_COMMAND_TIMEOUT_S": "7",
        "KAFKA_SESSION_TIMEOUT_MS": "20000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "2000",
        "KAFKA_MAX_POLL_INTERVAL_MS": "60000",
        "WORKER_METRICS_PORT": "0",
        "WORKER_METRICS_HOST": "127.0.0.1",
        "WORKER_READY_MAX_RETRY_S": "5",
        "WORKER_PROCTORING_RETENTION_DAYS": "1095",
        "WORKER_INTERVIEW_RETENTION_DAYS": "30",
    }
    assert set(env) == {variable for variable, _ in KNOWN.values()}
    s = Settings.from_env(env)
    for name, (_, default) in KNOWN.items():
        assert getattr(s, name) != default, name
    assert (s.log_format, s.log_level, s.security_protocol) == (
        "console",
        "DEBUG",
        "SASL_PLAINTEXT",
    )
    assert (s.sasl_mechanism, s.auto_migrate, s.max_batch_bytes) == ("PLAIN", False, 65_536)


@pytest.mark.parametrize("variable", sorted(BOUNDS))
def test_bounds_are_enforced_and_name_the_variable(variable: str) -> None:
    low, high = BOUNDS[variable]
    step = 1 if isinstance(low, int) and isinstance(high, int) else 0.001
    for edge, value in (("low", low), ("high", high)):
        if (variable, edge) == ("KAFKA_HEARTBEAT_INTERVAL_MS", "high"):
            continue  # can never be below the session timeout's own maximum
        env = {variable: str(value), **COMPANIONS.get((variable, edge), {})}
        assert getattr(Settings.from_env(env), _field_of(variable)) == value
    for outside in (low - step, high + step):
        with pytest.raises(ConfigError) as err:
            Settings.from_env({variable: str(outside)})
        assert str(err.value).startswith(f"{variable}: ")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KAFKA_HEARTBEAT_INTERVAL_MS": "10000"}, "KAFKA_HEARTBEAT_INTERVAL_MS"),
        ({"WORKER_DB_LANES": "4"}, "WORKER_DB_POOL_SIZE"),
        ({"WORKER_INTERVIEW_TOPIC": "events.dlq"}, "WORKER_DLQ_TOPIC"),
        ({"WORKER_MAX_BATCH_BYTES": "1k"}, "WORKER_MAX_BATCH_BYTES"),
        ({"WORKER_METRICS_PORT": "70000"}, "WORKER_METRICS_PORT"),
    ],
)
def test_cross_field_and_new_checks_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(f"{variable}:")
    assert "\n" not in str(err.value)


def test_max_batch_bytes_is_declared_and_described() -> None:
    assert Settings().max_batch_bytes == 16_777_216
    assert Settings.from_env({"WORKER_MAX_BATCH_BYTES": "1048576"}).max_batch_bytes == 1 << 20
    assert Settings().describe()["max_batch_bytes"] == 16_777_216


def test_code_construction_is_unchanged() -> None:
    s = Settings(group_id="g", max_batch_records=5, metrics_port=1234)
    assert (s.group_id, s.max_batch_records, s.metrics_port) == ("g", 5, 1234)
    replaced = dataclasses.replace(Settings(), database_url="postgresql://u:pw@h/db", db_lanes=4)
    assert replaced.database_url == "postgresql://u:pw@h/db" and replaced.db_lanes == 4
    assert "pw" not in repr(replaced)
    with pytest.raises(dataclasses.FrozenInstanceError):
        replaced.db_lanes = 5  # type: ignore[misc]


def test_describe_covers_every_setting_without_secrets() -> None:
    s = dataclasses.replace(
        Settings(),
        database_url="postgresql://u:hunter2@h/db",
        sasl_password="hunter3",
        security_protocol="SASL_SSL",
    )
    described = s.describe()
    assert set(described) == set(KNOWN)
    assert described["database_url"] == "postgresql://u:***@h/db"
    assert described["sasl_password"] == "***"
    assert "hunter" not in repr(described)


def test_readme_configuration_table_is_generated_from_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    generated = config.markdown_table().strip()
    assert table == generated, "README is stale: paste the output of `python -m worker.config`"
    assert generated.count("\n") == 1 + len(KNOWN)  # header, rule, one row per setting


def _field_of(variable: str) -> str:
    (name,) = [name for name, (env, _) in KNOWN.items() if env == variable]
    return name


def test_to_env_gives_back_the_same_settings() -> None:
    """What a test or supervisor writes into a worker process's environment reads back as
    the settings it came from, field for field."""
    settings = dataclasses.replace(
        Settings(),
        group_id="g",
        max_batch_bytes=1 << 20,
        db_lanes=3,
        db_pool_size=4,
        shutdown_timeout_s=2.5,
        auto_migrate=False,
        metrics_port=0,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="p",
    )
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.env_name("dlq_topic") == "WORKER_DLQ_TOPIC"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        (
            "postgresql://u@db1:5432,db2:5432/x",
            "postgresql://u@db1:5432,db2:5432/x?target_session_attrs=read-write",
        ),
        (
            "postgresql://u@db1,db2/x?sslmode=require",
            "postgresql://u@db1,db2/x?sslmode=require&target_session_attrs=read-write",
        ),
        (
            "postgresql:///x?host=db1,db2",
            "postgresql:///x?host=db1,db2&target_session_attrs=read-write",
        ),
        (
            "postgresql://u@db1,db2/x?target_session_attrs=any",
            "postgresql://u@db1,db2/x?target_session_attrs=any",
        ),
    ],
)
def test_several_hosts_mean_a_read_write_server_unless_chosen(
    url: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a primary and its standbys listed, asyncpg's default (`any`) connects to a
    read-only standby while the primary is down; the worker asks for read-write unless the
    operator chose otherwise, in the URL or in PGTARGETSESSIONATTRS."""
    monkeypatch.delenv("PGTARGETSESSIONATTRS", raising=False)
    assert Settings.from_env({"DATABASE_URL": url}).database_url == expected
    assert Settings(database_url=url).database_url == expected
    monkeypatch.setenv("PGTARGETSESSIONATTRS", "prefer-standby")
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url
