"""Helpers for tests that run real processes: free ports, waits with deadlines, cleanup."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from chaos.commands import GUNICORN_COMMAND, celery_worker_command, redis_server_command

__all__ = ["GUNICORN_COMMAND", "celery_worker_command", "redis_server_command"]

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


def worker_ready(log_path: Path) -> bool:
    """Whether a worker started with :func:`celery_worker_command` logged that it is ready."""
    return log_path.exists() and " ready." in log_path.read_text(errors="replace")


class Answer(NamedTuple):
    """One HTTP answer as a test sees it; ``status`` 0 means no connection."""

    status: int
    headers: dict[str, str]
    text: str
    elapsed_s: float

    def json(self) -> Any:
        return json.loads(self.text or "{}")


def http_request(
    method: str,
    url: str,
    *,
    body: Any = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> Answer:
    """Call a loopback server of the test's own; never raises for HTTP or socket errors."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Token {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=sent)  # noqa: S310
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            status, got, text = response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        status, got, text = error.code, dict(error.headers), error.read().decode()
    except OSError:
        status, got, text = 0, {}, ""
    return Answer(status, got, text, time.perf_counter() - started)


def log_events(path: Path, event: str | None = None) -> list[dict]:
    """The JSON log records a process wrote to ``path`` (only ``event`` ones if given).

    A record may follow a prefix on its line; lines without one are skipped.
    """
    events = []
    for line in path.read_text(errors="replace").splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if event is None or record.get("event") == event:
            events.append(record)
    return events


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
