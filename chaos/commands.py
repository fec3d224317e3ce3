"""The command lines of the stack's processes, as the Procfile runs them.

Tests, chaos harness stacks and benchmarks start real processes with these, so a change
to how web or a worker is started is made once.
"""

from __future__ import annotations

import sys
from pathlib import Path

GUNICORN_COMMAND = [
    sys.executable, "-m", "gunicorn", "config.wsgi:application", "-c", "config/gunicorn.py",
]  # fmt: skip


def celery_worker_command(
    *, queues: str, name: str, concurrency: int = 1, beat_schedule: Path | None = None
) -> list[str]:
    """A prefork worker on ``queues`` (comma-separated), quiet on the broker.

    ``beat_schedule`` embeds beat in the worker (``-B``), for stacks that need the
    periodic sweeps without a separate beat process.
    """
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues,
        "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "INFO",
        "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", f"{name}@%h",
    ]  # fmt: skip
    if beat_schedule is not None:
        command += ["-B", "--schedule", str(beat_schedule)]
    return command


def redis_server_command(*, port: int, workdir: Path) -> list[str]:
    """A throw-away redis-server on loopback that keeps nothing on disk."""
    return [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", str(workdir),
    ]  # fmt: skip
