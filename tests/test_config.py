"""Configuration: defaults of CONTRACT §2, one clear line per bad value, no secret echoed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
