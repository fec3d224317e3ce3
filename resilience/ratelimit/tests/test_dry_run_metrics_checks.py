"""Dry run, metrics and the start-up check of RESILIENCE_RATELIMIT."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY

from resilience.ratelimit.checks import check_ratelimit_settings
from resilience.ratelimit.config import build_config
from resilience.ratelimit.testing import ratelimit_settings
from resilience.ratelimit.tests.sf import parse_ratelimit_fields

pytestmark = pytest.mark.django_db

ME = "/api/v1/auth/me"


def sample(policy: str, result: str, mode: str = "redis") -> float:
    labels = {"policy": policy, "result": result, "mode": mode}
    return REGISTRY.get_sample_value("resilience_ratelimit_decisions_total", labels) or 0.0


def test_dry_run_lets_traffic_through_and_counts_would_be_refusals(
    api_client, settings, limiter_with_clock
):
    ratelimit_settings(
        settings,
        policies={
            "flood": {"capacity": 2, "refill_rate": 0.001, "dry_run": True},
            "login_ip": {"capacity": 100, "refill_rate": 1},
        },
    )
    before = {r: sample("flood", r) for r in ("allowed", "dry_run_limited", "limited")}
    statuses = [api_client.get(ME).status_code for _ in range(6)]
    assert statuses == [401] * 6
    after = {r: sample("flood", r) for r in ("allowed", "dry_run_limited", "limited")}
    # Each decision counts once: within the limit, or over it but let through (dry run).
    assert after["allowed"] - before["allowed"] == 2
    assert after["dry_run_limited"] - before["dry_run_limited"] == 4
    assert after["limited"] == before["limited"]
    # A dry-run policy is not advertised: clients must not shape traffic by a test limit.
    assert "RateLimit" not in api_client.get(ME)
    login = api_client.post(
        "/api/v1/auth/login", {"email": "a@b.c", "password": "x"}, format="json"
    )
    policies, _ = parse_ratelimit_fields(login)
    assert "flood" not in policies
    assert "login_ip" in policies


def test_decisions_and_redis_latency_are_counted(api_client, settings, limiter_with_clock):
    ratelimit_settings(settings, policies={"flood": {"capacity": 1, "refill_rate": 0.001}})
    latency = "resilience_ratelimit_redis_call_seconds_count"
    calls_before = REGISTRY.get_sample_value(latency, {"outcome": "ok"}) or 0.0
    allowed, limited = sample("flood", "allowed"), sample("flood", "limited")
    api_client.get(ME)
    api_client.get(ME)
    assert sample("flood", "allowed") - allowed == 1
    assert sample("flood", "limited") - limited == 1
    assert (REGISTRY.get_sample_value(latency, {"outcome": "ok"}) or 0.0) - calls_before == 2


def test_the_shipped_settings_pass_the_check():
    assert check_ratelimit_settings(None) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"refil_rate": 1}, "unknown key"),
        ({"scope": "tenant"}, "scope"),
        ({"fail": "sometimes"}, "fail"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": 2.5}, "capacity"),
        ({"refill_rate": 0}, "refill_rate"),
    ],
)
def test_bad_policies_are_rejected_at_start_up(settings, change, message):
    raw = {**settings.RESILIENCE_RATELIMIT}
    raw["policies"] = {**raw["policies"], "flood": {**raw["policies"]["flood"], **change}}
    with pytest.raises(ImproperlyConfigured, match=message):
        build_config(raw)
    settings.RESILIENCE_RATELIMIT = raw
    [error] = check_ratelimit_settings(None)
    assert error.id == "resilience.E101"


def test_a_missing_policy_the_api_needs_is_an_error(settings):
    raw = {**settings.RESILIENCE_RATELIMIT}
    raw["policies"] = {k: v for k, v in raw["policies"].items() if k != "login_username"}
    settings.RESILIENCE_RATELIMIT = raw
    [error] = check_ratelimit_settings(None)
    assert error.id == "resilience.E102"


def test_unknown_top_level_keys_and_bad_proxies_are_rejected(settings):
    with pytest.raises(ImproperlyConfigured, match="unknown key"):
        build_config({**settings.RESILIENCE_RATELIMIT, "trusted_proxy": []})
    with pytest.raises(ImproperlyConfigured, match="trusted_proxies"):
        build_config({**settings.RESILIENCE_RATELIMIT, "trusted_proxies": ["10.0.0.0/33"]})
