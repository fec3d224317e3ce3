"""DRF throttles backed by the token-bucket limiter, declared in one line per view.

A throttle names one or more policies of ``RESILIENCE_RATELIMIT``; all of them are
checked in one Redis round trip and a request is consumed from every bucket or from
none. A refusal raises :class:`~resilience.ratelimit.errors.RateLimitedError`, which the
exception handler renders as 429 problem+json with ``Retry-After``. A view declares its
limits; the policies themselves (rates, keys, fail open or closed) live in settings::

    class LoginApi(APIView):
        throttle_classes = [throttle("login_ip", "login_username")]

Every policy the URL conf's views name this way is checked at start-up against the
settings (``resilience.E102``), so a misspelt policy fails ``manage.py check``, not a
request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from django.urls import URLResolver, get_resolver
from rest_framework.throttling import BaseThrottle

from resilience.ratelimit.decisions import check_request, enforce

# Policy names code uses outside a view's throttles (the admin's login form).
_declared: set[str] = set()
_declared_lock = threading.Lock()


class TokenBucketThrottle(BaseThrottle):
    """Check ``policies`` (names in ``RESILIENCE_RATELIMIT``) for ``methods`` (all if None)."""

    policies: ClassVar[tuple[str, ...]] = ()
    methods: ClassVar[frozenset[str] | None] = None

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return True
        enforce(check_request(request, self.policies), request)
        return True

    def wait(self) -> float | None:
        # Never reached: a refusal raises with its own Retry-After.
        return None


def throttle(*policies: str, methods: Iterable[str] | None = None) -> type[TokenBucketThrottle]:
    """A throttle for ``policies``, applied to ``methods`` only when given (``{"POST"}``)."""
    if not policies:
        raise ValueError("a throttle names at least one policy")
    only = None if methods is None else frozenset(m.upper() for m in methods)
    name = "Throttle_" + "_".join(policies)
    return type(name, (TokenBucketThrottle,), {"policies": tuple(policies), "methods": only})


def declare_policies(names: Iterable[str]) -> None:
    """Record policy names that code uses outside a throttle (for the start-up check)."""
    with _declared_lock:
        _declared.update(names)


def declared_policies() -> frozenset[str]:
    """Every policy name the URL conf's views throttle with, and :func:`declare_policies`'s."""
    with _declared_lock:
        found = set(_declared)
    for view in _views(get_resolver().url_patterns):
        for throttle_class in getattr(view, "throttle_classes", ()):
            found.update(getattr(throttle_class, "policies", ()))
    return frozenset(found)


def _views(patterns: Iterable[Any]) -> Iterator[type]:
    """The view classes of a URL conf (DRF's ``as_view()`` keeps the class as ``cls``)."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _views(pattern.url_patterns)
        elif (view := getattr(pattern.callback, "cls", None)) is not None:
            yield view
