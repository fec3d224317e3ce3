"""Test helpers for rate limiting, loaded as a pytest plugin by the root ``conftest.py``.

* every test gets its own bucket keys (an autouse fixture), so limits never leak from
  one test into the next and the suite can run against a shared Redis;
* ``fake_clock`` and ``limiter_with_clock``: time moves only when the test says so;
* ``own_redis``: a ``redis-server`` the test owns on a free port, which it may kill,
  pause or restart (never the shared Redis on 6379).

Nothing Django-related is imported at module level: pytest loads plugins early.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_START_TIMEOUT_S = 10.0


class FakeClock:
    """A clock that moves only through :meth:`advance` (seconds, any origin)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds


class RedisServer:
    """A throw-away ``redis-server`` on a fixed port: start, kill -9, pause, restart."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL of database 0 of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart on the same port) and wait until it answers PING."""
        import redis

        from chaos.commands import redis_server_command

        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        # No persistence: a restarted server comes back empty, like a lost node.
        command = redis_server_command(port=self.port, workdir=self.workdir)
        with (self.workdir / f"redis-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise AssertionError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        """``kill -9``: the abrupt loss of the server."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the server still accepts connections but never answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def client(self):
        """A plain client to inspect the server (INFO, keys)."""
        import redis

        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)


@pytest.fixture(autouse=True)
def isolated_rate_limits(settings) -> None:
    """Each test draws from its own buckets (unique key prefixes, both limiters)."""
    unique = uuid.uuid4().hex[:12]
    settings.RESILIENCE_RATELIMIT = {
        **settings.RESILIENCE_RATELIMIT,
        "key_prefix": f"test-rl-{unique}",
    }
    settings.RATELIMIT_CACHE_PREFIX = f"test-rl-fw-{unique}:"


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture
def limiter_with_clock(fake_clock: FakeClock) -> Iterator:
    """Requests are limited by a limiter that reads ``fake_clock`` (Redis and fallback)."""
    from resilience.ratelimit.limiter import Limiter, use_limiter

    with use_limiter(Limiter(clock=fake_clock)) as limiter:
        yield limiter


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A ``redis-server`` on a free port that this test alone owns; always stopped."""
    from tests.processes import free_port

    server = RedisServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)  # a paused server cannot die cleanly
        server.kill()


def ratelimit_settings(
    settings, *, policies: dict | None = None, redis_url: str | None = None, **top_level
) -> None:
    """Override parts of ``RESILIENCE_RATELIMIT`` for one test.

    ``policies`` entries are merged into the existing policies of the same name;
    ``redis_url`` points the limiter at another Redis (one the test owns), other Redis
    options unchanged.
    """
    config = {**settings.RESILIENCE_RATELIMIT, **top_level}
    if redis_url is not None:
        config["redis"] = {**config["redis"], "url": redis_url}
    merged = {name: dict(spec) for name, spec in config["policies"].items()}
    for name, spec in (policies or {}).items():
        merged[name] = {**merged.get(name, {}), **spec}
    config["policies"] = merged
    settings.RESILIENCE_RATELIMIT = config
