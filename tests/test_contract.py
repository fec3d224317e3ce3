"""Contract test: schemathesis (every check, every phase) against a live server.

The schema is the one the server serves at ``/api/schema/``. The run is deterministic
(fixed seed, no example database) and bounded (examples per operation, a hard timeout),
and must find nothing: a new mismatch between schema and server fails the build. The
number of operations and test cases is printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from accounts.models import User
from tests.contract.server import api_server
from tests.processes import ROOT, VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SEED = 20261201
MAX_EXAMPLES = 25
TIMEOUT_S = 240  # a hard bound only; the run takes about a minute on a shared 2-core box
EMAIL, PASSWORD = "contract@example.com", "contract-pass-1"


def test_schemathesis_finds_no_mismatch(tmp_path, capsys):
    User.objects.create_user(email=EMAIL, password=PASSWORD)
    with api_server(tmp_path) as base:
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.contract.hooks",
            "PYTHONPATH": str(ROOT),
            "CONTRACT_BASE_URL": base,
            "CONTRACT_EMAIL": EMAIL,
            "CONTRACT_PASSWORD": PASSWORD,
        }
        command = [
            str(VENV_BIN / "st"),
            "--config-file", str(ROOT / "tests/contract/schemathesis.toml"),
            "run", f"{base}/api/schema/",
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--seed", str(SEED),
            "--max-examples", str(MAX_EXAMPLES),
            "--generation-database", "none",
            "--workers", "1",  # hypothesis' lambda introspection is not thread-safe
            "--request-timeout", "10",
            "--no-color",
            "--report", "junit", "--report-dir", str(tmp_path / "report"),
        ]  # fmt: skip
        started = time.monotonic()
        result = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S,
            check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    operations = re.search(r"Tested: (\d+)", output)
    cases = re.search(r"Test cases:\s*\n\s*(.+)", output)
    with capsys.disabled():
        print(
            f"\nschemathesis: {operations.group(1) if operations else '?'} operations, "
            f"{cases.group(1).strip() if cases else '?'} in {elapsed:.0f} s (seed {SEED})"
        )
    assert result.returncode == 0, output[-20000:]
    assert operations, output[-5000:]
    assert int(operations.group(1)) == 14
    assert cases
    assert re.fullmatch(r"(\d+) generated, \1 passed(, \d+ skipped)?", cases.group(1).strip())
