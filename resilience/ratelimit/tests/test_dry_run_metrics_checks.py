"""Dry run, metrics and the start-up check of RESILIENCE_RATELIMIT."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY

from resilience.ratelimit.checks import check_ratelimit_settings
from resilience.ratelimit.config import build_config
from resilience.ratelimit.tests.sf import parse_ratelimit_fields
from tests.ratelimit_support import ratelimit_settings

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


def test_a_candidate_runs_in_dry_run_beside_the_live_policy(
    api_client, settings, limiter_with_clock
):
    """The runbook's "would a higher limit fit?": live 2, candidate 4, on real Redis."""
    ratelimit_settings(
        settings,
        policies={"flood": {"capacity": 2, "refill_rate": 0.001}},
        candidates={"flood": {"capacity": 4}},
    )
    live = {r: sample("flood", r) for r in ("allowed", "limited")}
    candidate = {r: sample("flood.candidate", r) for r in ("allowed", "dry_run_limited")}
    statuses = [api_client.get(ME).status_code for _ in range(6)]
    # The live policy alone decides: 2 through, then 429.
    assert statuses == [401, 401, 429, 429, 429, 429]
    assert sample("flood", "allowed") - live["allowed"] == 2
    assert sample("flood", "limited") - live["limited"] == 4
    # The candidate saw all six requests on its own bucket: it would have let 4 through.
    assert sample("flood.candidate", "allowed") - candidate["allowed"] == 4
    assert sample("flood.candidate", "dry_run_limited") - candidate["dry_run_limited"] == 2
    # Never advertised to clients.
    assert "flood.candidate" not in api_client.get(ME).get("RateLimit-Policy", "")


def test_a_candidate_has_its_own_buckets_and_is_listed(settings, limiter_with_clock):
    from django.core.management import call_command

    from resilience.ratelimit.limiter import Limiter, get_limiter

    ratelimit_settings(settings, candidates={"login_ip": {"capacity": 60}})
    config = build_config(settings.RESILIENCE_RATELIMIT)
    candidate = config.policy("login_ip.candidate")
    assert (candidate.capacity, candidate.scope, candidate.dry_run) == (60, "ip", True)
    assert candidate.refill_rate == config.policy("login_ip").refill_rate
    decision = get_limiter().check([(config.policy("login_ip"), "203.0.113.9")])
    # The decision is the live policy's alone; the candidate drew from its own bucket.
    assert [r.policy.name for r in decision.results] == ["login_ip"]
    store = get_limiter().redis_store(config)
    candidate_key = Limiter.key(config, candidate, "203.0.113.9")
    assert candidate_key != decision.results[0].key
    assert store.peek(candidate_key) is not None
    import io

    out = io.StringIO()
    call_command("ratelimit", "policies", stdout=out)
    assert "login_ip.candidate: capacity 60" in out.getvalue()
    assert "DRY RUN" in out.getvalue()


@pytest.mark.parametrize(
    "candidates",
    [{"nope": {"capacity": 3}}, {"flood": {"scope": "user"}}, {"flood": {"capacity": 0}}],
    ids=["unknown-policy", "scope-not-changeable", "bad-number"],
)
def test_a_bad_candidate_is_refused_at_start_up(settings, candidates):
    raw = {**settings.RESILIENCE_RATELIMIT, "candidates": candidates}
    with pytest.raises(ImproperlyConfigured):
        build_config(raw)
