"""Start the peers' gunicorn servers (bench/peers/settings.py) on free loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.support import BENCH_DATABASE_URL, BENCH_REDIS_URL
from chaos.commands import GUNICORN_COMMAND
from tests.processes import ROOT, free_port, http_request, running, wait_for

SETTINGS = "bench.peers.settings"
READY_TIMEOUT_S = 30.0


def server_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "DATABASE_URL": os.environ.get("DATABASE_URL", BENCH_DATABASE_URL),
            "REDIS_URL": os.environ.get("REDIS_URL", BENCH_REDIS_URL),
            "DJANGO_ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
            "RATELIMIT_ENABLED": "true",
            # The comparison is of each peer's pattern, not of our load shedding, which
            # would answer part of the 48 concurrent requests with 503 before any view.
            "CONCURRENCY_LIMIT_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(overrides)
    return env


def migrate() -> None:
    """Create the peers' tables (drf-idempotency's) in the bench database."""
    command = [sys.executable, "manage.py", "migrate", "--noinput", "--verbosity", "0"]
    subprocess.run(command, cwd=ROOT, env=server_env(), check=True, timeout=120)


@contextmanager
def peer_server(workdir: Path, *, label: str, workers: int = 2, **env: str) -> Iterator[str]:
    """A gunicorn of the peers' settings; yields its base URL, stops it after the block."""
    port = free_port()
    overrides = {"WEB_PORT": str(port), "WEB_WORKERS": str(workers), **env}
    log = workdir / f"gunicorn-{label}.log"
    with running(GUNICORN_COMMAND, env=server_env(**overrides), log_path=log):
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                lambda: http_request("GET", f"{base}/healthz", timeout=2).status == 200,
                timeout=READY_TIMEOUT_S,
                interval=0.1,
                what=f"{label} server to answer",
            )
        except AssertionError:
            print(log.read_text(errors="replace")[-3000:])
            raise
        yield base
