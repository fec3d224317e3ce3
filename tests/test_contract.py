"""Contract test: schemathesis (every check, every phase) against a live server.

The schema is the one the server serves at ``/api/schema/``. The run is deterministic
(fixed seed, no example database) and bounded (examples per operation, a hard timeout),
and must find nothing: a new mismatch between schema and server fails the build. The
number of operations and test cases is printed. A second, stateful-only run over the
first session's operations must follow its links: signup -> login -> order -> order.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter

import pytest

from accounts.models import User
from tests.contract.server import api_server
from tests.processes import ROOT, VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SEED = 20261201
MAX_EXAMPLES = 25
TIMEOUT_S = 240  # a hard bound only; the run takes under a minute on a shared 2-core box
EMAIL, PASSWORD = "contract@example.com", "contract-pass-1"
FIRST_SESSION = ["auth_signup_create", "auth_login_create", "orders_create", "orders_retrieve"]
FIRST_SESSION_LINKS = {
    "POST /api/v1/auth/signup -> [201] Login -> POST /api/v1/auth/login",
    "POST /api/v1/auth/login -> [200] CreateOrder -> POST /api/v1/orders",
    "POST /api/v1/orders -> [201] GetOrder -> GET /api/v1/orders/{order_id}",
}


def schemathesis(base: str, report_dir, *arguments: str) -> tuple[int, str, str, float]:
    """Run ``st run`` against ``base``; return exit code, output, NDJSON events, seconds."""
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
        "--seed", str(SEED),
        "--max-examples", str(MAX_EXAMPLES),
        "--generation-database", "none",
        "--workers", "1",  # hypothesis' lambda introspection is not thread-safe
        "--request-timeout", "10",
        "--no-color",
        "--report", "junit,ndjson", "--report-dir", str(report_dir),
        *arguments,
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(
        command, env=env, cwd=report_dir.parent, capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    events = "".join(path.read_text() for path in report_dir.glob("*.ndjson"))
    return result.returncode, result.stdout + result.stderr, events, elapsed


def link_name(transition: str) -> str:
    """``"POST /a -> [201] Login -> POST /b"`` -> ``"Login"``."""
    return transition.split("] ", 1)[1].split(" ->", 1)[0]


def test_schemathesis_finds_no_mismatch(tmp_path, capsys):
    User.objects.create_user(email=EMAIL, password=PASSWORD)
    # The schema's example webhook URL may be registered, so the links from a created
    # endpoint (retrieve, ping, delete) are followed with a real id.
    targets = "127.0.0.1,localhost,hooks.example.com"
    with api_server(tmp_path, WEBHOOKS_ALLOWED_TARGETS=targets) as base:
        code, output, _, elapsed = schemathesis(
            base, tmp_path / "all", "--phases", "examples,coverage,fuzzing,stateful"
        )
        (tmp_path / "schemathesis.out").write_text(output)
        assert code == 0, output[-20000:]
        first = [arg for op in FIRST_SESSION for arg in ("--include-operation-id", op)]
        session_code, session_output, events, session_elapsed = schemathesis(
            base, tmp_path / "first-session", "--phases", "stateful", *first
        )
    operations = re.search(r"Tested: (\d+)", output)
    cases = re.search(r"Test cases:\s*\n\s*(.+)", output)
    links = re.search(r"API Links:\s*(.+)", output)
    followed = Counter(re.findall(r'"transition":\s*\{"id":\s*"([^"]+)"', events))
    with capsys.disabled():
        print(
            f"\nschemathesis: {operations.group(1) if operations else '?'} operations, "
            f"{cases.group(1).strip() if cases else '?'} in {elapsed:.0f} s (seed {SEED}); "
            f"stateful links: {links.group(1).strip() if links else '?'}; first session "
            f"(stateful only, {session_elapsed:.0f} s): "
            + ", ".join(f"{link_name(name)} x{n}" for name, n in sorted(followed.items()))
        )
    assert operations, output[-5000:]
    assert int(operations.group(1)) == 16
    assert cases
    assert re.fullmatch(r"(\d+) generated, \1 passed(, \d+ skipped)?", cases.group(1).strip())
    assert session_code == 0, session_output[-20000:]
    assert set(followed) >= FIRST_SESSION_LINKS, followed
