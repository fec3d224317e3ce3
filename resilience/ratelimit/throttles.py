"""DRF throttles backed by the token-bucket limiter.

A throttle names one or more policies; all of them are checked in one Redis round trip
and a request is consumed from every bucket or from none. A refusal raises the project's
:class:`~resilience.ratelimit.errors.RateLimitedError`, which the one exception handler
renders as 429 problem+json with ``Retry-After``. Apply one with ``throttle_classes``::

    class LoginApi(APIView):
        throttle_classes = [LoginThrottle]
"""

from __future__ import annotations

from typing import Any, ClassVar

from rest_framework.throttling import BaseThrottle

from resilience.ratelimit.limiter import check_request, enforce


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


class SignupThrottle(TokenBucketThrottle):
    """Sign-ups per client IP: slows mass account creation."""

    policies = ("signup",)


class LoginThrottle(TokenBucketThrottle):
    """Logins per client IP and per submitted username, in one decision.

    Per IP stops one source trying many accounts (credential stuffing); per username
    stops many sources trying one account (distributed brute force). Every attempt
    counts, right or wrong, so a correct password is refused too once a bucket is empty.
    """

    policies = ("login_ip", "login_username")


class OrderCreateThrottle(TokenBucketThrottle):
    """Order creation per user (``POST`` only; listing is not limited here)."""

    policies = ("orders_create",)
    methods = frozenset({"POST"})


class OrderReportThrottle(TokenBucketThrottle):
    """The expensive report per user, tight."""

    policies = ("orders_report",)
