"""Policies from settings: unknown keys and unsafe values never start the service."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks

from resilience.policies import PolicyError, build_dependency_policy, get_policy

VALID = {"timeouts": {"connect_s": 0.5, "read_s": 1.0}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "timeouts are required"),
        ({"timeouts": {"read_s": 1}}, "connect_s"),
        ({**VALID, "retrys": {}}, "unknown keys"),
        ({**VALID, "retry": {"max_attemps": 3}}, "unknown keys"),
        ({"timeouts": {"connect_s": 0, "read_s": 1}}, "above 0"),
        ({"timeouts": {"connect_s": float("inf"), "read_s": 1}}, "finite"),
        ({**VALID, "breaker": {"fail_max": 0}}, "fail_max"),
        ({**VALID, "breaker": {"window": "sliding"}}, "window must be one of"),
        ({**VALID, "breaker": {"failure_rate": 0}}, "failure_rate"),
        ({**VALID, "breaker": {"slow_call_rate": 1.5}}, "slow_call_rate"),
        ({**VALID, "breaker": {"slow_call_s": 0}}, "slow_call_s"),
        ({**VALID, "breaker": {"window_size": 5, "minimum_calls": 10}}, "minimum_calls"),
        ({**VALID, "breaker": {"half_open_calls": 0}}, "half_open_calls"),
        ({**VALID, "bulkhead": {"max_concurrent": 0}}, "max_concurrent"),
        ({**VALID, "retry": {"budget_ratio": 3}}, "budget_ratio"),
    ],
)
def test_bad_policies_are_rejected(raw, message):
    with pytest.raises(PolicyError, match=message):
        build_dependency_policy("dep", raw)


def test_the_system_check_reports_a_misspelt_key(settings):
    assert not [e for e in run_checks() if e.id.startswith("resilience.")]
    dependencies = {**settings.RESILIENCE["dependencies"]}
    dependencies["payments"] = {**dependencies["payments"], "timeout": {"connect_s": 1}}
    settings.RESILIENCE = {**settings.RESILIENCE, "dependencies": dependencies, "deadline": 3}
    errors = {e.id: e.msg for e in run_checks() if e.id.startswith("resilience.")}
    assert "resilience.E002" in errors  # "deadline" is not a key
    assert "unknown keys ['timeout']" in errors["resilience.E005"]


def test_webhook_targets_get_their_own_named_policy():
    policy = get_policy("webhook:hooks.example.com")
    assert policy.name == "webhook:hooks.example.com"
    assert policy.breaker is not None
    assert policy.retry is None  # retried by the delivery schedule, one layer only
