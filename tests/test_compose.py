"""docker-compose.yml is valid against the Compose specification (checked offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.processes import ROOT


def test_compose_file_matches_the_compose_spec():
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_app_service_waits_for_healthy_dependencies():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("web", "worker-default", "worker-webhooks", "beat"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in ("postgres", "redis", "web", "worker-default", "worker-webhooks"):
        assert "healthcheck" in services[name], name
