"""Rate-limit refusals, rendered as RFC 9457 problems.

The problem types are the ones of draft-ietf-httpapi-ratelimit-headers (REFERENCE.md):
``quota-exceeded`` with 429 and ``temporary-reduced-capacity`` with 503, each with the
``violated-policies`` extension member. ``code`` stays our stable machine code. Both are
:class:`~resilience.errors.PolicyRefusal`: the limiter decided, nothing was called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from resilience.errors import PolicyRefusal
from resilience.problems import ProblemCode

QUOTA_EXCEEDED_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
REDUCED_CAPACITY_TYPE = "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
# The "dependency" a rate-limit refusal names: the client's own quota.
RATE_LIMIT = "ratelimit"


class RateLimitedError(PolicyRefusal):
    """429: the client used up a quota; ``Retry-After`` says when it has room again."""

    status = 429
    code = ProblemCode.RATE_LIMITED
    title = "Request cannot be satisfied as assigned quota has been exceeded"

    def __init__(
        self,
        *,
        policies: Sequence[str],
        retry_after: int | None,
        headers: Mapping[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        self.policies = list(policies)
        extra: dict[str, object] = {"type": QUOTA_EXCEEDED_TYPE, "violated-policies": self.policies}
        if retry_after is not None:
            extra["retry_after"] = retry_after
        if detail is None:
            detail = "Too many requests."
            if retry_after is not None:
                detail = f"Too many requests; retry after {retry_after} s."
        super().__init__(
            RATE_LIMIT,
            retry_after_s=retry_after,
            detail=detail,
            headers=dict(headers or {}),
            extra=extra,
        )
        if retry_after is None:  # a limiter that cannot say when (django-ratelimit's)
            self.headers.pop("Retry-After", None)
        self.retry_after = retry_after


class RateLimiterUnavailableError(PolicyRefusal):
    """503: a fail-closed policy cannot be checked because its store is unavailable."""

    status = 503
    code = ProblemCode.RATE_LIMITER_UNAVAILABLE
    title = "Request cannot be satisfied due to temporary server capacity constraints"

    def __init__(self, *, policies: Sequence[str], retry_after: int) -> None:
        self.policies = list(policies)
        super().__init__(
            RATE_LIMIT,
            retry_after_s=retry_after,
            detail="This endpoint is limited and its limiter is unavailable; retry later.",
            extra={
                "type": REDUCED_CAPACITY_TYPE,
                "violated-policies": self.policies,
                "retry_after": retry_after,
            },
        )
