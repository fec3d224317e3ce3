"""The effective timeout and policy table, as printed by ``manage.py resilience``.

``docs/timeouts.md`` is this table; a test keeps the two equal.
"""

from __future__ import annotations

from resilience.policies import BreakerPolicy, DependencyPolicy, all_policies

HEADER = (
    "| dependency | connect | read / statement | pool wait | request budget | attempts "
    "| backoff (full jitter) | retry budget | breaker | bulkhead |"
)
COLUMNS = 10


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _bulkhead(policy: DependencyPolicy) -> str:
    bulkhead = policy.bulkhead
    if bulkhead is None:
        return "-"
    where = (
        f"per {bulkhead.runs_in} process"
        if bulkhead.scope == "process"
        else f"across {bulkhead.runs_in} processes"
    )
    return f"{bulkhead.max_concurrent} {where}, wait {bulkhead.max_wait_s:g} s"


def _breaker(b: BreakerPolicy) -> str:
    if b.window == "consecutive":
        opens = f"{b.fail_max} failures in a row"
    else:
        window = f"last {b.window_size} calls" if b.window == "count" else f"{b.window_size} s"
        opens = f"{b.failure_rate:.0%} failed"
        if b.slow_call_s is not None:
            opens += f" or {b.slow_call_rate:.0%} slower than {b.slow_call_s:g} s"
        opens += f" of {window} (min {b.minimum_calls})"
    trials = f"{b.half_open_calls} trial{'s' if b.half_open_calls > 1 else ''}"
    recovery = f"probe {b.probe} (else {trials})" if b.probe else trials
    scope = "shared" if b.shared else "per process"
    return f"{opens}, open {b.reset_timeout_s:g} s, {recovery}, {scope}"


def row(policy: DependencyPolicy) -> str:
    t = policy.timeouts
    if t.read_s is not None and t.statement_s is not None:
        # Server-side statement timeout, then the client-side read deadline above it.
        read_cell = f"{_seconds(t.statement_s)} statement, {_seconds(t.read_s)} client"
    else:
        read_cell = _seconds(t.read_s if t.read_s is not None else t.statement_s)
    retry = policy.retry
    attempts = str(retry.max_attempts) if retry else "1"
    backoff = f"base {retry.base_s:g} s, cap {retry.cap_s:g} s" if retry else "-"
    budget = (
        f"{retry.budget_ratio:.0%} of calls / {retry.budget_window_s:g} s"
        f" + {retry.budget_min_retries}"
        if retry
        else "-"
    )
    breaker = _breaker(policy.breaker) if policy.breaker else "-"
    cells = [
        policy.name, _seconds(t.connect_s), read_cell, _seconds(t.pool_wait_s),
        _seconds(t.request_budget_s), attempts, backoff, budget, breaker, _bulkhead(policy),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def render() -> str:
    """The markdown table of every configured dependency."""
    lines = [HEADER, "|" + "---|" * COLUMNS]
    lines += [row(policy) for policy in all_policies().values()]
    return "\n".join(lines) + "\n"
