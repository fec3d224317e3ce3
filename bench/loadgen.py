"""A small, bounded HTTP load generator for loopback servers (loadtest and bench).

Each worker thread keeps one keep-alive connection and sends requests back to back until
the duration is over; answers are tallied by status with their latency. Only loopback
targets are accepted: this is a measuring tool, not a way to load someone else's host.
"""

from __future__ import annotations

import http.client
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_CONCURRENCY = 256
MAX_DURATION_S = 600.0
CONNECT_TIMEOUT_S = 5.0
ERROR_PAUSE_S = 0.01


@dataclass
class LoadResult:
    """What a run saw: answers by status, latencies, and when it started and ended."""

    statuses: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    first_sent: float = 0.0
    last_sent: float = 0.0
    wall_s: float = 0.0

    @property
    def total(self) -> int:
        """Requests answered."""
        return sum(self.statuses.values())

    @property
    def allowed(self) -> int:
        """Answers that were not refused by a limiter (anything but 429 and 503)."""
        return self.total - self.statuses[429] - self.statuses[503]

    @property
    def limited(self) -> int:
        """Answers refused by a limiter (429, or nginx limit_req's 503)."""
        return self.statuses[429] + self.statuses[503]

    @property
    def elapsed_s(self) -> float:
        """Seconds between the first and the last request sent."""
        return max(0.0, self.last_sent - self.first_sent)

    @property
    def rps(self) -> float:
        """Answers per second of wall time."""
        return self.total / self.wall_s if self.wall_s else 0.0

    def percentile_ms(self, fraction: float) -> float:
        """Latency at ``fraction`` (0..1) in milliseconds."""
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def check_loopback(url: str) -> tuple[str, int, str]:
    """Split ``url`` into host, port and path; refuse anything but a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("only http:// URLs are supported")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{host} is not a loopback address")
    except ValueError as exc:
        raise ValueError(f"refusing to load {url}: {exc}") from exc
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return host, parts.port or 80, path


def run_load(
    url: str,
    *,
    concurrency: int,
    duration_s: float,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> LoadResult:
    """Fire requests at ``url`` from ``concurrency`` threads for ``duration_s`` seconds."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be within 1..{MAX_CONCURRENCY}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be within (0, {MAX_DURATION_S}] s")
    host, port, path = check_loopback(url)
    result = LoadResult()
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + duration_s
    result.first_sent = float("inf")

    def worker() -> None:
        statuses: Counter = Counter()
        latencies: list[float] = []
        errors = 0
        first = last = None
        connection = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT_S)
        while time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                connection.request(method, path, body=body, headers=dict(headers or {}))
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                connection.close()  # reconnect on the next request...
                time.sleep(ERROR_PAUSE_S)  # ...without spinning on a refused port
                continue
            latencies.append(time.monotonic() - sent)
            statuses[response.status] += 1
            first = sent if first is None else first
            last = sent
        connection.close()
        with lock:
            result.statuses.update(statuses)
            result.latencies_s.extend(latencies)
            result.errors += errors
            if first is not None:
                result.first_sent = min(result.first_sent, first)
                result.last_sent = max(result.last_sent, last)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 2 * CONNECT_TIMEOUT_S + 5)
    result.wall_s = time.monotonic() - started
    if result.first_sent == float("inf"):
        result.first_sent = result.last_sent = started
    return result
