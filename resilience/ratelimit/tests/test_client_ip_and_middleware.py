"""Client IP resolution and the flood limit in front of authentication."""

from __future__ import annotations

import ipaddress

import pytest

from resilience.ratelimit.client_ip import resolve_client_ip
from resilience.ratelimit.errors import QUOTA_EXCEEDED_TYPE
from tests.problems import assert_problem
from tests.ratelimit_support import ratelimit_settings

pytestmark = pytest.mark.django_db

ME = "/api/v1/auth/me"
PROXIES = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "127.0.0.1/32"))


@pytest.mark.parametrize(
    ("remote", "xff", "expected"),
    [
        # Not behind a trusted proxy: the header is the client's own words, ignored.
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),
        # Behind our proxy: the right-most address our proxies did not add.
        ("10.0.0.2", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.3", "198.51.100.7"),
        # Only proxies in the chain: the left-most of them is the best we know.
        ("10.0.0.2", "10.0.0.5, 10.0.0.3", "10.0.0.5"),
        # Garbage in the chain stops the walk at the last address our proxies vouched for.
        ("10.0.0.2", "198.51.100.7, not-an-ip", "10.0.0.2"),
        ("10.0.0.2", "", "10.0.0.2"),
        ("127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("127.0.0.1", "192.0.2.1:5123", "192.0.2.1"),
    ],
)
def test_resolve_client_ip(remote, xff, expected):
    assert str(resolve_client_ip(remote, xff, PROXIES)) == expected


def test_unparseable_peer_is_none():
    assert resolve_client_ip("", "1.2.3.4", PROXIES) is None


@pytest.fixture
def flood(settings, limiter_with_clock):
    ratelimit_settings(settings, policies={"flood": {"capacity": 3, "refill_rate": 0.01}})


def exhaust(client, **extra) -> None:
    for _ in range(3):
        assert client.get(ME, **extra).status_code == 401


def test_the_flood_limit_refuses_before_authentication_as_problem_json(api_client, flood):
    exhaust(api_client)
    response = api_client.get(ME, HTTP_AUTHORIZATION="Token whatever")
    body = assert_problem(response, 429, "rate_limited")
    assert body["type"] == QUOTA_EXCEEDED_TYPE
    assert body["violated-policies"] == ["flood"]
    assert body["instance"] == ME
    assert body["request_id"] == response["X-Request-ID"]
    assert int(response["Retry-After"]) >= 1


def test_a_flood_refusal_is_counted_not_logged_by_django(api_client, flood, caplog):
    # A flood is thousands of refusals a second: Django's WARNING line for each 429 cost
    # as much CPU as the refusal itself, on the cores the flood already takes.
    with caplog.at_level("WARNING", logger="django.request"):
        exhaust(api_client)  # three 401s: answers, not refusals, and logged as before
        assert len([r for r in caplog.records if r.name == "django.request"]) == 3
        caplog.clear()
        refused = api_client.get(ME)
    assert refused.status_code == 429
    assert not [r for r in caplog.records if r.name == "django.request"]


def test_spoofed_forwarded_for_from_an_untrusted_client_changes_nothing(api_client, flood):
    exhaust(api_client, HTTP_X_FORWARDED_FOR="198.51.100.1")
    for fake in ("198.51.100.2", "203.0.113.5, 198.51.100.3", "garbage"):
        response = api_client.get(ME, HTTP_X_FORWARDED_FOR=fake)
        assert_problem(response, 429, "rate_limited")


def test_behind_a_trusted_proxy_each_client_has_its_own_bucket(api_client, settings, flood):
    ratelimit_settings(settings, trusted_proxies=["127.0.0.1/32"])
    exhaust(api_client, HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert_problem(api_client.get(ME, HTTP_X_FORWARDED_FOR="198.51.100.1"), 429)
    # Another client behind the same proxy is unaffected...
    assert api_client.get(ME, HTTP_X_FORWARDED_FOR="198.51.100.2").status_code == 401
    # ...and a client cannot escape by prepending addresses to the header.
    response = api_client.get(ME, HTTP_X_FORWARDED_FOR="203.0.113.99, 198.51.100.1")
    assert_problem(response, 429)


def test_ipv6_clients_share_a_bucket_per_64(api_client, settings, flood):
    ratelimit_settings(settings, trusted_proxies=["127.0.0.1/32"])
    for host in ("2001:db8:1:1::1", "2001:db8:1:1::2", "2001:db8:1:1:ffff::3"):
        assert api_client.get(ME, HTTP_X_FORWARDED_FOR=host).status_code == 401
    assert_problem(api_client.get(ME, HTTP_X_FORWARDED_FOR="2001:db8:1:1::4"), 429)
    assert api_client.get(ME, HTTP_X_FORWARDED_FOR="2001:db8:1:2::1").status_code == 401


def test_paths_outside_the_api_are_not_flood_limited(api_client, flood):
    exhaust(api_client)
    for _ in range(5):
        assert api_client.get("/healthz").status_code == 200


def test_disabled_limiting_lets_everything_through(api_client, settings, flood):
    ratelimit_settings(settings, enabled=False)
    for _ in range(10):
        response = api_client.get(ME)
        assert response.status_code == 401
        assert "RateLimit" not in response
