"""Collapse load: open-loop traffic above what a fault leaves the baseline, from the settings.

A fault that slows a dependency makes every request that calls it hold a web thread for
as long as the call lasts. Without the patterns nothing stops those requests from taking
every thread, so the stack can serve at most

    capacity = web processes x threads per process / hold time

requests per second that touch the dependency (hold time: the fault's latency, cut by the
per-attempt timeout the baseline keeps). Above it the baseline queues and collapses; the
bulkhead, the latency budget and the breaker exist to keep the resilient stack serving.
The collapse mode drives ``factor`` x that rate (bounded by a ceiling of what a 2-core
machine can send and serve), with WEB_WORKERS and WEB_THREADS read from the settings of
the stack under test, never from numbers written here.

A fault that fails calls fast (a refused connection, a 503) takes no thread for long:
its capacity is not bounded by threads, so the load is the ceiling.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaos.scenarios.client import ChaosError
from chaos.scenarios.faults import ProxyToxic, SimulatorFaults

if TYPE_CHECKING:
    from chaos.scenarios.base import Scenario

ROOT = Path(__file__).resolve().parent.parent.parent
# How far above the capacity the collapse mode drives, and the most a run may send: what
# this 2-core machine can send and serve (the client shares it with the stack).
COLLAPSE_FACTOR = 1.5
COLLAPSE_CEILING_RPS = 60.0
# Names the breaker policy may give its slow-call duration threshold (resilience4j's
# slowCallDurationThreshold), first match wins.
SLOW_CALL_KEYS = ("slow_call_duration_s", "slow_call_duration_threshold_s", "slow_call_s")

_SNIPPET = """
import json, django
django.setup()
from django.conf import settings
print(json.dumps({
    "web_workers": settings.WEB_WORKERS,
    "web_threads": settings.WEB_THREADS,
    "request_deadline_s": settings.RESILIENCE.get("request_deadline_s"),
    "dependencies": settings.RESILIENCE["dependencies"],
    "ratelimit_policies": settings.RESILIENCE_RATELIMIT["policies"],
}, default=str))
"""


@dataclass(frozen=True)
class StackSettings:
    """The numbers of the stack under test that the load and the report depend on."""

    web_workers: int
    web_threads: int
    request_deadline_s: float | None = None
    dependencies: dict[str, Any] = field(default_factory=dict)
    ratelimit_policies: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def policy(self, dependency: str) -> dict[str, Any]:
        return self.dependencies.get(dependency) or {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def settings_of_env(env: dict[str, str]) -> StackSettings:
    """The settings a process started with ``env`` runs on (a child Python loads them)."""
    answer = subprocess.run(
        [sys.executable, "-c", _SNIPPET],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if answer.returncode != 0:
        raise ChaosError(f"could not read the stack's settings: {answer.stderr[-1500:]}")
    data = json.loads(answer.stdout.strip().splitlines()[-1])
    module = env.get("DJANGO_SETTINGS_MODULE", "?")
    return StackSettings(**data, source=f"settings of the stack's environment ({module})")


def settings_of_this_process() -> StackSettings:
    """This process's Django settings (an external stack started from the same environment)."""
    from django.conf import settings

    return StackSettings(
        web_workers=settings.WEB_WORKERS,
        web_threads=settings.WEB_THREADS,
        request_deadline_s=settings.RESILIENCE.get("request_deadline_s"),
        dependencies=json.loads(json.dumps(settings.RESILIENCE["dependencies"], default=str)),
        ratelimit_policies=json.loads(
            json.dumps(settings.RESILIENCE_RATELIMIT["policies"], default=str)
        ),
        source=f"settings of this command ({os.environ.get('DJANGO_SETTINGS_MODULE', '?')})",
    )


def users_for(stack: StackSettings | None, orders_per_s: float) -> int:
    """Enough users that each places orders at half its refill rate (orders_create): the
    per-user limit then never refuses one, whatever the total rate."""
    policy = (stack.ratelimit_policies if stack else {}).get("orders_create") or {}
    refill = float(policy.get("refill_rate") or 1.0)
    return max(2, math.ceil(orders_per_s / (refill / 2)))


def slow_call_threshold(stack: StackSettings, dependency: str) -> tuple[float | None, str]:
    """The breaker's slow-call duration threshold, or the timeout standing in for it."""
    policy = stack.policy(dependency)
    breaker = policy.get("breaker") or {}
    for key in SLOW_CALL_KEYS:
        if breaker.get(key) is not None:
            return float(breaker[key]), f"breaker {key} of {dependency}"
    timeouts = policy.get("timeouts") or {}
    for key in ("read_s", "statement_s", "pool_wait_s"):
        if timeouts.get(key) is not None:
            return float(timeouts[key]), (
                f"no slow-call threshold in the {dependency} breaker policy: "
                f"its {key} timeout instead"
            )
    return None, f"no slow-call threshold or timeout for {dependency!r}"


def fault_hold(scenario: Scenario, stack: StackSettings) -> tuple[float | None, str]:
    """Seconds one call to the faulted dependency holds a baseline thread, and why."""
    fault = scenario.fault
    extra = scenario.extra
    if isinstance(fault, SimulatorFaults) and fault.service == "payments":
        latency_ms = dict(fault.switches).get("latency_ms")
        if not latency_ms:
            return None, "payments fails fast (no added latency)"
        latency = float(latency_ms) / 1000
        read_s = (stack.policy("payments").get("timeouts") or {}).get("read_s")
        if read_s is not None and float(read_s) < latency:
            return float(read_s), (
                f"payments latency {latency:g} s, cut to {float(read_s):g} s by the read "
                "timeout (the baseline keeps timeouts)"
            )
        return latency, f"payments latency {latency:g} s"
    if isinstance(fault, ProxyToxic) and fault.type == "latency":
        latency = float(dict(fault.attributes).get("latency", 0)) / 1000
        trips = int(extra.get("round_trips_per_request", 1))
        return latency * trips, (
            f"{fault.proxy} latency {latency * 1000:g} ms per round trip x about {trips} "
            "round trips per request (estimate)"
        )
    return None, f"{fault.description}: calls fail fast"


@dataclass(frozen=True)
class LoadPlan:
    """The rate a run sends and how it was derived (printed, and kept in the report)."""

    mode: str  # "steady" (the --rps given) or "collapse"
    rps: float
    web_workers: int | None = None
    web_threads: int | None = None
    hold_s: float | None = None
    hold_reason: str = ""
    share: float = 1.0  # fraction of the traffic that calls the faulted dependency
    capacity_rps: float | None = None  # requests/s touching the dependency the baseline holds
    factor: float = COLLAPSE_FACTOR
    ceiling_rps: float = COLLAPSE_CEILING_RPS
    clipped: bool = False
    settings_source: str = ""

    def describe(self) -> str:
        if self.mode != "collapse":
            return f"steady load: {self.rps:g} requests/s"
        threads = f"{self.web_workers} web processes x {self.web_threads} threads"
        if self.capacity_rps is None:
            head = f"capacity left by the fault: not bounded by threads ({self.hold_reason})"
        else:
            head = (
                f"capacity left by the fault: {threads} / {self.hold_s:g} s "
                f"= {self.capacity_rps:.1f} requests/s touching the dependency "
                f"({self.hold_reason})"
            )
            if self.share < 1:
                head += (
                    f"; they are {self.share:.0%} of the traffic, so "
                    f"{self.capacity_rps / self.share:.1f} requests/s in all"
                )
        if self.capacity_rps is None:
            tail = f"driving the ceiling, {self.rps:g} requests/s"
        else:
            tail = f"driving {self.factor:g}x = {self.rps:g} requests/s"
            if self.clipped:
                tail += f" (clipped to the ceiling of {self.ceiling_rps:g})"
            if self.rps * self.share < self.capacity_rps:
                tail += (
                    "; NOTE: below the capacity, so the baseline is not pushed past it "
                    "(raise --max-rps on a machine that can send and serve more)"
                )
        return f"{head}; {tail} [{self.settings_source}]"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "description": self.describe()}


def collapse_plan(
    scenario: Scenario,
    stack: StackSettings,
    *,
    factor: float = COLLAPSE_FACTOR,
    ceiling_rps: float = COLLAPSE_CEILING_RPS,
) -> LoadPlan:
    """The collapse load for ``scenario`` on a stack with ``stack``'s settings."""
    hold, reason = fault_hold(scenario, stack)
    share = scenario.create_share if scenario.dependency == "payments" else 1.0
    common = {
        "mode": "collapse",
        "web_workers": stack.web_workers,
        "web_threads": stack.web_threads,
        "hold_reason": reason,
        "share": share,
        "factor": factor,
        "ceiling_rps": ceiling_rps,
        "settings_source": stack.source,
    }
    if hold is None or hold <= 0:
        return LoadPlan(rps=ceiling_rps, **common)
    capacity = stack.web_workers * stack.web_threads / hold
    wanted = factor * capacity / share
    rps = min(wanted, ceiling_rps)
    return LoadPlan(
        rps=float(math.floor(rps)),
        hold_s=hold,
        capacity_rps=capacity,
        clipped=wanted > ceiling_rps,
        **common,
    )
