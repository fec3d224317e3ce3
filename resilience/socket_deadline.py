"""A client-side read deadline for driver calls that have none (psycopg's queries).

libpq has a connect timeout and Postgres a statement timeout, but a query already sent
has no client-side bound: when the network drops every packet from then on (a
partition, a primary gone from behind its address, a proxy that swallows the stream),
the statement timeout's error never arrives and the thread waits until TCP gives up,
minutes later. Under gunicorn's gthread workers nothing kills that thread (the
heartbeat comes from the main one), so a blackholed Postgres would take every thread
of every web process, for good.

``watch(fd, timeout_s, dependency)`` registers the socket of a call in flight with one
daemon thread per process. A call still running at its deadline has its socket shut
down (``shutdown(2)``, which acts on the socket, not the descriptor we duplicate to
reach it): the blocked read returns at once and the driver raises its own "connection
lost" error, which the breaker counts and the pool discards. The deadline is set above
the statement timeout, so a query the server itself cancels still ends cleanly.

Our own code because nothing fits: psycopg has no per-query client timeout (its
``cancel()`` sends the request over a new connection, which the same partition stops),
Django has none, and TCP keepalives or ``tcp_user_timeout`` do not fire while a proxy
or a half-open path still acknowledges the packets (adr/0015).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from resilience import metrics

logger = logging.getLogger(__name__)

# How often the watchdog looks at the calls in flight: the deadline is met within this.
TICK_S = 0.1


class SocketWatchdog:
    """One per process: shuts down the socket of any watched call past its deadline."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[float, int, str]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def watch(self, fd: int, timeout_s: float, dependency: str) -> Iterator[None]:
        """Bound the block's use of socket ``fd`` to ``timeout_s`` (from now)."""
        token = next(self._tokens)
        with self._lock:
            self._calls[token] = (time.monotonic() + timeout_s, fd, dependency)
            self._ensure_thread()
        try:
            yield
        finally:
            with self._lock:
                self._calls.pop(token, None)

    def _ensure_thread(self) -> None:
        # Under the lock. A forked child (gunicorn, Celery prefork) starts its own.
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="socket-deadline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.tick_s)
            now = time.monotonic()
            expired = []
            with self._lock:
                # Shut down under the lock: a call that has just ended (and unregistered)
                # can never have its socket, now back in the pool, shut by mistake.
                for token, (deadline, fd, dependency) in list(self._calls.items()):
                    if now >= deadline:
                        del self._calls[token]
                        if _shut_down(fd):
                            expired.append(dependency)
            for dependency in expired:
                metrics.SOCKET_DEADLINE_EXCEEDED.labels(dependency).inc()
                logger.warning("socket deadline exceeded", extra={"dependency": dependency})


def _shut_down(fd: int) -> bool:
    """Shut the socket behind ``fd`` down; False when it was already gone."""
    try:
        duplicate = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    finally:
        duplicate.close()
    return True


WATCHDOG = SocketWatchdog()


def watch(fd: int | None, timeout_s: float | None, dependency: str):
    """:meth:`SocketWatchdog.watch` of the process, or nothing without a socket or bound."""
    if fd is None or fd < 0 or timeout_s is None:
        return nullcontext()
    return WATCHDOG.watch(fd, timeout_s, dependency)
