# syntax=docker/dockerfile:1
#
# event-worker image: `docker build -t event-worker .`, then e.g.
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=... -e DATABASE_URL=... event-worker
# Configuration is the environment of README "Configuration"; the image adds nothing but defaults
# for the log format and the metrics port.

# --- builder: a virtualenv holding the project and its dependencies ----------------------------
FROM python:3.12-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, read from pyproject.toml alone, so that a code change reuses this layer.
# Every dependency ships manylinux wheels for CPython 3.12 (amd64 and arm64): no compiler is
# needed here, and none is ever installed in the final image. Should one ever need building,
# install build-essential in this stage only.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# The project itself (setuptools): worker and its subpackages, worker.sql (from sql/), schemas and
# the seed documents in schemas/seeds/. README.md is the package's readme (pyproject.toml).
COPY README.md ./
COPY schemas ./schemas
COPY sql ./sql
COPY worker ./worker
RUN pip install --no-deps . \
    && worker --version \
    && python -c "from importlib.resources import files; \
assert any(p.name.endswith('.sql') for p in files('worker.sql').iterdir()), 'no migrations'; \
from worker.dev.seeds import interview_samples, proctoring_samples; \
assert interview_samples() and proctoring_samples(), 'no seed samples'"

# --- runtime: the virtualenv on a clean slim Python, as an unprivileged user --------------------
FROM python:3.12-slim AS runtime

LABEL org.opencontainers.image.title="event-worker" \
      org.opencontainers.image.description="Kafka to PostgreSQL ingestion worker for proctoring and interview events"

RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin worker

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WORKER_LOG_FORMAT=json \
    WORKER_METRICS_PORT=9464

# Numeric, so that runAsNonRoot-style policies can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp

# /healthz, /readyz and /metrics (Prometheus).
EXPOSE 9464

# Liveness only (/readyz, database and broker reachable, is for orchestrators that gate on
# readiness): GET http://127.0.0.1:${WORKER_METRICS_PORT:-9464}/healthz. Exec form, no shell: the
# port default is applied in Python; any failure is an uncaught exception, exit code 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('WORKER_METRICS_PORT') or '9464'; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

# The worker drains and commits on SIGTERM within WORKER_SHUTDOWN_TIMEOUT_S (30 s by default):
# give it a longer stop timeout (`docker stop -t 40`, compose `stop_grace_period: 40s`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["worker"]
CMD ["run"]
