"""Processes of a fleet: free ports in the fleet's range, start in own sessions, stop all.

Every process the fleet starts runs in its own process group (so a gunicorn master and
its workers, or a Celery worker and its pool, stop together), writes to its own log file,
and is stopped by process group, never by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
# Every port a fleet listens on is picked at run time in this range.
PORT_RANGE = (
    int(os.environ.get("FLEET_PORT_MIN", "23000")),
    int(os.environ.get("FLEET_PORT_MAX", "23999")),
)
_taken: set[int] = set()


def free_port() -> int:
    """A loopback port in ``PORT_RANGE`` nothing listens on (and not handed out before)."""
    low, high = PORT_RANGE
    candidates = list(range(low, high + 1))
    random.shuffle(candidates)
    for port in candidates:
        if port in _taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for(
    condition: Callable[[], T], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll ``condition`` until truthy; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            result = condition()
            if result:
                return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """One started process (group): its name, command, log and Popen."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash, for failover experiments)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, grace_s: float = 10) -> None:
        """SIGTERM the process group; SIGKILL what is left after ``grace_s``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        # The group may outlive its leader (a prefork child): end it in every case.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    name: str, command: list[str], *, env: Mapping[str, str], log_dir: Path, **ports: int
) -> Proc:
    """Start ``command`` as process ``name``, logging to ``log_dir/name.log``."""
    return Proc(name, list(command), dict(env), log_dir / f"{name}.log", ports=dict(ports)).start()
