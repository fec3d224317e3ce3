"""Only the resilient client talks HTTP or opens sockets in application code."""

from __future__ import annotations

import ast

from tests.processes import ROOT

APP_PACKAGES = ["accounts", "orders", "webhooks", "common", "config", "resilience"]
FORBIDDEN_MODULES = {"requests", "socket", "urllib.request", "http.client", "urllib3", "httpx"}
# The resilient client itself, and the rate limiter's Redis client (not HTTP).
ALLOWED_FILES = {
    "resilience/http.py",
    # The SSRF guard: resolves hosts (socket) and builds requests-hardened sessions that
    # the resilient client then uses; it makes no call of its own.
    "resilience/ssrf.py",
    # The client-side read deadline: shuts down the socket of a Postgres call past its
    # deadline (a duplicate of the driver's descriptor); it opens and sends nothing.
    "resilience/socket_deadline.py",
}


def imports_of(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_application_code_does_not_call_requests_or_open_sockets():
    offenders = {}
    for package in APP_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if "/tests/" in relative or relative in ALLOWED_FILES:
                continue
            bad = {
                name
                for name in imports_of(path)
                if name in FORBIDDEN_MODULES
                or name.split(".")[0] in {"requests", "httpx", "urllib3"}
            }
            # Exception types only (for `except requests.RequestException`) are fine to import.
            if bad and relative not in {"orders/payments.py"}:
                offenders[relative] = sorted(bad)
    assert offenders == {}, f"raw network use outside resilience/http.py: {offenders}"


def test_the_payments_module_does_not_touch_requests():
    """Unreachable payments reaches it as a resilience.errors.Refusal, not a requests error."""
    source = (ROOT / "orders/payments.py").read_text()
    assert "requests" not in source.replace("resilience.", "")
