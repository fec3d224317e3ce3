"""Prometheus metrics for every resilience decision.

Defined once here so names stay consistent (catalogue: ``docs/metrics.md``). They work
in prometheus_client's multiprocess mode: gauges declare how processes combine.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BREAKER_STATE = Gauge(
    "resilience_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
    ["dependency"],
    multiprocess_mode="livemax",
)
BREAKER_TRANSITIONS = Counter(
    "resilience_breaker_transitions_total",
    "Circuit breaker state changes.",
    ["dependency", "from_state", "to_state"],
)
BREAKER_NOT_PERMITTED = Counter(
    "resilience_breaker_calls_not_permitted_total",
    "Calls refused without reaching the dependency because its breaker was open.",
    ["dependency"],
)
BREAKER_FAILURES = Counter(
    "resilience_breaker_failures_total",
    "Calls that counted as dependency failures.",
    ["dependency"],
)
BREAKER_SLOW_CALLS = Counter(
    "resilience_breaker_slow_calls_total",
    "Calls slower than the breaker's slow-call threshold (success or not).",
    ["dependency"],
)
BREAKER_FAILURE_RATE = Gauge(
    "resilience_breaker_failure_rate",
    "Failure rate (0..1) in the breaker's sliding window, as of each process's last call.",
    ["dependency"],
    multiprocess_mode="livemax",
)
BREAKER_SLOW_CALL_RATE = Gauge(
    "resilience_breaker_slow_call_rate",
    "Slow-call rate (0..1) in the breaker's sliding window, as of each process's last call.",
    ["dependency"],
    multiprocess_mode="livemax",
)
BREAKER_PROBES = Counter(
    "resilience_breaker_probes_total",
    "Recovery probes of an open breaker's dependency, by outcome (ok, failed).",
    ["dependency", "outcome"],
)
BREAKER_PROBE_SECONDS = Histogram(
    "resilience_breaker_probe_seconds",
    "Duration of one recovery probe.",
    ["dependency"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RETRY_ATTEMPTS = Counter(
    "resilience_retry_attempts_total", "Attempts made, first ones included.", ["dependency"]
)
RETRY_RETRIES = Counter(
    "resilience_retry_retries_total", "Attempts that were retries.", ["dependency", "reason"]
)
RETRY_BUDGET_EXHAUSTED = Counter(
    "resilience_retry_budget_exhausted_total",
    "Retries refused because the dependency's retry budget was spent.",
    ["dependency"],
)
RETRY_GAVE_UP = Counter(
    "resilience_retry_gave_up_total",
    "Calls that failed after retrying stopped.",
    ["dependency", "reason"],
)
BULKHEAD_IN_USE = Gauge(
    "resilience_bulkhead_in_use",
    "Concurrent calls holding a bulkhead slot.",
    ["dependency"],
    multiprocess_mode="livesum",
)
BULKHEAD_REJECTED = Counter(
    "resilience_bulkhead_rejected_total",
    "Calls refused because the bulkhead was full.",
    ["dependency"],
)
BULKHEAD_FALLBACK = Counter(
    "resilience_bulkhead_fallback_total",
    "Fleet bulkhead slots taken from the per-process fallback because Redis was out.",
    ["dependency"],
)
DEADLINE_EXCEEDED = Counter(
    "resilience_deadline_exceeded_total",
    "Calls not started (or stopped retrying) because the request deadline passed.",
    ["dependency"],
)
SOCKET_DEADLINE_EXCEEDED = Counter(
    "resilience_socket_deadline_exceeded_total",
    "Driver calls whose socket was shut down at their client-side read deadline (no answer).",
    ["dependency"],
)
DEPENDENCY_CALL_SECONDS = Histogram(
    "resilience_dependency_call_seconds",
    "Duration of one attempt at a dependency, by outcome.",
    ["dependency", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DEGRADED_RESPONSES = Counter(
    "resilience_degraded_total",
    "Requests answered in a documented degraded mode instead of failing.",
    ["dependency", "mode"],
)

CONCURRENCY_LIMIT = Gauge(
    "resilience_concurrency_limit",
    "Requests a web process admits at once (adaptive concurrency limit), summed per node.",
    multiprocess_mode="livesum",
)
CONCURRENCY_IN_FLIGHT = Gauge(
    "resilience_concurrency_in_flight",
    "Requests being served under the concurrency limit now, summed over live processes.",
    multiprocess_mode="livesum",
)
CONCURRENCY_SHED = Counter(
    "resilience_concurrency_shed_total",
    "Requests shed with 503 overloaded, by priority class and reason"
    " (limit, priority, queue_time).",
    ["priority", "reason"],
)
CONCURRENCY_PIN_WAITS = Counter(
    "resilience_concurrency_pin_waits_total",
    "Requests that found the limit pinned for a minRTT measurement and waited for a slot"
    " instead of being shed at once, by outcome (admitted, shed).",
    ["outcome"],
)
CONCURRENCY_RTT = Gauge(
    "resilience_concurrency_rtt_seconds",
    "Request latency the adaptive limit follows: the process's own part of the last"
    " window's requests (short), the reference it is compared with (long: the measured"
    " minRTT, or Gradient2's long-term average), and the window's mean wait on"
    " dependencies (dependency_wait).",
    ["window"],
    multiprocess_mode="livemax",
)
