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

A load spike (``overload``) breaks no dependency: the stack's capacity is what its CPU
serves, which no setting says, so the run measures it first (closed loop, the
scenario's own mix and client) and drives a fraction of it before and after the spike
and a multiple of it during (``capacity_plan``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaos.scenarios.client import ChaosError
from chaos.scenarios.faults import LoadSpike, ProxyToxic, SimulatorFaults

if TYPE_CHECKING:
    from chaos.scenarios.base import Scenario

ROOT = Path(__file__).resolve().parent.parent.parent
# How far above the capacity the collapse mode drives, and the most a run may send: what
# this 2-core machine can send and serve (the client shares it with the stack).
COLLAPSE_FACTOR = 1.5
COLLAPSE_CEILING_RPS = 60.0
# Capacity measurement: closed-loop clients per web thread, a warm-up not counted, and
# how long. Half the threads: on two cores the stack's answers per second peak well
# below its thread count, and more clients only queue, which the shedder cuts. With
# one client per thread it shed 176 to 511 requests of each 6 s measurement and
# measured 140 to 192 answers/s over four in a row; with half, 12 to 34 after the
# first and 198 to 208 answers/s (adr/0010; `python manage.py chaos capacity` measures
# it as the runs do, probe by probe).
CAPACITY_CLIENTS_PER_THREAD = 0.5
CAPACITY_WARMUP_S = 1.0
CAPACITY_MEASURE_S = 6.0
# The load before and after a spike (1x, the reference the spike's goodput and p99 are
# held to), as a fraction of the measured capacity; the spike is a multiple of it. At
# the whole closed-loop capacity, open-loop arrivals have no stable queue: 1x at 175.8
# requests/s had a critical p99 of 670 ms before any spike and took 17.6 s to recover
# after, and 3x that (527 requests/s) hit the client's in-flight cap, 1,462 not sent:
# the client shares the two cores (adr/0010).
SPIKE_STEADY_FRACTION = 0.6
# A collapse load stays under this fraction of the stack's measured healthy capacity, so
# the stack is not saturated before the fault (the 60 rps ceiling is a machine's).
COLLAPSE_HEALTHY_FRACTION = 0.8
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
    if isinstance(fault, ProxyToxic) and fault.type == "timeout":
        held = stack.web_workers * stack.web_threads
        return None, (
            f"{fault.description}: a baseline thread waits for an answer that never comes, "
            f"until the fault heals, so 0 requests/s are left once {held} threads wait"
        )
    return None, f"{fault.description}: calls fail fast"


@dataclass(frozen=True)
class LoadPlan:
    """The rate a run sends and how it was derived (printed, and kept in the report)."""

    mode: str  # "steady" (the --rps given), "collapse" or "capacity" (a load spike)
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
    steady_fraction: float = 1.0  # capacity mode: 1x, of the capacity, before and after
    healthy_capacity_rps: float | None = None  # collapse mode: measured, before the fault
    spike_rps: float | None = None  # capacity mode: the rate during the spike
    measured_with: str = ""  # capacity mode: how the capacity was measured

    def describe(self) -> str:
        if self.mode == "capacity" and self.capacity_rps is None:
            return "capacity of the stack: measured once the stack is steady"
        if self.mode == "capacity":
            return (
                f"capacity of the stack, measured: {self.capacity_rps:.1f} successful answers/s "
                f"of the mix ({self.measured_with}); 1x = {self.steady_fraction:g} of it = "
                f"{self.rps:g} requests/s before and after the spike, {self.factor:g}x = "
                f"{self.spike_rps:g} requests/s during it "
                f"({self.spike_rps / self.capacity_rps:.1f}x the capacity) [{self.settings_source}]"
            )
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
        if self.healthy_capacity_rps is not None:
            tail += (
                f"; ceiling {self.ceiling_rps:g} = the lower of --max-rps and "
                f"{COLLAPSE_HEALTHY_FRACTION:g}x the healthy capacity measured before the "
                f"fault, {self.healthy_capacity_rps:.1f} answers/s ({self.measured_with})"
            )
        if self.capacity_rps is not None and self.rps * self.share < self.capacity_rps:
            tail += (
                "; NOTE: below the capacity, so the baseline is not pushed past it "
                "(a machine that can send and serve more is needed to show the collapse)"
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
    healthy_capacity_rps: float | None = None,
    measured_with: str = "",
) -> LoadPlan:
    """The collapse load for ``scenario`` on a stack with ``stack``'s settings, clipped to
    ``COLLAPSE_HEALTHY_FRACTION`` of its measured healthy capacity when known."""
    if healthy_capacity_rps is not None:
        ceiling_rps = min(
            ceiling_rps, float(math.floor(COLLAPSE_HEALTHY_FRACTION * healthy_capacity_rps))
        )
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
        "healthy_capacity_rps": healthy_capacity_rps,
        "measured_with": measured_with,
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


def measure_capacity(
    operations: dict[str, Callable[[int], None]],
    pick: Callable[[], str],
    served: Callable[[], int],
    *,
    users: int,
    clients: int,
    seconds: float = CAPACITY_MEASURE_S,
    warmup_s: float = CAPACITY_WARMUP_S,
) -> float:
    """Successful answers per second of the mix, closed loop: ``clients`` threads each
    send the next request as soon as the last one answered, for ``warmup_s`` not
    counted (connections, the limiter's first minimum RTT) and then ``seconds``.

    ``operations`` send one request as a user (a Traffic's, so the client is the one the
    run uses), ``pick`` chooses the next one, ``served`` counts the successes so far.
    """
    stop_at = time.monotonic() + warmup_s + seconds
    lock = threading.Lock()
    counter = [0]

    def loop() -> None:
        while time.monotonic() < stop_at:
            with lock:
                user = counter[0] % users
                counter[0] += 1
                op = pick()
            operations[op](user)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(warmup_s)  # the clients are already sending; what they get is not counted
    before = served()
    started = time.monotonic()
    for thread in threads:
        thread.join(seconds + 30)  # each request has its client timeout
    return (served() - before) / max(1e-9, time.monotonic() - started)


def capacity_plan(
    scenario: Scenario, stack: StackSettings, capacity_rps: float, measured_with: str
) -> LoadPlan:
    """The load of a spike scenario: a fraction of the measured capacity, then a multiple
    of that."""
    fault = scenario.fault
    if not isinstance(fault, LoadSpike):
        raise ChaosError(f"{scenario.name}: capacity load is for a load spike")
    steady_rps = round(capacity_rps * SPIKE_STEADY_FRACTION, 1)
    return LoadPlan(
        mode="capacity",
        rps=steady_rps,
        web_workers=stack.web_workers,
        web_threads=stack.web_threads,
        capacity_rps=capacity_rps,
        steady_fraction=SPIKE_STEADY_FRACTION,
        factor=fault.times_steady,
        spike_rps=round(steady_rps * fault.times_steady, 1),
        hold_reason="no dependency fails: the CPU is the capacity",
        measured_with=measured_with,
        settings_source=stack.source,
    )
