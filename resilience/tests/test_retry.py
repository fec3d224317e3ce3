"""Retries: full jitter within bounds and spread out, a budget, Retry-After, deadlines."""

from __future__ import annotations

import statistics

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import deadline
from resilience.policies import RetryPolicy
from resilience.retry import RetryBudget, call_with_retry, full_jitter_wait


class Flaky(Exception):
    def __init__(self, retry_after_s=None):
        self.retry_after_s = retry_after_s


class Fatal(Exception):
    pass


def state_for(attempt: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    return state


@settings(max_examples=300, deadline=None)
@given(
    base=st.floats(min_value=0.001, max_value=2.0),
    cap=st.floats(min_value=0.01, max_value=30.0),
    attempt=st.integers(min_value=1, max_value=30),
)
def test_every_wait_lies_within_zero_and_the_capped_exponential(base, cap, attempt):
    wait = full_jitter_wait(RetryPolicy(base_s=base, cap_s=cap))(state_for(attempt))
    assert 0 <= wait <= min(cap, base * 2 ** (attempt - 1)) + 1e-9


def test_many_clients_waits_are_spread_not_synchronised():
    """A thousand clients failing together retry at a thousand different moments."""
    policy = RetryPolicy(base_s=0.1, cap_s=10.0)
    for attempt in (1, 3, 6):
        upper = min(policy.cap_s, policy.base_s * 2 ** (attempt - 1))
        waits = [full_jitter_wait(policy)(state_for(attempt)) for _ in range(1000)]
        # Full-precision floats from a uniform draw: practically never equal.
        assert len(set(waits)) > 995
        # Uniform on [0, upper]: mean upper/2, stdev upper/sqrt(12) ~ 0.29 * upper.
        assert statistics.pstdev(waits) > 0.2 * upper
        assert 0.4 * upper < statistics.mean(waits) < 0.6 * upper


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_budget_allows_a_ratio_of_recent_calls_plus_a_floor():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, window_s=10, min_retries=3, clock=clock)
    for _ in range(100):
        budget.record_call()
    granted = sum(budget.try_spend() for _ in range(100))
    assert granted == 23  # 20% of 100 plus the floor of 3
    clock.now += 11  # the window slides past every deposit
    assert sum(budget.try_spend() for _ in range(10)) == 3


def run(policy, outcomes, *, retryable=lambda e: isinstance(e, Flaky)):
    """Call an attempt that yields ``outcomes`` in turn; return (result or exc, waits, calls)."""
    waits, calls = [], []

    def attempt():
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    try:
        result = call_with_retry(
            "retry-test", policy, attempt, retryable=retryable, sleep=waits.append
        )
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever was raised
        result = exc
    return result, waits, len(calls)


def test_retries_transient_failures_then_succeeds():
    policy = RetryPolicy(max_attempts=3, base_s=0.1, cap_s=1.0, budget_min_retries=10)
    result, waits, calls = run(policy, [Flaky(), Flaky(), "ok"])
    assert (result, calls) == ("ok", 3)
    assert 0 <= waits[0] <= 0.1
    assert 0 <= waits[1] <= 0.2


def test_gives_up_after_max_attempts_with_the_original_error():
    policy = RetryPolicy(max_attempts=3, budget_min_retries=10)
    error = Flaky()
    result, _, calls = run(policy, [Flaky(), Flaky(), error, "never"])
    assert result is error
    assert calls == 3


def test_never_retries_what_is_not_retryable():
    result, waits, calls = run(RetryPolicy(budget_min_retries=10), [Fatal(), "never"])
    assert isinstance(result, Fatal)
    assert (waits, calls) == ([], 1)


def test_honours_retry_after_up_to_the_cap():
    policy = RetryPolicy(max_attempts=3, retry_after_cap_s=2.0, budget_min_retries=10)
    result, waits, _ = run(policy, [Flaky(retry_after_s=1.5), "ok"])
    assert result == "ok"
    assert waits == [1.5]
    result, waits, calls = run(policy, [Flaky(retry_after_s=30), "ok"])
    assert isinstance(result, Flaky)  # waiting 30 s is not an option: give up at once
    assert (waits, calls) == ([], 1)


def test_stops_when_the_next_attempt_would_miss_the_deadline():
    policy = RetryPolicy(max_attempts=3, budget_min_retries=10)
    with deadline.deadline(0.5):
        result, waits, calls = run(policy, [Flaky(retry_after_s=1.0), "ok"])
    assert isinstance(result, Flaky)
    assert (waits, calls) == ([], 1)


def test_stops_when_the_budget_is_spent():
    policy = RetryPolicy(max_attempts=3, budget_ratio=0.0, budget_min_retries=1)
    first, _, first_calls = run(policy, [Flaky(), "ok"])
    second, _, second_calls = run(policy, [Flaky(), "ok"])
    assert (first, first_calls) == ("ok", 2)
    assert isinstance(second, Flaky)
    assert second_calls == 1


@pytest.mark.parametrize("attempts", [0, 11])
def test_unbounded_or_absent_attempts_are_refused(attempts):
    from resilience.policies import PolicyError, build_dependency_policy

    with pytest.raises(PolicyError, match="max_attempts"):
        build_dependency_policy(
            "x", {"timeouts": {"connect_s": 1, "read_s": 1}, "retry": {"max_attempts": attempts}}
        )
