"""Time each request spent on each dependency, answered as a ``Server-Timing`` header.

Every call a breaker guards (``Breaker.call``: Postgres connections and queries, Redis
commands, payments attempts) adds its duration to the current request's tally; the
middleware answers the totals as ``Server-Timing: postgres;dur=12.5, redis;dur=0.8``
(W3C Server Timing, milliseconds), which browsers' developer tools and the chaos
harness read. The harness counts from it the user requests that still waited on a
dependency after its breaker had opened, apart from time spent queued or on the CPU,
which a client-side latency cannot tell apart (issue: recovery probing off the user
path). Only dependency names and durations are sent; ``RESILIENCE["server_timing"]``
turns the header off (the tally costs one dict update per call).
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Server-Timing"

_tally: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "dependency_tally", default=None
)
# A Server-Timing metric name is an HTTP token: anything else becomes "-".
_NOT_TOKEN = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")


def add(dependency: str, seconds: float) -> None:
    """Count ``seconds`` spent calling ``dependency`` against the current request."""
    tally = _tally.get()
    if tally is not None:
        tally[dependency] = tally.get(dependency, 0.0) + seconds


@contextmanager
def tallying() -> Iterator[dict[str, float]]:
    """Collect the dependency time of the block (one request) into the yielded dict."""
    tally: dict[str, float] = {}
    token = _tally.set(tally)
    try:
        yield tally
    finally:
        _tally.reset(token)


def header_value(tally: dict[str, float]) -> str:
    """``name;dur=ms`` per dependency, in the order they were first called."""
    return ", ".join(
        f"{_NOT_TOKEN.sub('-', name)};dur={seconds * 1000:.1f}" for name, seconds in tally.items()
    )


def parse(value: str | None) -> dict[str, float]:
    """Seconds per metric name from a ``Server-Timing`` value (entries without dur: 0)."""
    found: dict[str, float] = {}
    for entry in (value or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if not name:
            continue
        duration = 0.0
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "dur":
                try:
                    duration = float(raw.strip().strip('"')) / 1000
                except ValueError:
                    duration = 0.0
        found[name] = found.get(name, 0.0) + duration
    return found


class ServerTimingMiddleware:
    """Tally the request's dependency time and answer it as ``Server-Timing``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.enabled = settings.RESILIENCE.get("server_timing", True)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not self.enabled:
            return self.get_response(request)
        with tallying() as tally:
            response = self.get_response(request)
        if tally and HEADER not in response:
            response[HEADER] = header_value(tally)
        return response
