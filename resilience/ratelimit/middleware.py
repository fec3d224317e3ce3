"""The global per-IP flood limit, before authentication, and the RateLimit fields.

Runs early in ``MIDDLEWARE`` so a flood is refused before any authentication, database
or view work. On the way out it writes ``RateLimit-Policy`` and ``RateLimit`` for every
policy checked during the request, including the DRF throttles' ones, on successes and
refusals alike.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from resilience.problems import error_response
from resilience.ratelimit.config import get_config
from resilience.ratelimit.decisions import check_request, refusal_error, response_headers
from resilience.ratelimit.limiter import Decision


class RateLimitMiddleware:
    """Apply the configured flood policy to matching paths; add the RateLimit fields."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        config = get_config()
        policy = config.middleware_policy
        if (
            config.enabled
            and policy is not None
            and request.path.startswith(config.middleware_path_prefixes)
        ):
            decision = check_request(request, [policy])
            if not decision.allowed:
                return refusal_response(request, decision)
        response = self.get_response(request)
        for name, value in response_headers(request).items():
            response[name] = value
        return response


def refusal_response(request: HttpRequest, decision: Decision) -> HttpResponse:
    """The answer to a refused decision outside DRF (429, or 503 when failing closed).

    The same errors the DRF exception handler renders, so both answers match.
    """
    # The RateLimit fields go on both answers, the 503 of a fail-closed policy included.
    headers = response_headers(request)
    return error_response(request, refusal_error(decision), headers=headers)
