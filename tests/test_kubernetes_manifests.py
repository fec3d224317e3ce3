"""The Kubernetes manifests (deploy/kubernetes/) are valid, offline, and agree with the docs.

``kubernetes-validate`` ships the Kubernetes OpenAPI schemas; strict mode refuses any
field the schema does not know. No cluster is reached.
"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
VERSION = "1.37.0"


def documents() -> list[dict]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def by_name(kind: str, name: str) -> dict:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize(
    "document", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(document):
    kubernetes_validate.validate(document, VERSION, strict=True)


def test_one_beat_never_two_even_during_a_rollout():
    beat = by_name("Deployment", "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    command = beat["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "resilience.beat:LockedScheduler" in command


def test_the_fallback_divisor_matches_the_web_processes():
    config = by_name("ConfigMap", "resilient-config")["data"]
    web = by_name("Deployment", "web")["spec"]["replicas"]
    assert int(config["RATELIMIT_INSTANCES"]) == web * int(config["WEB_WORKERS"])


def test_pgbouncer_server_connections_fit_the_budget_of_docs_scaling():
    ini = by_name("ConfigMap", "pgbouncer")["data"]["pgbouncer.ini"]
    pools = [int(n) for n in re.findall(r"pool_size=(\d+)", ini)]
    ceiling = int(re.search(r"max_db_connections = (\d+)", ini)[1])
    replicas = by_name("Deployment", "pgbouncer")["spec"]["replicas"]
    assert sum(pools) <= ceiling
    # Both PgBouncer replicas at their ceiling stay under PostgreSQL's 100 connections,
    # with room for migrations, probes and an operator's psql (docs/scaling.md).
    assert replicas * ceiling <= 100 - 10
    assert "pool_mode = transaction" in ini
    assert ini.count("connect_query=") == len(pools)
