"""The resilient HTTP client: a requests session for one named dependency.

Every call gets the dependency's policies (``resilience.calls``) and an explicit
``(connect, read)`` timeout clipped to the request deadline; a call cannot be made
without one. Only 429/502/503/504 answers, connection errors and timeouts are retried
(read timeouts only off the request path), and only for idempotent methods or requests
that carry an ``Idempotency-Key``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from resilience import registry
from resilience.calls import call
from resilience.db import release_idle_connections
from resilience.errors import DependencyUnavailableError, DownstreamHTTPError
from resilience.policies import TimeoutPolicy, get_policy
from resilience.request_id import current_request_id

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# The dependency could not be reached or did not answer in time.
UNREACHABLE = (requests.ConnectionError, requests.Timeout)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def is_downstream_failure(exc: BaseException) -> bool:
    """What the breaker counts: server errors, throttling, no connection, timeouts."""
    if isinstance(exc, DownstreamHTTPError):
        return exc.downstream_status >= 500 or exc.downstream_status == 429
    return isinstance(exc, UNREACHABLE)


def is_retryable(exc: BaseException, *, on_request_path: bool = False) -> bool:
    """What retry may try again: 429/502/503/504, connection errors and timeouts.

    On the request path a read timeout is not retried: the dependency took the request
    and is slow, so another attempt would only spend the user's time (and add load to
    a struggling dependency); the caller defers the work to the background instead. A
    refused or timed-out connection (nothing was sent) and a 503 with a short
    ``Retry-After`` may still be retried within the latency budget.
    """
    if isinstance(exc, DownstreamHTTPError):
        return exc.downstream_status in RETRYABLE_STATUSES
    if on_request_path and isinstance(exc, requests.ReadTimeout):
        return False
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


class ResilientSession:
    """HTTP calls to one dependency with all of its policies applied.

    One ``requests.Session`` per thread (requests does not promise thread safety); its
    connection pool is sized to the dependency's bulkhead and never blocks.
    """

    def __init__(
        self,
        dependency: str,
        *,
        base_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        session_factory: Callable[[int], requests.Session] | None = None,
    ) -> None:
        self.dependency = dependency
        # Builds each thread's session given the pool size; it mounts its own adapters
        # (e.g. the SSRF-guarded one of resilience.ssrf for webhook targets).
        self._session_factory = session_factory
        self.policy = get_policy(dependency)
        if self.policy.timeouts.read_s is None:
            raise ValueError(f"{dependency} has no read timeout: refusing to build a client")
        self.base_url = (base_url or self.policy.base_url or "").rstrip("/")
        self._sleep = sleep
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            size = self.policy.bulkhead.max_concurrent if self.policy.bulkhead else 10
            if self._session_factory is not None:
                session = self._session_factory(size)
            else:
                session = requests.Session()
                adapter = HTTPAdapter(
                    pool_connections=1, pool_maxsize=size, pool_block=False, max_retries=0
                )
                session.mount("http://", adapter)
                session.mount("https://", adapter)
            self._local.session = session
        return session

    def request(
        self,
        method: str,
        url: str,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Make the call; 2xx-4xx (but 429) are returned, the rest raise after the policies.

        ``retry=False`` makes a single attempt, for callers whose own schedule is the
        retry layer (a background task): retries happen at one layer only.
        """
        if "timeout" in kwargs:
            raise TypeError("timeouts come from the dependency's policy, not the call site")
        method = method.upper()
        full_url = url if url.startswith(("http://", "https://")) else f"{self.base_url}{url}"
        sent_headers = dict(headers or {})
        if request_id := current_request_id():
            sent_headers.setdefault("X-Request-ID", request_id)
        if idempotency_key is not None:
            sent_headers["Idempotency-Key"] = idempotency_key

        def attempt(timeouts: TimeoutPolicy) -> requests.Response:
            response = self._session().request(
                method,
                full_url,
                headers=sent_headers,
                timeout=(timeouts.connect_s, timeouts.read_s),
                allow_redirects=False,
                **kwargs,
            )
            if response.status_code >= 500 or response.status_code == 429:
                raise DownstreamHTTPError(
                    self.dependency,
                    response,
                    retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
                )
            return response

        # Never hold a pooled database connection while waiting on this dependency.
        release_idle_connections()
        try:
            return call(
                self.dependency,
                attempt,
                retryable=is_retryable if retry else None,
                idempotent=method in IDEMPOTENT_METHODS or idempotency_key is not None,
                sleep=self._sleep,
            )
        except UNREACHABLE as exc:
            # What escapes the policies is a refusal like every other "not now"; the
            # cause (``__cause__``) says what failed.
            raise DependencyUnavailableError(
                self.dependency,
                detail=f"{self.dependency} could not be reached ({type(exc).__name__}).",
            ) from exc


def client(
    dependency: str, *, session_factory: Callable[[int], requests.Session] | None = None
) -> ResilientSession:
    """The shared resilient session of ``dependency`` (``session_factory`` on first build)."""
    return registry.live(
        registry.CLIENT,
        dependency,
        lambda: ResilientSession(dependency, session_factory=session_factory),
    )


def probe_status(dependency: str, path: str = "/healthz") -> int:
    """One GET of ``<base_url><path>`` for a recovery probe; returns the status code.

    Deliberately outside the policies: the probe runs *because* the breaker is open, so it
    must not pass through it, and it never retries (the probe runner is the schedule).
    It keeps the dependency's connect and read timeouts. Raises ``requests`` errors.
    """
    policy = get_policy(dependency)
    if policy.timeouts.read_s is None or not policy.base_url:
        raise ValueError(f"{dependency} has no base_url and read timeout to probe")
    url = f"{policy.base_url.rstrip('/')}{path}"
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=0))
        session.mount("https://", HTTPAdapter(max_retries=0))
        response = session.get(
            url,
            timeout=(policy.timeouts.connect_s, policy.timeouts.read_s),
            allow_redirects=False,
        )
    return response.status_code
