"""Helpers for tests that run real processes: free ports, waits with deadlines, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


# The web process exactly as the Procfile runs it (settings come from the environment).
GUNICORN_COMMAND = [
    sys.executable,
    "-m",
    "gunicorn",
    "config.wsgi:application",
    "-c",
    "config/gunicorn.py",
]


def celery_worker_command(*, queue: str, name: str, concurrency: int = 1) -> list[str]:
    """A prefork Celery worker on ``queue``, quiet on the broker (no gossip or mingle)."""
    return [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue,
        "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "INFO",
        "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", f"{name}@%h",
    ]  # fmt: skip


def worker_ready(log_path: Path) -> bool:
    """Whether a worker started with :func:`celery_worker_command` logged that it is ready."""
    return log_path.exists() and " ready." in log_path.read_text(errors="replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def child_environment(**overrides: str) -> dict[str, str]:
    """The environment for a child process that must see the same database and Redis."""
    from django.conf import settings
    from django.db import connections

    env = dict(os.environ)
    db = connections["default"].settings_dict
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "REDIS_URL": settings.REDIS_URL,
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


@contextmanager
def running(
    command: list[str], *, env: Mapping[str, str], log_path: Path, stop_timeout: float = 15
) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own process group for the block; always stop it after."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=stop_timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
