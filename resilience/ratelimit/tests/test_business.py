"""Fixed-window business rules on django-ratelimit: 429 problem+json, never 403 or 500."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from resilience.ratelimit.errors import QUOTA_EXCEEDED_TYPE, REDUCED_CAPACITY_TYPE
from resilience.ratelimit.tests.sf import parse_ratelimit_fields
from tests.problems import assert_problem
from tests.processes import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.urls("resilience.ratelimit.tests.urls")]


@pytest.fixture
def cache_down(settings):
    """The default cache (where django-ratelimit counts) points at a closed port."""
    caches = {**settings.CACHES}
    caches["default"] = {**caches["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}
    settings.CACHES = caches


def decisions(group: str, result: str) -> float:
    labels = {"policy": group, "result": result, "mode": "fixed_window"}
    return REGISTRY.get_sample_value("resilience_ratelimit_decisions_total", labels) or 0.0


def test_over_the_limit_is_429_problem_json_with_retry_after(api_client):
    limited_before = decisions("test-ping", "limited")
    first = api_client.post("/ping")
    assert first.status_code == 200
    policies, limits = parse_ratelimit_fields(first)
    assert policies == {"test-ping": {"q": 2, "w": 60}}
    assert limits["test-ping"]["r"] == 1
    assert api_client.post("/ping").status_code == 200

    response = api_client.post("/ping")
    body = assert_problem(response, 429, "rate_limited")
    assert body["type"] == QUOTA_EXCEEDED_TYPE
    assert body["violated-policies"] == ["test-ping"]
    retry_after = int(response["Retry-After"])
    _, limits = parse_ratelimit_fields(response)
    # The window ends within a minute; Retry-After points no earlier than it.
    assert 1 <= retry_after <= 60
    assert retry_after >= limits["test-ping"]["t"]
    assert decisions("test-ping", "limited") - limited_before == 1


def test_django_ratelimits_own_decorator_is_mapped_to_429_not_403(api_client):
    assert api_client.post("/plain").status_code == 200
    body = assert_problem(api_client.post("/plain"), 429, "rate_limited")
    assert body["type"] == QUOTA_EXCEEDED_TYPE


def test_plain_django_views_get_the_same_problem_document(api_client):
    assert api_client.post("/django").status_code == 200
    response = api_client.post("/django")
    assert_problem(response, 429, "rate_limited")
    assert int(response["Retry-After"]) >= 1


def test_a_cache_that_cannot_count_fails_closed_with_503_by_default(api_client, cache_down):
    for _ in range(3):
        response = api_client.post("/ping")
        body = assert_problem(response, 503, "rate_limiter_unavailable")
        assert body["type"] == REDUCED_CAPACITY_TYPE
        assert int(response["Retry-After"]) >= 1


def test_a_fail_open_rule_serves_while_the_cache_is_down(api_client, cache_down):
    for _ in range(5):
        assert api_client.post("/ping-open").status_code == 200


def test_a_raising_cache_backend_is_handled_too(api_client, settings):
    """Django's own RedisCache raises ConnectionError (django-ratelimit issue #333)."""
    caches = {**settings.CACHES}
    caches["default"] = {
        **caches["default"],
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
    }
    settings.CACHES = caches
    assert_problem(api_client.post("/ping"), 503, "rate_limiter_unavailable")
    assert api_client.post("/ping-open").status_code == 200
