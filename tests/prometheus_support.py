"""Finding Prometheus' binaries for the tests that need them.

They come from Debian's `prometheus` package (`.ci/run` installs it where it is missing). On a
machine without it those tests are reported skipped, naming the package, never passed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "event-worker.json"
JOB = "event-worker"

_MISSING = "needs `{}` from Debian's `prometheus` package (apt-get install prometheus)"


def binary(name: str) -> str:
    """The path of `name` (prometheus, promtool), or skip the test saying which package."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(_MISSING.format(name))
    return path


def panel_queries(rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every dashboard panel, with Grafana's
    `$__rate_interval` replaced as Grafana would (by a duration)."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", rate_interval))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def rules() -> list[dict[str, Any]]:
    """Every rule of the rules file (recording and alerting), in order."""
    import yaml

    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


_METRIC = re.compile(r"\b(worker_[a-z0-9_]+|worker:[a-z0-9_:]+|up)\b(?![(])")


def metric_names(expr: str) -> set[str]:
    """The metric (and recording rule) names an expression reads. The worker's names all
    start with `worker_`, recording rules' with `worker:`; `up` is Prometheus' own."""
    return set(_METRIC.findall(expr))
