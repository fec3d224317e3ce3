"""RateLimit-Policy / RateLimit / Retry-After, parsed per the draft's grammar."""

from __future__ import annotations

import pytest

from resilience.ratelimit.headers import ServiceLimit, render, retry_after_seconds
from resilience.ratelimit.tests.sf import Token, parse_list, parse_ratelimit_fields
from tests.problems import assert_problem
from tests.ratelimit_support import ratelimit_settings

pytestmark = pytest.mark.django_db

ME = "/api/v1/auth/me"  # behind the flood limit, answers 401 without touching a view


@pytest.fixture
def flood(settings, limiter_with_clock):
    ratelimit_settings(settings, policies={"flood": {"capacity": 3, "refill_rate": 0.5}})
    return limiter_with_clock


def test_the_parser_accepts_the_drafts_examples_and_rejects_garbage():
    assert parse_list('"burst";q=100;w=60,"daily";q=1000;w=86400') == [
        ("burst", {"q": 100, "w": 60}),
        ("daily", {"q": 1000, "w": 86400}),
    ]
    [(_name, params)] = parse_list('"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:')
    assert params["qu"] == "content-bytes"
    assert isinstance(params["pk"], bytes)
    assert parse_list("default;r=50;t=30") == [(Token("default"), {"r": 50, "t": 30})]
    for bad in ['"a";q=1,', '"a";q=1.5', '"a;q=1', '"a";Q=1', "", '"a" "b"']:
        with pytest.raises(ValueError):  # noqa: PT011 - any parse error will do
            parse_list(bad)


def test_render_escapes_names_and_never_overstates():
    headers = render(
        [ServiceLimit(name='we"ird\\name', quota=5, window_s=60, remaining=2, next_token_s=11.9)]
    )
    policies, limits = parse_ratelimit_fields(headers)
    assert policies == {'we"ird\\name': {"q": 5, "w": 60}}
    assert limits == {'we"ird\\name': {"r": 2, "t": 11}}  # 11.9 s rounds down
    assert retry_after_seconds(11.9) == 12  # ...and Retry-After rounds up
    assert retry_after_seconds(0.0) == 1


def test_successes_carry_both_fields_in_draft_syntax(api_client, flood):
    response = api_client.get(ME)
    assert response.status_code == 401
    policies, limits = parse_ratelimit_fields(response)
    assert policies["flood"] == {"q": 3, "w": 6}  # 3 tokens at 0.5/s: empty to full in 6 s
    assert limits["flood"]["r"] == 2
    assert 0 <= limits["flood"]["t"] <= 2


def test_a_refusal_has_retry_after_no_earlier_than_t(api_client, flood, fake_clock):
    for _ in range(3):
        assert api_client.get(ME).status_code == 401
    fake_clock.advance(0.4)
    response = api_client.get(ME)
    body = assert_problem(response, 429, "rate_limited")
    assert body["violated-policies"] == ["flood"]
    _policies, limits = parse_ratelimit_fields(response)
    retry_after = int(response["Retry-After"])
    assert limits["flood"]["r"] == 0
    assert retry_after >= limits["flood"]["t"]
    # The bucket has a token after 2 - 0.4 = 1.6 s: Retry-After is 2, never 1.
    assert retry_after == 2
    fake_clock.advance(1.5)
    assert api_client.get(ME).status_code == 429  # 0.1 s early
    fake_clock.advance(0.1)
    assert api_client.get(ME).status_code == 401


def test_fields_list_every_policy_checked_in_the_request(api_client, settings, limiter_with_clock):
    """Flood (middleware) and login (throttle) policies appear together, in one field each."""
    ratelimit_settings(settings, policies={"flood": {"capacity": 50, "refill_rate": 10}})
    response = api_client.post(
        "/api/v1/auth/login", {"email": "x@example.com", "password": "nope"}, format="json"
    )
    assert response.status_code == 401
    policies, limits = parse_ratelimit_fields(response)
    assert set(policies) == {"flood", "login_ip", "login_username"}
    assert limits["login_username"]["r"] == 4
    assert policies["login_username"] == {"q": 5, "w": 900}


def test_unlimited_paths_carry_no_fields(api_client, flood):
    response = api_client.get("/healthz")
    assert response.status_code == 200
    assert "RateLimit" not in response
    assert "RateLimit-Policy" not in response
