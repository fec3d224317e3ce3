"""A tiny HTTP client for the experiments: stdlib only, loopback only, always a timeout.

Every answer, including a refused connection or a timeout, becomes an :class:`Answer`
(status 0 when no HTTP answer came back), so traffic code never needs try/except.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# Experiments send bounded but real load: they may only aim at this machine.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_TIMEOUT_S = 10.0


class ChaosError(Exception):
    """An experiment cannot run (bad target, stack not ready, rate-limited setup...)."""


def require_loopback(url: str) -> str:
    """Return ``url`` without a trailing slash; refuse anything but http on loopback."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
        raise ChaosError(f"experiments only target http://127.0.0.1 (or localhost), not {url!r}")
    return url.rstrip("/")


@dataclass
class Answer:
    """One HTTP exchange as the client saw it."""

    status: int  # 0: no HTTP answer (refused, reset, timed out)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: Any = None
    latency_s: float = 0.0
    error: str | None = None

    @property
    def retry_after(self) -> str | None:
        """The raw ``Retry-After`` header, if any."""
        return self.headers.get("retry-after")


def request(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    source_ip: str | None = None,
) -> Answer:
    """Send one request on a fresh connection; never raises for network trouble.

    ``source_ip`` (a loopback address such as 127.0.0.7) is the client's address, so a
    test can be many clients for per-IP limits while never leaving the machine.
    """
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK_HOSTS:
        raise ChaosError(f"refusing to send a request to {url!r}")
    payload = None if body is None else json.dumps(body).encode()
    sent_headers = {"Accept": "application/json", **(headers or {})}
    if payload is not None:
        sent_headers["Content-Type"] = "application/json"
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    source = None
    if source_ip is not None:
        if not source_ip.startswith("127."):
            raise ChaosError(f"source address {source_ip!r} is not a loopback address")
        source = (source_ip, 0)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port or 80, timeout=timeout, source_address=source
    )
    try:
        connection.request(method, path, body=payload, headers=sent_headers)
        response = connection.getresponse()
        raw = response.read()
        answer_headers = {name.lower(): value for name, value in response.getheaders()}
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, latency_s=time.perf_counter() - started, error=type(exc).__name__)
    finally:
        connection.close()
    latency = time.perf_counter() - started
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Answer(status, answer_headers, parsed, latency)
