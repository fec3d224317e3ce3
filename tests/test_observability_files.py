"""The dashboard, the alert rules and the Prometheus config agree with the catalogue.

Checked offline: the dashboard JSON loads and every query names catalogued metrics;
every alert names catalogued metrics and links to a runbook that exists; promtool
validates the rules and the scrape config and runs the rules' unit tests
(deploy/prometheus/alerts.test.yml). ``make promtool`` installs it; without it these
tests fail.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.metrics_catalogue import catalogue, catalogued_name, metric_names
from tests.processes import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "resilience.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
PATTERN_ROWS = (
    "Rate limiting",
    "Load shedding",
    "Idempotency",
    "Retries and budgets",
    "Circuit breakers",
    "Bulkheads",
    "Webhooks and outbox",
    "Dependency latency",
)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_the_catalogue_documents_each_metric_fully():
    metrics = catalogue()
    assert len(metrics) >= 30
    for metric in metrics.values():
        assert metric.type in {"counter", "gauge", "histogram"}, metric
        assert set(metric.exported_by) <= {
            "web",
            "workers",
            "worker-default",
            "worker-webhooks",
            "prometheus",
        }
        if metric.type == "counter":
            assert metric.name.endswith("_total"), metric.name


def test_the_dashboard_has_a_row_per_pattern_and_only_catalogued_queries():
    metrics = catalogue()
    panels = dashboard_panels()
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert set(PATTERN_ROWS) <= set(rows)
    queries = 0
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = {n for n in names if catalogued_name(n, metrics) is None}
            assert not unknown, f"panel {panel['title']!r} names uncatalogued {unknown}"
            queries += 1
    assert queries >= 20
    # Every pattern row shows something: no row directly followed by another row.
    kinds = [panel["type"] for panel in panels]
    assert all(not (a == b == "row") for a, b in itertools.pairwise(kinds))
    assert kinds[-1] != "row"


def test_the_dashboard_uses_the_provisioned_datasource():
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uid = provisioned["datasources"][0]["uid"]
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]


def test_every_alert_names_catalogued_metrics_and_an_existing_runbook():
    metrics = catalogue()
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {
        "CircuitBreakerStuckOpen",
        "RetryBudgetExhausted",
        "TooManyRequestsSpike",
        "BulkheadSaturated",
        "OutboxLag",
        "WebhookDeadLetters",
        "IdempotencyKeyCollision",
        "DependencyDown",
        "WebhookTargetDown",
        "ScrapeTargetDown",
        "BeatNotRunning",
        "PendingPaymentTooOld",
    } <= names
    for rule in rules:
        runbook = rule["annotations"]["runbook_url"]
        assert runbook.startswith("runbooks/"), runbook
        path = ROOT / runbook
        assert path.is_file(), f"{rule['alert']}: runbook {runbook} does not exist"
        text = path.read_text()
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
            assert section in text, f"{runbook} lacks {section}"
        used = {catalogued_name(n, metrics) for n in metric_names(rule["expr"])}
        assert None not in used, f"{rule['alert']} names an uncatalogued metric"
        # The catalogue says which alert reads each metric.
        assert any(rule["alert"] in metrics[name].alerts for name in used), rule["alert"]


def test_every_alert_the_catalogue_mentions_exists():
    names = {rule["alert"] for rule in alert_rules()}
    for metric in catalogue().values():
        assert set(metric.alerts) <= names, metric


def test_prometheus_scrapes_web_and_both_workers():
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["web"] == ["web:8000"]
    assert targets["worker-default"] == ["worker-default:9101"]
    assert targets["worker-webhooks"] == ["worker-webhooks:9102"]
    assert (PROMETHEUS.parent / config["rule_files"][0]).resolve() == ALERTS.resolve()


def test_compose_runs_prometheus_and_grafana_with_the_project_files():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    grafana_volumes = services["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana_volumes
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana_volumes
    for name, port in (("worker-default", "9101"), ("worker-webhooks", "9102")):
        env = services[name]["environment"]
        assert env["WORKER_METRICS_PORT"] == port
        assert env["PROMETHEUS_MULTIPROC_DIR"]


def _promtool() -> str:
    """The promtool binary: ``PROMTOOL``, the one ``make promtool`` installs, or PATH.

    Missing is a failure, not a skip: these are the only checks that evaluate the rules.
    """
    candidates = [os.environ.get("PROMTOOL"), str(ROOT / ".venv" / "bin" / "promtool")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: run `make promtool` (or set PROMTOOL to a binary)")
    return found


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (("check", "rules"), ALERTS),
        (("check", "config"), PROMETHEUS),
        (("test", "rules"), ALERT_TESTS),
    ],
    ids=["check-rules", "check-config", "test-rules"],
)
def test_promtool_accepts_the_files(args, path):
    """Valid rules and config; the rule unit tests (who is paged, who gets a ticket) pass."""
    result = subprocess.run(
        [_promtool(), *args, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pages_are_only_for_own_dependencies():
    """Every paging rule on a per-dependency metric excludes customers' webhook targets."""
    for rule in alert_rules():
        if rule["labels"]["severity"] != "page" or "dependency" not in rule["expr"]:
            continue
        for selector in re.findall(r"resilience_\w+\{([^}]*)\}", rule["expr"]):
            assert 'dependency!~"webhook:.*"' in selector, (rule["alert"], selector)
