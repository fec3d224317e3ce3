"""A tiny dependency on loopback for the breaker and retry comparisons.

Answers every request with 503 (no ``Retry-After``: nothing tells a client when to come
back) while failing, 200 once healed, or refuses connections while down. It records the
arrival time of every request, so the benchmark counts calls that reached it and plots
when they came.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAILING = "failing"
HEALTHY = "healthy"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 65536))
        status = self.server.owner.record()
        body = b'{"ok": true}' if status == 200 else b'{"error": "unavailable"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, fmt: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048  # a thousand clients connect at once
    owner: Dependency

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (timeout, reset) is not the dependency's problem


class Dependency:
    """``with Dependency() as dep:`` serves on a free loopback port until the block ends."""

    def __init__(self, mode: str = FAILING) -> None:
        self.mode = mode
        self._lock = threading.Lock()
        self._arrivals: list[float] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def record(self) -> int:
        with self._lock:
            self._arrivals.append(time.monotonic())
            return 200 if self.mode == HEALTHY else 503

    def reset(self, mode: str = FAILING) -> None:
        with self._lock:
            self.mode = mode
            self._arrivals = []

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self._arrivals)

    def arrivals(self) -> list[float]:
        with self._lock:
            return list(self._arrivals)

    def __enter__(self) -> Dependency:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
