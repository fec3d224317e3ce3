"""One refusal hierarchy, one registry, and the declarations the start-up checks read."""

from __future__ import annotations

import pytest
import requests
from rest_framework.views import APIView

from common.exception_handler import problem_exception_handler
from resilience import registry
from resilience.breakers import breaker
from resilience.bulkhead import bulkhead
from resilience.checks import check_resilience_settings
from resilience.errors import (
    DEGRADE_ON,
    BreakerOpenError,
    BulkheadFullError,
    DeadlineExceededError,
    DependencyUnavailableError,
    DownstreamHTTPError,
    OverloadedError,
    PolicyRefusal,
    Refusal,
)
from resilience.http import client
from resilience.policies import get_policy
from resilience.ratelimit.config import get_config
from resilience.ratelimit.errors import RateLimitedError, RateLimiterUnavailableError
from resilience.ratelimit.throttles import throttle
from resilience.retry import budget_for
from resilience.ssrf import ResolutionTimeoutError


def _answer(status: int, retry_after: str | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


POLICY_REFUSALS = [
    BreakerOpenError("payments", 12.2),
    BulkheadFullError("payments"),
    DeadlineExceededError("payments"),
    OverloadedError(priority="normal", reason="limit", retry_after_s=3),
    RateLimitedError(policies=["orders_create"], retry_after=7),
    RateLimiterUnavailableError(policies=["login_ip"], retry_after=2),
]
UNAVAILABLE = [
    DependencyUnavailableError("postgres"),
    DownstreamHTTPError("payments", _answer(503, "4"), retry_after_s=4.0),
    ResolutionTimeoutError("hooks.example.com", 0.5),
]


@pytest.mark.parametrize("refusal", POLICY_REFUSALS + UNAVAILABLE, ids=repr)
def test_every_not_now_is_a_refusal_answered_with_a_whole_second_retry_after(refusal, settings):
    assert isinstance(refusal, Refusal)
    assert isinstance(refusal, DEGRADE_ON)
    response = problem_exception_handler(refusal, {})
    assert response is not None
    assert response.status_code in (429, 503)
    assert response.data["code"] == refusal.code
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    assert retry_after == refusal.retry_after


def test_policy_refusals_and_dependency_failures_are_told_apart():
    assert all(isinstance(r, PolicyRefusal) for r in POLICY_REFUSALS)
    assert not any(isinstance(r, PolicyRefusal) for r in UNAVAILABLE)
    assert BreakerOpenError("payments", 12.2).retry_after == 13  # rounded up, never down


def test_a_downstream_answer_without_retry_after_leaves_the_wait_to_the_retry_layer(settings):
    error = DownstreamHTTPError("payments", _answer(502), retry_after_s=None)
    assert error.retry_after_s is None  # retry.retry_after_of: full jitter, not a guess
    assert error.retry_after == settings.API_UNAVAILABLE_RETRY_AFTER_S  # the client's hint


def test_a_downstream_error_that_escapes_a_service_is_a_503_not_a_500():
    error = DownstreamHTTPError("payments", _answer(500), retry_after_s=None)
    response = problem_exception_handler(error, {})
    assert response.status_code == 503
    assert response.data["dependency"] == "payments"


def test_one_call_forgets_every_live_object():
    get_policy("payments")
    breaker("payments")
    bulkhead("payments")
    budget_for("payments", get_policy("payments").retry)
    client("payments")
    get_config()
    kinds = (registry.POLICY, registry.BREAKER, registry.BULKHEAD, registry.BUDGET)
    kinds += (registry.CLIENT, registry.RATELIMIT)
    assert all(registry.built(kind) for kind in kinds)
    built_breaker = breaker("payments")
    registry.reset_all()
    assert not any(registry.built(kind) for kind in kinds)
    assert breaker("payments") is not built_breaker  # rebuilt from settings on next use


def test_a_setting_override_forgets_only_what_was_built_from_it(settings):
    budget_for("payments", get_policy("payments").retry)
    limits = get_config()
    settings.RESILIENCE = {**settings.RESILIENCE}
    assert not registry.built(registry.BUDGET)
    assert get_config() is limits  # RESILIENCE_RATELIMIT did not change


def test_a_throttle_is_declared_in_one_line_and_checked_against_the_settings(settings):
    class ExportApi(APIView):
        throttle_classes = [throttle("orders_create", methods={"post"})]

    [declared] = ExportApi.throttle_classes
    assert declared.policies == ("orders_create",)
    assert declared.methods == frozenset({"POST"})
    with pytest.raises(ValueError, match="at least one policy"):
        throttle()


def test_a_dependency_the_code_declares_must_have_a_policy(settings):
    dependencies = {k: v for k, v in settings.RESILIENCE["dependencies"].items() if k != "payments"}
    settings.RESILIENCE = {**settings.RESILIENCE, "dependencies": dependencies}
    errors = [e for e in check_resilience_settings(None) if e.id == "resilience.E004"]
    assert [e.msg for e in errors] == [
        "RESILIENCE has no policy for 'payments', which the code calls."
    ]
