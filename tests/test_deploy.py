"""The shipped dashboard and alert rules stay honest (deploy/, docs/contract.md §8).

- The rules pass `promtool check rules` and their unit tests (`promtool test rules`).
- Every dashboard query parses (promtool checks it as a recording rule's expression) and every
  query and rule reads only metrics a worker exposes (taken from a real Worker's registry) or
  recording rules of the rules file: a renamed metric fails here, not on a 3 a.m. dashboard.

Whether each query returns data and each alert fires against a running worker is
tests/test_prometheus.py's job.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from prometheus_support import (
    DASHBOARD,
    RULES,
    RULES_TEST,
    binary,
    metric_names,
    panel_queries,
    rules,
)

from worker.config import Settings
from worker.consumer import Worker


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests() -> None:
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts and alerts <= tested, alerts - tested


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = panel_queries()
    as_rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel:{i}", "expr": q} for i, (_, q) in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(as_rules))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout


def _exposed() -> set[str]:
    """Every sample name a worker's /metrics can carry."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    worker = Worker(Settings())
    return {
        family.name + suffix
        for family in worker.metrics.registry.collect()
        for suffix in suffixes[family.type]
    }


def test_queries_and_rules_read_only_what_the_worker_exposes() -> None:
    exposed = _exposed()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for where, expr in [
        *panel_queries(),
        *((rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()),
    ]:
        names = metric_names(expr)
        assert names, f"{where}: reads no metric: {expr}"
        unknown = names - exposed - recorded - {"up"}
        assert not unknown, f"{where}: {sorted(unknown)} not exposed by the worker"
    # The freshness, pause, erasure and retention metrics the dashboard shows are there.
    assert {
        "worker_last_stored_record_timestamp_seconds",
        "worker_last_stored_event_timestamp_seconds",
        "worker_partition_paused",
        "worker_records_erased_total",
        "worker_records_expired_total",
    } <= exposed


def test_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
