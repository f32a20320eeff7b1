"""compose.yaml, Dockerfile and .dockerignore, checked statically (no Docker engine needed).

What a container engine would reject or silently get wrong is asserted here: the KRaft settings,
the worker's configuration against docs/contract.md §2 (and `Settings.from_env` itself), the topics
and partition counts, health checks (the worker's is run against a local HTTP server), dependency
conditions, the image's stages, user and entry point, and that every path the Dockerfile copies
exists and is not excluded from the build context. `docker compose config` runs too when a
Compose v2 binary is installed.
"""

from __future__ import annotations

import base64
import fnmatch
import http.server
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from worker.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONTRACT = ROOT / "docs" / "contract.md"

# docs/contract.md §2: the names are fixed. Checked against the contract itself.
CONTRACT_VARIABLES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "DATABASE_URL",
    "WORKER_GROUP_ID",
    "WORKER_PROCTORING_TOPIC",
    "WORKER_INTERVIEW_TOPIC",
    "WORKER_DLQ_TOPIC",
    "WORKER_LOG_FORMAT",
    "WORKER_LOG_LEVEL",
    "WORKER_PROCTORING_RETENTION_DAYS",
    "WORKER_INTERVIEW_RETENTION_DAYS",
)
PARTITIONS = {"WORKER_PROCTORING_TOPIC": 12, "WORKER_INTERVIEW_TOPIC": 12, "WORKER_DLQ_TOPIC": 3}
METRICS_PORT = 9464


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text("utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict of strings, from either of Compose's two spellings."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    for key, value in env.items():
        assert isinstance(value, str), f"quote {key}'s value: YAML may retype {value!r}"
    return env


@pytest.fixture(scope="module")
def worker_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return environment(services["worker"])


@pytest.fixture(scope="module")
def kafka_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return environment(services["kafka"])


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """`NAME://host:port,...` as {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


# compose.yaml: services and images -----------------------------------------------------------


def test_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "postgres", "topics", "worker"} <= set(services)
    assert not any("zookeeper" in name for name in services)


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]["image"]
    repo, _, tag = kafka.partition(":")
    assert repo == "apache/kafka"
    assert re.fullmatch(r"3\.9\.\d+|4\.\d+\.\d+", tag), kafka
    assert services["topics"]["image"] == kafka
    repo, _, tag = services["postgres"]["image"].partition(":")
    assert repo == "postgres" and tag and tag != "latest"


# Kafka in KRaft mode ---------------------------------------------------------------------------


def test_kafka_runs_in_kraft_mode(
    services: dict[str, dict[str, Any]], kafka_env: dict[str, str]
) -> None:
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = kafka_env["KAFKA_NODE_ID"]
    controllers = listeners(kafka_env["KAFKA_LISTENERS"])
    controller_name = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller_name in controllers
    port = controllers[controller_name][1]
    assert kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:{port}"
    for service in services.values():
        assert not any("ZOOKEEPER" in key for key in environment(service))
    # CLUSTER_ID: a base64url-encoded 16-byte UUID, as `kafka-storage.sh random-uuid` makes.
    cluster_id = kafka_env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_kafka_listeners(services: dict[str, dict[str, Any]], kafka_env: dict[str, str]) -> None:
    bound = listeners(kafka_env["KAFKA_LISTENERS"])
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    assert bound["PLAINTEXT"] == ("", 9092)
    assert bound["CONTROLLER"] == ("", 9093)
    assert advertised["PLAINTEXT"] == ("kafka", 9092)
    external = [name for name, (host, _) in advertised.items() if host == "localhost"]
    assert external == ["EXTERNAL"]
    assert advertised["EXTERNAL"] == ("localhost", 29092)
    assert bound["EXTERNAL"][1] == 29092
    assert any(str(p).endswith("29092:29092") for p in services["kafka"]["ports"])
    assert set(advertised) <= set(bound)
    protocols = dict(
        p.split(":") for p in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(bound) <= set(protocols)
    assert kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised


def test_kafka_single_node_settings(kafka_env: dict[str, str]) -> None:
    assert kafka_env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kafka_env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert kafka_env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


# Health checks and dependencies ----------------------------------------------------------------


def healthcheck_test(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    return list(test)


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("kafka", "postgres", "worker"):
        test = healthcheck_test(services[name])
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert not services[name]["healthcheck"].get("disable"), name
    kafka = healthcheck_test(services["kafka"])
    assert kafka[1:] == [
        "/opt/kafka/bin/kafka-broker-api-versions.sh",
        "--bootstrap-server",
        "localhost:9092",
    ]
    postgres = " ".join(healthcheck_test(services["postgres"]))
    assert "pg_isready" in postgres
    worker = " ".join(healthcheck_test(services["worker"]))
    assert "/healthz" in worker and "WORKER_METRICS_PORT" in worker


def test_dependencies(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]["depends_on"]
    assert worker["postgres"]["condition"] == "service_healthy"
    assert worker["topics"]["condition"] == "service_completed_successfully"
    assert worker.get("kafka", {"condition": "service_healthy"})["condition"] == "service_healthy"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["topics"].get("restart", "no") == "no"


# The worker service ----------------------------------------------------------------------------


def test_worker_service_shape(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 3
    assert "container_name" not in worker  # replicas need distinct names
    assert "ports" not in worker  # three replicas cannot publish one host port
    assert worker["restart"] == "unless-stopped"
    build = worker["build"]
    assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_stop_grace_period_outlasts_the_shutdown_timeout(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str]
) -> None:
    grace = services["worker"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, grace
    assert int(match[1]) == 40
    settings = Settings.from_env(worker_env)
    assert int(match[1]) > settings.shutdown_timeout_s + 5  # the CLI's forced-exit margin


def test_contract_variables_are_the_ones_tested() -> None:
    text = CONTRACT.read_text("utf-8")
    section = text.split("## 2.", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `([A-Z_]+)` \|", section, re.M)
    assert names and set(names) == set(CONTRACT_VARIABLES)


def test_worker_sets_every_contract_variable(worker_env: dict[str, str]) -> None:
    missing = [name for name in CONTRACT_VARIABLES if not worker_env.get(name, "").strip()]
    assert not missing
    assert worker_env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert worker_env["DATABASE_URL"] == "postgresql://worker:worker@postgres:5432/events"
    assert worker_env["WORKER_LOG_FORMAT"] == "json"
    assert worker_env["WORKER_METRICS_PORT"] == str(METRICS_PORT)


def test_worker_environment_is_a_valid_configuration(worker_env: dict[str, str]) -> None:
    """The worker would start with this environment (a bad value would exit 2)."""
    settings = Settings.from_env(worker_env)
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.group_id == worker_env["WORKER_GROUP_ID"]
    assert settings.topics == (
        worker_env["WORKER_PROCTORING_TOPIC"],
        worker_env["WORKER_INTERVIEW_TOPIC"],
    )
    assert settings.dlq_topic == worker_env["WORKER_DLQ_TOPIC"]
    assert settings.log_format == "json"


def test_worker_reaches_kafka_on_its_internal_listener(
    worker_env: dict[str, str], kafka_env: dict[str, str]
) -> None:
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    host, port = advertised[kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert worker_env["KAFKA_BOOTSTRAP_SERVERS"] == f"{host}:{port}"


def test_database_url_points_at_the_postgres_service(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str]
) -> None:
    postgres = environment(services["postgres"])
    url = urlsplit(worker_env["DATABASE_URL"])
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname == "postgres" and "postgres" in services
    assert (url.port or 5432) == 5432
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["POSTGRES_DB"]


def test_postgres_keeps_its_data_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    mounts = [str(v).split(":") for v in services["postgres"]["volumes"]]
    named = [source for source, target, *_ in mounts if target == "/var/lib/postgresql/data"]
    assert named and named[0] in compose["volumes"]


# The topics job ---------------------------------------------------------------------------------


def topic_commands(service: dict[str, Any]) -> list[list[str]]:
    command = service["command"]
    script = command if isinstance(command, str) else "\n".join(command)
    return [shlex.split(line) for line in script.splitlines() if "kafka-topics.sh" in line]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_topics_job_creates_the_workers_topics(
    services: dict[str, dict[str, Any]], worker_env: dict[str, str]
) -> None:
    created: dict[str, int] = {}
    for argv in topic_commands(services["topics"]):
        if "--create" not in argv:
            continue
        assert argv[0] == "/opt/kafka/bin/kafka-topics.sh"
        assert "--if-not-exists" in argv  # the job may run again on `up`
        assert option(argv, "--bootstrap-server") == worker_env["KAFKA_BOOTSTRAP_SERVERS"]
        assert int(option(argv, "--replication-factor")) == 1  # one broker
        created[option(argv, "--topic")] = int(option(argv, "--partitions"))
    expected = {worker_env[variable]: count for variable, count in PARTITIONS.items()}
    assert created == expected
    assert expected == {"proctoring.events": 12, "interview.events": 12, "events.dlq": 3}


# The Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == keyword]


def dockerfile_stages(text: str) -> list[Stage]:
    """Instructions per stage, continuation lines joined, comments and parser directives dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(DOCKERFILE.read_text("utf-8"))


def env_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            pairs[key] = value
    return pairs


def test_dockerfile_is_multi_stage_on_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert all(stage.base == "python:3.12-slim" for stage in stages)
    names = [stage.name for stage in stages[:-1]]
    for stage in stages:
        for args in stage.all("COPY"):
            source = re.search(r"--from=(\S+)", args)
            if source:
                assert source[1] in names, args


def test_final_stage_runs_as_a_non_root_user(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"
    # USER comes after the last RUN: nothing in the image runs as root after the switch.
    order = [instruction for instruction, _ in final.instructions]
    assert "RUN" not in order[order.index("USER") :]


def test_final_stage_has_no_compiler(stages: list[Stage]) -> None:
    final = stages[-1]
    for args in final.all("RUN"):
        for tool in ("build-essential", "gcc", "g++", "clang", "make ", "-dev "):
            assert tool not in args, args
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"]


def test_final_stage_entrypoint_and_environment(stages: list[Stage]) -> None:
    final = stages[-1]
    assert [json.loads(a) for a in final.all("ENTRYPOINT")] == [["worker"]]
    assert [json.loads(a) for a in final.all("CMD")] == [["run"]]
    env = env_pairs(final)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["WORKER_LOG_FORMAT"] == "json"
    assert env["WORKER_METRICS_PORT"] == str(METRICS_PORT)
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert final.all("EXPOSE") == [str(METRICS_PORT)]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert scripts["worker"] == "worker.cli:main"


def dockerfile_healthcheck(stages: list[Stage]) -> list[str]:
    (args,) = stages[-1].all("HEALTHCHECK")
    assert " CMD " in f" {args}"
    command = args.split("CMD", 1)[1].strip()
    return json.loads(command)


def test_final_stage_healthcheck(stages: list[Stage]) -> None:
    command = dockerfile_healthcheck(stages)
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert "http://127.0.0.1:" in command[2] and "/healthz" in command[2]
    assert "WORKER_METRICS_PORT" in command[2] and "9464" in command[2]


def test_every_copied_path_exists_and_is_in_the_build_context(stages: list[Stage]) -> None:
    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in ignored), "re-inclusions are not modelled here"
    copied = []
    for stage in stages:
        for args in stage.all("COPY") + stage.all("ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            if "--from=" in args:
                continue
            *sources, _destination = words
            for source in sources:
                path = Path(source)
                assert (ROOT / path).exists(), f"COPY {source}: no such path in the repository"
                parts = path.parts
                for pattern in ignored:
                    pattern = pattern.removeprefix("**/").rstrip("/")
                    for i in range(1, len(parts) + 1):
                        prefix = "/".join(parts[:i])
                        assert not fnmatch.fnmatch(prefix, pattern), (source, pattern)
                copied.append(path)
    # Everything `pip install .` needs: pyproject, the readme it names, and each package's folder.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    needed = {Path("pyproject.toml"), Path(pyproject["project"]["readme"])}
    setuptools = pyproject["tool"]["setuptools"]
    for package in setuptools["packages"]:
        folder = setuptools.get("package-dir", {}).get(package, package.replace(".", "/"))
        needed.add(Path(folder))
    for path in needed:
        assert any(path == c or c in path.parents for c in copied), f"{path} is not copied"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = set(DOCKERIGNORE.read_text("utf-8").split())
    for entry in (".venv", ".git", ".dev", "bench/results", ".pytest_cache", "**/__pycache__"):
        assert entry in ignored, entry


# Health checks, run ------------------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_check(argv: list[str], port: int | None) -> int:
    argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    env = {"PATH": "/usr/bin:/bin"}
    if port is not None:
        env["WORKER_METRICS_PORT"] = str(port)
    return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode


def test_worker_healthchecks_probe_healthz(
    stages: list[Stage],
    services: dict[str, dict[str, Any]],
    health_server: http.server.HTTPServer,
) -> None:
    port = health_server.server_address[1]
    compose_test = healthcheck_test(services["worker"])
    assert compose_test[0] == "CMD"
    for argv in (dockerfile_healthcheck(stages), compose_test[1:]):
        _Health.status = 200
        assert run_check(argv, port) == 0
        _Health.status = 503
        assert run_check(argv, port) == 1
    _Health.status = 200
    # Nothing listening: unhealthy.
    assert run_check(dockerfile_healthcheck(stages), free_port()) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# docker compose config ---------------------------------------------------------------------------


def compose_cli() -> list[str] | None:
    """`docker compose` (the CLI plugin) or a standalone Compose v2 `docker-compose`."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        probe = subprocess.run([standalone, "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and re.search(r"v?[2-9]\.\d+", probe.stdout):
            return [standalone]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip(
            "no Compose v2: `docker compose version` fails (the docker CLI has no compose plugin) "
            "and there is no docker-compose v2 on PATH; `docker compose config` needs no daemon"
        )
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
