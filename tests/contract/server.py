"""A live API server of the test suite (gunicorn on a free port, the test database)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.processes import (
    GUNICORN_COMMAND,
    child_environment,
    free_port,
    http_request,
    running,
    wait_for,
)

# Limits high enough that generated traffic tests the contract, not the buckets (429s
# stay documented and are still accepted by every check).
_ROOMY = {"capacity": 1_000_000, "refill_rate": 100_000.0}
ROOMY_POLICIES = {
    name: dict(_ROOMY)
    for name in (
        "flood",
        "signup",
        "login_ip",
        "login_username",
        "orders_create",
        "orders_report",
    )
}


@contextmanager
def api_server(tmp_path: Path, *, policies: dict | None = None, **env: str) -> Iterator[str]:
    """Run the API under gunicorn for the block; yield its base URL (no trailing slash)."""
    port = free_port()
    environment = child_environment(
        WEB_PORT=str(port),  # workers and threads as shipped (the start-up checks need them)
        RATELIMIT_POLICY_OVERRIDES=json.dumps(ROOMY_POLICIES if policies is None else policies),
        **env,
    )
    base = f"http://127.0.0.1:{port}"
    with running(GUNICORN_COMMAND, env=environment, log_path=tmp_path / "web.log"):
        wait_for(
            lambda: http_request("GET", f"{base}/healthz", timeout=2).status == 200,
            timeout=60,
            what="gunicorn serving /healthz",
        )
        yield base
