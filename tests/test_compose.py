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


def test_worker_concurrency_comes_from_the_worker_model_and_the_environment():
    """WORKER_*_CONCURRENCY reach the containers; the default is config/worker_model.py's."""
    import os
    import re

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for service, variable in (
        ("worker-default", "WORKER_DEFAULT_CONCURRENCY"),
        ("worker-webhooks", "WORKER_WEBHOOKS_CONCURRENCY"),
    ):
        assert services[service]["environment"][variable] == f"${{{variable}:-}}"
        command = services[service]["command"]
        assert command[:2] == ["sh", "-c"]
        # The shell expression that yields --concurrency, with compose's $$ unescaped.
        expression = re.search(r'--concurrency "\$\$\((.*?)\)"', command[2])[1]
        from config import worker_model

        default = str(getattr(worker_model, variable))
        for value, expected in (("7", "7"), ("", default)):
            result = subprocess.run(
                ["sh", "-c", expression],
                cwd=ROOT,
                # The image's python is the venv's here.
                env={
                    **os.environ,
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    variable: value,
                },
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            assert result.stdout.strip() == expected, (service, value, result.stderr)
