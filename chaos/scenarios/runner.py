"""Run one scenario: steady state -> traffic -> inject -> observe -> heal -> recover -> verdict."""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from chaos.scenarios.base import Check, Scenario, documented
from chaos.scenarios.client import DEFAULT_TIMEOUT_S, ChaosError, request, require_loopback
from chaos.scenarios.faults import Endpoints, LoadSpike
from chaos.scenarios.load import (
    CAPACITY_CLIENTS_PER_THREAD,
    CAPACITY_MEASURE_S,
    CAPACITY_WARMUP_S,
    COLLAPSE_CEILING_RPS,
    LoadPlan,
    StackSettings,
    capacity_plan,
    collapse_plan,
    measure_capacity,
    slow_call_threshold,
    users_for,
)
from chaos.scenarios.observe import Metrics, Observer, fetch_metrics, fetch_readiness, metric_sum
from chaos.scenarios.traffic import (
    CLASSES_CALLING,
    ENDPOINT_CLASSES,
    NOT_SENT,
    Sample,
    Traffic,
    User,
    make_users,
    orders_by_key,
)
from resilience.concurrency_limits import percentile as nearest_rank

STEADY_TIMEOUT_S = 60.0
VERIFY_TIMEOUT_S = 60.0  # to find every confirmed order once the fault is healed
# After a capacity measurement, at most this long for the stack to be quiet again.
SETTLE_TIMEOUT_S = 30.0
MAX_IN_FLIGHT = 400  # client threads at most (collapse load against a stalled baseline)
# A spike's cap: four seconds of a 360/s spike, twice the goodput deadline, so a queue
# that outgrows the deadline still gets its traffic. At 400 the baseline of `overload`
# was sent 2,068 requests fewer than the resilient run (its queue never held more than
# 400, about 2 s, so it kept a goodput that open-loop users would not see: adr/0010).
SPIKE_MAX_IN_FLIGHT = 1500
Log = Callable[[str], None]


@dataclass
class RunContext:
    """Everything a run saw; checks and reports read it."""

    scenario: Scenario
    endpoints: Endpoints
    config: dict[str, Any]
    users: list[User]
    traffic: Traffic
    observer: Observer
    t_inject: float = 0.0
    t_heal: float = 0.0
    t_end: float = 0.0
    steady: Check | None = None
    metrics_before: Metrics = field(default_factory=dict)
    metrics_after: Metrics = field(default_factory=dict)
    calls_during_fault: int | None = None
    calls_total: int | None = None
    counts_before: dict[int, int] = field(default_factory=dict)
    counts_after: dict[int, int] = field(default_factory=dict)
    missing_orders: list[str] = field(default_factory=list)
    missing_answers: dict[str, int] = field(default_factory=dict)  # status -> count
    double_authorizations: int | None = None
    unsettled: list[str] | None = None
    checks: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    good_client: dict[str, Any] | None = None  # retry-storm: the well-behaved client's load
    # What a scenario's own hooks (prepare, during_fault, checks) keep between them.
    scenario_state: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> list[Sample]:
        return self.traffic.snapshot()

    def during_fault(self) -> list[Sample]:
        return [s for s in self.samples if self.t_inject <= s.t < self.t_heal]

    @property
    def resilient(self) -> bool:
        return self.endpoints.env.get("RESILIENCE_ENABLED", "true").lower() != "false"

    @property
    def collapse(self) -> bool:
        """Driven above what the baseline can take (a fault's collapse load, or a spike)."""
        return self.config.get("load", {}).get("mode") in ("collapse", "capacity")

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)


# -- helpers --------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (the limiter's own); None for no values."""
    return nearest_rank(values, fraction) if values else None


def _simulator_calls(endpoints: Endpoints, name: str | None) -> int | None:
    if not name:
        return None
    try:
        url = endpoints.simulator(name)
    except ChaosError:
        return None
    answer = request("GET", f"{url}/stats", timeout=5)
    if answer.status != 200 or not isinstance(answer.body, dict):
        return None
    return int(answer.body.get("requests", answer.body.get("received", 0)))


def _order_count(base_url: str, user: User) -> int | None:
    for _ in range(5):
        answer = request("GET", f"{base_url}/api/v1/orders?page_size=1", headers=user.auth)
        if answer.status == 200:
            return int(answer.body["count"])
        time.sleep(0.5)
    return None


def _probe(endpoints: Endpoints, user: User) -> str | None:
    """None when the stack serves normally; otherwise what is wrong."""
    status, degraded = fetch_readiness(endpoints.base_url)
    if status != 200 or degraded:
        return f"/readyz {status}, degraded {degraded}"
    metrics = fetch_metrics(endpoints.base_url)
    if metrics is None:
        return "/metrics unavailable"
    open_breakers = {
        dict(labels)["dependency"]
        for (name, labels), value in metrics.items()
        if name == "resilience_breaker_state" and value > 0
    }
    answer = request(
        "POST",
        f"{endpoints.base_url}/api/v1/orders",
        body={"currency": "EUR", "items": [{"sku": "probe", "quantity": 1, "unit_price": 100}]},
        headers={**user.auth, "Idempotency-Key": f"probe-{uuid.uuid4()}"},
    )
    paid = answer.status == 201 and answer.body.get("status") == "paid"
    if not paid:
        return f"probe order -> {answer.status} {answer.body!r:.120}"
    if open_breakers:
        return f"breakers not closed: {sorted(open_breakers)}"
    return None


def wait_steady(endpoints: Endpoints, user: User, timeout: float, log: Log) -> Check:
    """Poll until the stack is healthy (readiness, breakers closed, an order gets paid)."""
    deadline = time.monotonic() + timeout
    problem = "not checked"
    while time.monotonic() < deadline:
        problem = _probe(endpoints, user)
        if problem is None:
            return Check(
                "steady state before the fault", True, "ready, breakers closed, order paid"
            )
        time.sleep(0.5)
    log(f"steady state not reached: {problem}")
    return Check("steady state before the fault", False, problem)


def read_latency(base_url: str, user: User, reads: int = 5) -> float:
    """Median seconds of ``reads`` order lists in a row: how busy the stack is now."""
    latencies = []
    for _ in range(reads):
        started = time.monotonic()
        request("GET", f"{base_url}/api/v1/orders?page_size=5", headers=user.auth)
        latencies.append(time.monotonic() - started)
    return statistics.median(latencies)


def wait_quiet(base_url: str, user: User, quiet_s: float, timeout: float) -> float:
    """Until reads are as fast as ``quiet_s`` again (twice it, or 50 ms more), or
    ``timeout``: the work a capacity measurement left behind (the worker's outbox and
    deliveries, the database) must not be the run's steady state. Seconds it took."""
    started = time.monotonic()
    bar = max(2 * quiet_s, quiet_s + 0.05)
    while time.monotonic() - started < timeout and read_latency(base_url, user) > bar:
        time.sleep(0.5)
    return time.monotonic() - started


# -- the run ------------------------------------------------------------------------------


def run_scenario(
    scenario: Scenario,
    endpoints: Endpoints,
    *,
    duration_s: float | None = None,
    rps: float = 10.0,
    steady_s: float | None = None,
    recover_timeout_s: float | None = None,
    users: int | None = None,
    load: str | None = None,
    collapse_ceiling_rps: float = COLLAPSE_CEILING_RPS,
    capacity_rps: float | None = None,
    log: Log = print,
    seed: int | None = None,
) -> RunContext:
    """Run ``scenario`` against ``endpoints`` and return everything it saw, checks included.

    ``load="collapse"`` ignores ``rps`` and drives the collapse load computed from the
    stack's settings (chaos.scenarios.load); ``None`` takes the scenario's own default
    (``bulkhead-saturation``: collapse). A load spike (``overload``) always runs on the
    capacity it measures first, or on ``capacity_rps`` when given (its baseline gets the
    resilient run's, so both see the same load).
    """
    base_url = require_loopback(endpoints.base_url)
    if "owned_redis" in scenario.needs and endpoints.redis is None:
        raise ChaosError(f"{scenario.name} kills a Redis the harness owns: use --stack local")
    duration = scenario.default_duration_s if duration_s is None else duration_s
    steady = steady_s if steady_s is not None else min(10.0, max(2.0, duration / 3))
    recover_timeout = recover_timeout_s or max(30.0, 2 * scenario.recover_bound_s)
    stack = endpoints.settings
    mode = "capacity" if isinstance(scenario.fault, LoadSpike) else load or scenario.load
    plan = _first_plan(scenario, stack, mode, rps, collapse_ceiling_rps)
    rps = plan.rps
    user_count = (
        users or scenario.extra.get("users") or users_for(stack, rps * scenario.create_fraction)
    )
    config = {
        "duration_s": duration,
        "rps": rps,
        "load": plan.to_dict(),
        "steady_s": steady,
        "recover_timeout_s": recover_timeout,
        "users": user_count,
        "fault": scenario.fault.description,
        "stack": endpoints.label,
        "resilience_enabled": endpoints.env.get("RESILIENCE_ENABLED", "true (stack default)"),
        "stack_settings": stack.to_dict() if stack else None,
    }
    if mode != "capacity":
        log(f"[{scenario.name}] {plan.describe()}")
    log(f"[{scenario.name}] {user_count} users on {base_url}; fault: {scenario.fault.description}")
    pool = make_users(base_url, user_count)
    scenario.fault.heal(endpoints)  # a leftover from an interrupted run would spoil the baseline

    max_seconds = steady + duration + recover_timeout + 5
    storm_requests = 0
    if scenario.storm:
        storm_requests = (
            scenario.storm["clients"] * scenario.storm["copies"] * (scenario.storm["retries"] + 1)
        )
    traffic = Traffic(
        base_url,
        pool,
        rps=rps,
        t0=0.0,  # set below, once steady state is reached
        max_seconds=max_seconds,
        max_requests=int(rps * max_seconds * 1.5) + storm_requests,
        # Under collapse load the baseline's answers take seconds: the client must keep
        # sending (open loop) until its users give up, so it allows a client timeout's
        # worth of requests in flight. (A cap of 4 s' worth turned a stalled baseline's
        # queue into a closed loop: it never grew past the cap, its latency never reached
        # the users' timeout, and the collapse the patterns prevent did not show.)
        max_in_flight=(
            SPIKE_MAX_IN_FLIGHT
            if mode == "capacity"
            else max(32, min(MAX_IN_FLIGHT, math.ceil(rps * DEFAULT_TIMEOUT_S)))
        ),
        create_share=scenario.create_share,
        mix=scenario.mix,
        seed=seed,
    )
    ctx = RunContext(scenario, endpoints, config, pool, traffic, Observer(base_url, 0.0))
    if scenario.prepare is not None:
        scenario.prepare(ctx)
    ctx.steady = wait_steady(endpoints, pool[0], STEADY_TIMEOUT_S, log)
    if not ctx.steady.passed:
        ctx.checks = [ctx.steady]
        return ctx
    if mode in ("capacity", "collapse"):
        plan = _plan_on_measured_capacity(
            ctx, mode, capacity_rps, max_seconds, collapse_ceiling_rps
        )
        log(f"[{scenario.name}] {plan.describe()}")
    ctx.counts_before = {i: _order_count(base_url, u) or 0 for i, u in enumerate(pool)}
    ctx.metrics_before = fetch_metrics(base_url) or {}
    t0 = time.monotonic()
    traffic.t0 = ctx.observer.t0 = t0
    ctx.observer.start()
    calls_before = _drive(ctx, steady, duration, recover_timeout, log)
    ctx.t_end = traffic.now()
    calls_after = _simulator_calls(endpoints, scenario.calls_to)
    if calls_before is not None and calls_after is not None:
        ctx.calls_total = calls_after - calls_before
    ctx.metrics_after = fetch_metrics(base_url) or {}
    _verify_orders(ctx)
    ctx.summary = summarise(ctx)
    ctx.checks = [ctx.steady, *evaluate(ctx)]
    verdict = "PASS" if ctx.passed else "FAIL"
    log(f"[{scenario.name}] verdict {verdict}")
    return ctx


def measured_capacity(ctx: RunContext) -> float | None:
    """The healthy capacity a run measured (its baseline is given it: the same load)."""
    load = ctx.config.get("load", {})
    if load.get("mode") == "capacity":
        return load.get("capacity_rps")
    return load.get("healthy_capacity_rps")


def _first_plan(
    scenario: Scenario, stack: StackSettings | None, mode: str, rps: float, ceiling: float
) -> LoadPlan:
    """The load known before the run starts (a spike's waits for its measured capacity)."""
    if mode in ("capacity", "collapse") and stack is None:
        raise ChaosError(f"{mode} load needs the settings of the stack under test")
    if mode == "capacity":
        return LoadPlan(mode="capacity", rps=1.0)  # until the capacity is measured
    if mode == "collapse":
        return collapse_plan(scenario, stack, ceiling_rps=ceiling)
    return LoadPlan(mode="steady", rps=rps)


def measure_stack_capacity(
    endpoints: Endpoints,
    users: list[User],
    mix: dict[str, float],
    known_orders: Iterable[tuple[int, list[str]]] = (),
) -> tuple[float, str, Counter[int]]:
    """The stack's healthy capacity: successful answers per second of ``mix``, closed
    loop (chaos.scenarios.load.measure_capacity), then until reads are as fast as
    before. Returns it, how it was measured, and the probe's answers by status.
    ``python manage.py chaos capacity`` prints it several times in a row."""
    stack = endpoints.settings
    clients = max(1, round(CAPACITY_CLIENTS_PER_THREAD * stack.web_workers * stack.web_threads))
    quiet = read_latency(endpoints.base_url, users[0])
    how = (
        f"closed loop, {clients} clients, {CAPACITY_MEASURE_S:g} s"
        f" after {CAPACITY_WARMUP_S:g} s of warm-up"
    )
    # Its own Traffic (never started): the run's client and mix, not the run's samples.
    probe = Traffic(
        endpoints.base_url,
        users,
        rps=1.0,
        t0=time.monotonic(),
        max_seconds=CAPACITY_WARMUP_S + CAPACITY_MEASURE_S + 60,
        max_requests=10**6,
        mix=mix,
        seed=1,
    )
    for user, ids in known_orders:
        probe.know_orders(user, ids)
    capacity = measure_capacity(
        probe.operations,
        probe.pick,
        lambda: sum(1 for s in probe.snapshot() if s.status in (200, 201)),
        users=len(users),
        clients=clients,
    )
    settled = wait_quiet(endpoints.base_url, users[0], quiet, SETTLE_TIMEOUT_S)
    how += f"; reads back to their quiet latency {settled:.1f} s after"
    return capacity, how, Counter(s.status for s in probe.snapshot())


def _plan_on_measured_capacity(
    ctx: RunContext, mode: str, given: float | None, max_seconds: float, ceiling: float
) -> LoadPlan:
    """Measure the stack's healthy capacity (unless given) and set the traffic's load.

    A spike runs on multiples of it. A collapse load is clipped to a fraction of it as
    well as to ``ceiling``: above its capacity a stack is saturated before any fault,
    and the run would measure the machine, not the fault (the capacity of a 2-core
    machine varies by a factor of 2 or more between hosts).
    """
    stack, traffic = ctx.endpoints.settings, ctx.traffic
    if given is None:
        capacity, how, _ = measure_stack_capacity(
            ctx.endpoints, ctx.users, traffic.mix, enumerate(traffic.known_orders())
        )
    else:
        capacity, how = given, "measured on the resilient run's stack"
    if mode == "capacity":
        plan = capacity_plan(ctx.scenario, stack, capacity, how)
        traffic.max_requests = int(plan.spike_rps * max_seconds * 1.2)
    else:
        plan = collapse_plan(
            ctx.scenario,
            stack,
            ceiling_rps=ceiling,
            healthy_capacity_rps=capacity,
            measured_with=how,
        )
    traffic.set_rate(plan.rps)
    ctx.config.update(rps=plan.rps, load=plan.to_dict())
    return plan


def _drive(
    ctx: RunContext, steady: float, duration: float, recover_timeout: float, log: Log
) -> int | None:
    """The timed part: traffic, inject, hold, heal, recover. Returns the simulator's call
    count at injection (None when not counted)."""
    scenario, endpoints, traffic = ctx.scenario, ctx.endpoints, ctx.traffic
    traffic.start()
    try:
        _sleep_until(traffic, steady)
        calls_before = _simulator_calls(endpoints, scenario.calls_to)
        log(f"[{scenario.name}] t={traffic.now():.1f}s inject: {scenario.fault.description}")
        scenario.fault.inject(endpoints)
        if isinstance(scenario.fault, LoadSpike):
            traffic.set_rate(ctx.config["load"]["spike_rps"])
        ctx.t_inject = traffic.now()
        try:
            if scenario.storm:
                traffic.storm(**scenario.storm)
                ctx.good_client = _good_client_beside_storm(ctx, duration)
            if scenario.during_fault is not None:
                scenario.during_fault(ctx)
            _sleep_until(traffic, ctx.t_inject + duration)
            calls_at_heal = _simulator_calls(endpoints, scenario.calls_to)
        finally:
            scenario.fault.heal(endpoints)
            traffic.set_rate(ctx.config["rps"])
            ctx.t_heal = traffic.now()
        log(f"[{scenario.name}] t={ctx.t_heal:.1f}s healed; waiting for recovery")
        if calls_before is not None and calls_at_heal is not None:
            ctx.calls_during_fault = calls_at_heal - calls_before
        _wait_recovered(ctx, recover_timeout)
        _sleep_until(traffic, traffic.now() + scenario.tail_s)  # a healthy tail
    finally:
        traffic.stop()
        ctx.observer.stop()
    return calls_before


def _good_client_beside_storm(ctx: RunContext, duration: float) -> dict[str, Any]:
    """As many logical orders as the storm has clients, placed with resilient_client."""
    from chaos.scenarios.good_client import good_client_burst
    from chaos.scenarios.traffic import make_users

    # Users of its own: the pool's order counts check the naive traffic's orders only.
    own = make_users(ctx.endpoints.base_url, 5)
    left = max(1.0, ctx.t_inject + duration - ctx.traffic.now())
    load = good_client_burst(
        ctx.endpoints.base_url,
        [user.token for user in own],
        operations=ctx.scenario.storm["clients"],
        deadline_s=left,  # within the fault: its requests are the fault's load
        seed=int(ctx.config.get("seed") or 0),
    )
    return load.as_dict()


def client_load(ctx: RunContext) -> dict[str, Any] | None:
    """Requests per logical operation during the fault: the storm's naive clients beside
    the good client (None when the scenario has no storm)."""
    if ctx.good_client is None:
        return None
    from chaos.scenarios.good_client import naive_load

    storm = [s for s in ctx.during_fault() if s.op == "storm" and s.status != NOT_SENT]
    naive = naive_load((s.key, s.attempt, s.status) for s in storm)
    return {"naive": naive.as_dict(), "good": ctx.good_client}


def _sleep_until(traffic: Traffic, t: float) -> None:
    # Pacing of the experiment's phases (steady, fault), measured on the run's clock.
    remaining = t - traffic.now()
    if remaining > 0:
        time.sleep(remaining)


def _breaker_closed(ctx: RunContext) -> bool:
    dependency = ctx.scenario.dependency
    if not (ctx.scenario.expect_breaker and dependency):
        return True
    latest = ctx.observer.latest()
    return latest is not None and latest.t > ctx.t_heal and latest.breakers.get(dependency, 0) == 0


def _wait_recovered(ctx: RunContext, timeout: float) -> None:
    """Until the last answers are healthy and the breaker closed again (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    needed = max(5, int(ctx.config["rps"]))  # about a second of healthy traffic
    while time.monotonic() < deadline:
        tail = [s for s in ctx.samples if s.t >= ctx.t_heal][-needed:]
        if len(tail) == needed and all(map(ctx.scenario.healthy, tail)) and _breaker_closed(ctx):
            return
        time.sleep(0.25)


def time_to_recover(ctx: RunContext) -> float | None:
    """Seconds from heal to the start of the final all-healthy stretch (None: never)."""
    after = sorted((s for s in ctx.samples if s.t >= ctx.t_heal), key=lambda s: s.t)
    if not after or not ctx.scenario.healthy(after[-1]):
        return None
    recovered_at = ctx.t_heal
    for sample in after:
        if not ctx.scenario.healthy(sample):
            recovered_at = sample.t
    # A request started exactly when the last unhealthy one did is the first healthy one.
    later = [s.t for s in after if s.t > recovered_at]
    if recovered_at == ctx.t_heal:
        return 0.0
    return (later[0] if later else recovered_at) - ctx.t_heal


def _verify_orders(ctx: RunContext) -> None:
    """Every order the API confirmed (201) must exist; deferred ones must settle."""
    base = ctx.endpoints.base_url
    created = ctx.traffic.created_order_ids()

    # A stack still draining its backlog (the baseline after a collapse) may answer 503 or
    # nothing for a while: ask again until it says 200 or 404, within one shared bound.
    verify_until = time.monotonic() + VERIFY_TIMEOUT_S

    def fetch(item: tuple[str, int]) -> tuple[str, int, str | None]:
        order_id, user = item
        answer = None
        wait_s = 0.25
        while True:
            answer = request(
                "GET", f"{base}/api/v1/orders/{order_id}", headers=ctx.users[user].auth
            )
            if answer.status not in (0, 429, 503) or time.monotonic() >= verify_until:
                break
            time.sleep(wait_s)
            wait_s = min(2.0, wait_s * 2)
        status = answer.body.get("status") if answer and answer.status == 200 else None
        return order_id, answer.status if answer else 0, status

    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(fetch, created.items()))
    ctx.missing_orders = [oid for oid, code, _ in found if code != 200]
    ctx.missing_answers = dict(Counter(str(code) for _, code, _ in found if code != 200))
    ctx.counts_after = {i: _order_count(base, u) or 0 for i, u in enumerate(ctx.users)}
    if ctx.scenario.calls_to == "payments" or ctx.scenario.settle_deferred:
        ctx.double_authorizations = _double_authorizations(ctx)
    if ctx.scenario.settle_deferred and ctx.endpoints.has_worker:
        pending = [oid for oid, _, status in found if status == "pending_payment"]
        ctx.unsettled = _wait_settled(ctx, pending, created)


def _double_authorizations(ctx: RunContext) -> int | None:
    try:
        url = ctx.endpoints.simulator("payments")
    except ChaosError:
        return None
    answer = request("GET", f"{url}/authorizations", timeout=10)
    if answer.status != 200:
        return None
    per_order = Counter(a["order_id"] for a in answer.body["authorizations"])
    return sum(n - 1 for n in per_order.values() if n > 1)


def _wait_settled(ctx: RunContext, pending: list[str], owners: dict[str, int]) -> list[str]:
    """Wait (bounded) until the worker has authorised every deferred order."""
    deadline = time.monotonic() + float(ctx.scenario.extra.get("settle_timeout_s", 90))
    remaining = list(pending)
    while remaining and time.monotonic() < deadline:
        still = []
        for order_id in remaining:
            answer = request(
                "GET",
                f"{ctx.endpoints.base_url}/api/v1/orders/{order_id}",
                headers=ctx.users[owners[order_id]].auth,
            )
            if not (answer.status == 200 and answer.body.get("status") == "paid"):
                still.append(order_id)
        remaining = still
        if remaining:
            time.sleep(1.0)
    return remaining


# -- figures and checks -------------------------------------------------------------------


def breaker_first_open(ctx: RunContext) -> float | None:
    """When the faulted dependency's breaker was first seen open during the fault (run
    clock; /metrics polled every 0.5 s, so up to that much after the transition)."""
    dependency = ctx.scenario.dependency
    if not dependency:
        return None
    observations = ctx.observer.observations
    earlier = [o for o in observations if o.t < ctx.t_inject and o.opened]
    baseline = earlier[-1].opened.get(dependency, 0.0) if earlier else None
    if baseline is None:
        baseline = metric_sum(
            ctx.metrics_before,
            "resilience_breaker_transitions_total",
            dependency=dependency,
            to_state="open",
        )
    for obs in observations:
        if obs.t < ctx.t_inject or obs.t > ctx.t_heal:
            continue
        if obs.breakers.get(dependency, 0) == 2 or obs.opened.get(dependency, 0.0) > baseline:
            return obs.t
    return None


def slow_after_open(ctx: RunContext, since: float | None) -> dict[str, Any]:
    """User requests that waited on the dependency after its breaker first opened.

    A request counts when it started between ``since`` (the first opening) and the heal
    and spent longer on the dependency than the slow-call threshold plus the healthy p99
    of that same figure (the steady state before the fault): that much extra is a call
    the breaker should have spared. The time is the server's own (its ``Server-Timing``
    header: the breaker-guarded calls of that request), so a request slowed by a queue
    or a saturated CPU does not count. A request with no HTTP answer, or a run whose
    answers carry no header (the baseline has no guarded calls), is judged by its
    client-side latency against its class's healthy p99 plus the threshold instead
    (``measure`` says which); the client-side count is reported beside it.
    """
    dependency = ctx.scenario.dependency
    stack = ctx.endpoints.settings
    if not dependency or stack is None:
        return {"count": None, "threshold_s": None, "source": "no breaker or no settings"}
    threshold, source = slow_call_threshold(stack, dependency)
    if threshold is None or since is None:
        return {"count": None, "threshold_s": threshold, "source": source, "since": since}
    calling = CLASSES_CALLING.get(dependency)  # None: every class calls it
    callers = [
        s
        for s in ctx.samples
        if s.status != NOT_SENT and (calling is None or ENDPOINT_CLASSES.get(s.op) in calling)
    ]
    steady = [s for s in callers if s.t < ctx.t_inject]
    after_open = [s for s in callers if since <= s.t < ctx.t_heal]
    healthy_p99 = percentile([s.latency_s for s in steady], 0.99) or 0.0
    bar = healthy_p99 + threshold
    client_slow = [s for s in after_open if s.latency_s > bar]
    server_timed = any(s.dependency_s is not None for s in ctx.samples)
    if server_timed:
        waits = [(s.dependency_s or {}).get(dependency, 0.0) for s in steady]
        healthy_wait_p99 = percentile(waits, 0.99) or 0.0
        wait_bar = healthy_wait_p99 + threshold
        waited = [(s, _waited_s(s, dependency, bar)) for s in after_open]
        slow_waits = [(s, w) for s, w in waited if w > wait_bar]
    else:
        healthy_wait_p99, wait_bar = None, None
        slow_waits = [(s, s.latency_s) for s in client_slow]
    slow = [s for s, _ in slow_waits]
    return {
        "count": len(slow),
        "measure": "server" if server_timed else "client",
        "client_count": len(client_slow),
        "threshold_s": threshold,
        "healthy_p99_s": healthy_p99,
        "bar_s": bar,
        "healthy_wait_p99_s": healthy_wait_p99,
        "wait_bar_s": wait_bar,
        "waits_s": sorted((round(w, 3) for _, w in slow_waits), reverse=True)[:10],
        "source": source,
        "since": since,
        "by_class": dict(Counter(ENDPOINT_CLASSES.get(s.op, s.op) for s in slow)),
        "bound": stack.web_workers,  # one per web process (issue: the probe does the trials)
    }


def _waited_s(sample: Sample, dependency: str, client_bar: float) -> float:
    """The server's time on ``dependency`` for one request; with no header (no HTTP
    answer), its whole latency when that passed the client-side bar, else 0."""
    if sample.dependency_s is not None:
        return sample.dependency_s.get(dependency, 0.0)
    return sample.latency_s if sample.latency_s > client_bar else 0.0


def class_figures(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Per endpoint class, during the fault: goodput, latency, deferred and shed answers."""
    window = max(1e-9, ctx.t_heal - ctx.t_inject)
    figures = {}
    for name in ("reads", "orders"):
        group = [s for s in ctx.during_fault() if ENDPOINT_CLASSES.get(s.op) == name]
        sent = [s for s in group if s.status != NOT_SENT]
        served = [s for s in sent if s.status in (200, 201)]
        shed = [s for s in sent if s.status in (429, 503)]
        latencies = [s.latency_s for s in sent]
        figures[name] = {
            "requests": len(sent),
            "not_sent": len(group) - len(sent),
            "served": len(served),
            "goodput_rps": len(served) / window,
            "p50_s": percentile(latencies, 0.5),
            "p99_s": percentile(latencies, 0.99),
            # An order placed and answered pending_payment (a read of one is not deferral).
            "deferred": sum(
                1 for s in served if s.op != "get" and s.order_status == "pending_payment"
            ),
            "shed": len(shed),
            "shed_503": sum(1 for s in shed if s.status == 503),
            "shed_429": sum(1 for s in shed if s.status == 429),
            "conflicts_409": sum(1 for s in sent if s.status == 409),
            "errors": sum(1 for s in sent if s.status not in (200, 201, 409, 429, 503)),
            "unserved": len(group) - len(served),
        }
    return figures


def summarise(ctx: RunContext) -> dict[str, Any]:
    from resilience.concurrency import SHED_REASONS

    samples = ctx.samples
    fault = ctx.during_fault()
    sent = [s for s in samples if s.status != NOT_SENT]
    fault_sent = [s for s in fault if s.status != NOT_SENT]
    dependency = ctx.scenario.dependency
    by_key = orders_by_key(samples)
    before, after = ctx.metrics_before, ctx.metrics_after

    def delta(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    keys = ctx.traffic.keys
    unresolved = sum(1 for k in keys.values() if not k.order_ids)
    created = {oid for ids in by_key.values() for oid in ids}
    server_delta = sum(ctx.counts_after.values()) - sum(ctx.counts_before.values())
    steady_lat = [s.latency_s for s in sent if s.t < ctx.t_inject]
    fault_lat = [s.latency_s for s in fault_sent]
    closed_at = None
    for obs in ctx.observer.observations:
        if obs.t >= ctx.t_heal and obs.breakers.get(dependency, 0) == 0:
            closed_at = closed_at if closed_at is not None else obs.t
        else:
            closed_at = None
    first_open = breaker_first_open(ctx)
    return {
        "classes": class_figures(ctx),
        "breaker_first_open_s": first_open,
        "slow_after_open": slow_after_open(ctx, first_open),
        "client_load": client_load(ctx),
        "requests": len(sent),
        "not_sent": len(samples) - len(sent),
        "by_status": dict(sorted(Counter(str(s.status) for s in samples).items())),
        "fault_by_status": dict(sorted(Counter(str(s.status) for s in fault).items())),
        "refusals_by_code": dict(
            sorted(Counter(f"{s.status} {s.code}" for s in samples if s.code).items())
        ),
        "failed": sum(1 for s in samples if s.status not in (200, 201)),
        "failed_during_fault": sum(1 for s in fault if s.status not in (200, 201)),
        # Ticks the client could not send (its in-flight cap) are no answer of the
        # stack's: counted under not_sent and in each class's unserved requests.
        "undocumented": sum(1 for s in sent if not documented(s)),
        "degraded_orders": sum(1 for s in samples if s.order_status == "pending_payment"),
        "p50_steady_s": percentile(steady_lat, 0.5),
        # The last 2 s before the fault: past the start-up ramp, the stack's own steady state.
        "p50_pre_fault_s": percentile(
            [s.latency_s for s in sent if ctx.t_inject - 2.0 <= s.t < ctx.t_inject], 0.5
        ),
        "p99_steady_s": percentile(steady_lat, 0.99),
        "p50_fault_s": percentile(fault_lat, 0.5),
        "p99_fault_s": percentile(fault_lat, 0.99),
        "max_fault_s": max(fault_lat) if fault_lat else None,
        "mean_fault_s": statistics.fmean(fault_lat) if fault_lat else None,
        "time_to_recover_s": time_to_recover(ctx),
        "breaker": dependency or None,
        "breaker_opened": delta(
            "resilience_breaker_transitions_total", dependency=dependency, to_state="open"
        )
        if dependency
        else None,
        "breaker_closed_after_heal_s": None if closed_at is None else closed_at - ctx.t_heal,
        "breaker_refusals": delta(
            "resilience_breaker_calls_not_permitted_total", dependency=dependency
        )
        if dependency
        else None,
        "bulkhead_rejected": delta("resilience_bulkhead_rejected_total", dependency="payments"),
        # Why the load shedder refused what it refused (adr/0010), whole run.
        "shed_by_reason": {
            reason: delta("resilience_concurrency_shed_total", reason=reason)
            for reason in SHED_REASONS
        },
        "retries": delta("resilience_retry_retries_total", dependency="payments"),
        "retry_budget_exhausted": delta(
            "resilience_retry_budget_exhausted_total", dependency="payments"
        ),
        "calls_to_dependency_during_fault": ctx.calls_during_fault,
        "calls_to_dependency_total": ctx.calls_total,
        "slow_failures_during_fault": sum(
            1 for s in fault_sent if s.status not in (200, 201) and s.latency_s >= 0.5
        ),
        "orders_confirmed": len(created),
        "orders_missing": len(ctx.missing_orders),
        "keys": len(keys),
        "keys_unresolved": unresolved,
        "keys_with_several_orders": sum(1 for ids in by_key.values() if len(ids) > 1),
        "server_order_delta": server_delta,
        "double_authorizations": ctx.double_authorizations,
        "unsettled_deferred": None if ctx.unsettled is None else len(ctx.unsettled),
        "client_retries": sum(1 for s in samples if s.attempt > 1),
        "t_inject": ctx.t_inject,
        "t_heal": ctx.t_heal,
        "t_end": ctx.t_end,
    }


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def evaluate(ctx: RunContext) -> list[Check]:
    s, sc = ctx.summary, ctx.scenario
    checks = [
        Check(
            "no lost orders",
            s["orders_missing"] == 0,
            f"{s['orders_confirmed']} orders confirmed with 201, "
            f"{s['orders_missing']} not found after"
            + (f" (answers {ctx.missing_answers})" if ctx.missing_answers else ""),
        ),
        _duplicates(s),
        Check(
            "only documented errors",
            s["undocumented"] == 0,
            f"{s['undocumented']} answers outside 2xx / 409, 429, 503 with Retry-After "
            f"(by status: {s['by_status']})",
        ),
        Check(
            "p99 during the fault",
            s["p99_fault_s"] is not None and s["p99_fault_s"] <= sc.p99_bound_s,
            f"p99 {_fmt(s['p99_fault_s'])} (bound {sc.p99_bound_s * 1000:.0f} ms)",
        ),
        Check(
            "recovered",
            s["time_to_recover_s"] is not None and s["time_to_recover_s"] <= sc.recover_bound_s,
            f"healthy again {_seconds(s['time_to_recover_s'])} "
            f"after heal (bound {sc.recover_bound_s:g} s); refusals by code "
            f"{s['refusals_by_code']}",
        ),
    ]
    if sc.expect_breaker:
        checks += [
            Check(
                f"breaker {sc.dependency} opened",
                (s["breaker_opened"] or 0) >= 1,
                f"{s['breaker_opened']:.0f} transitions to open, "
                f"{s['breaker_refusals']:.0f} calls refused",
            ),
            Check(
                f"breaker {sc.dependency} closed again",
                s["breaker_closed_after_heal_s"] is not None,
                f"closed {_seconds(s['breaker_closed_after_heal_s'])} after heal",
            ),
        ]
    if sc.settle_deferred:
        checks.append(
            Check("deferred orders paid later", None, "no worker on this stack: not checked")
            if s["unsettled_deferred"] is None
            else Check(
                "deferred orders paid later",
                s["unsettled_deferred"] == 0,
                f"{s['degraded_orders']} pending_payment answers, "
                f"{s['unsettled_deferred']} orders still unpaid",
            )
        )
    if sc.expect_breaker and ctx.collapse and ctx.resilient:
        checks.append(_slow_after_open_check(s["slow_after_open"]))
    checks += [check(ctx) for check in sc.extra_checks]
    return checks


def _slow_after_open_check(slow: dict[str, Any]) -> Check:
    name = "at most one slow request per process after the breaker opened"
    if slow["count"] is None:
        return Check(name, None, f"not counted: {slow['source']}")
    return Check(name, slow["count"] <= slow["bound"], slow_after_open_text(slow))


def slow_after_open_text(slow: dict[str, Any]) -> str:
    """What the slow-after-open count counted, in words (check detail and report line)."""
    threshold_ms = slow["threshold_s"] * 1000
    if slow["measure"] == "server":
        what = (
            f"{slow['count']} user requests that spent longer than "
            f"{slow['wait_bar_s'] * 1000:.0f} ms on it by the server's Server-Timing (healthy "
            f"p99 {slow['healthy_wait_p99_s'] * 1000:.0f} ms + {threshold_ms:.0f} ms); "
            f"{slow['client_count']} slower than {slow['bar_s'] * 1000:.0f} ms as the client "
            "saw them (queueing and CPU included)"
        )
    else:
        what = (
            f"{slow['count']} user requests calling it slower than "
            f"{slow['bar_s'] * 1000:.0f} ms as the client saw them (healthy p99 "
            f"{slow['healthy_p99_s'] * 1000:.0f} ms + {threshold_ms:.0f} ms)"
        )
    return (
        f"{what} ({slow['source']}), started after the breaker first opened and before "
        f"the heal; bound {slow['bound']} (web processes)"
    )


def _duplicates(s: dict[str, Any]) -> Check:
    # Orders the server holds for the run's users beyond what the client asked for (one
    # per Idempotency-Key) would be duplicates created by retried requests.
    extra = s["server_order_delta"] - s["keys"]
    ok = s["keys_with_several_orders"] == 0 and extra <= 0 and not s["double_authorizations"]
    return Check(
        "no duplicates under retries",
        ok,
        f"{s['keys']} keys, {s['client_retries']} client retries, "
        f"{s['keys_with_several_orders']} keys "
        f"with several orders, server holds {s['server_order_delta']} new orders, "
        f"double authorisations {s['double_authorizations']}",
    )


# -- beside the baseline ------------------------------------------------------------------


def _ratio(theirs: float | None, ours: float | None) -> float | None:
    if theirs is None or ours is None or ours <= 0:
        return None
    return theirs / ours


def order_intents(ctx: RunContext) -> tuple[int, int]:
    """The orders users set out to place during the fault, and how many of them got one.

    One per ``Idempotency-Key`` whose first attempt was sent in the fault, plus each order
    the client could not even send then (its in-flight cap); served when any attempt was
    answered 2xx. A well-behaved client retries a refusal after its ``Retry-After`` with
    the same key: counted per request, every documented refusal it honoured would add a
    request to the resilient run's total, and an order placed on its second attempt
    would count as half served.
    """
    attempts: dict[str, list[Sample]] = {}
    unsent = 0
    for sample in ctx.samples:
        if ENDPOINT_CLASSES.get(sample.op) != "orders":
            continue
        if sample.status == NOT_SENT:
            unsent += ctx.t_inject <= sample.t < ctx.t_heal
        elif sample.key is not None:
            attempts.setdefault(sample.key, []).append(sample)
    placed = [tries for tries in attempts.values() if ctx.t_inject <= tries[0].t < ctx.t_heal]
    served = sum(1 for tries in placed if any(s.status in (200, 201) for s in tries))
    return len(placed) + unsent, served


def compare_with_baseline(ctx: RunContext, baseline: RunContext) -> dict[str, Any]:
    """The resilient run against its baseline: p99 ratios, who served what, slow requests.

    Who served what: reads per request (the clients do not retry them), orders per order
    the users set out to place (``order_intents``: retries with the same key included)."""
    ours, theirs = ctx.summary, baseline.summary
    classes = {}
    failed_more = []
    for name in ("reads", "orders"):
        mine, other = ours["classes"][name], theirs["classes"][name]
        if name == "orders":
            (total_mine, got_mine), (total_other, got_other) = (
                order_intents(ctx),
                order_intents(baseline),
            )
        else:
            total_mine, got_mine = mine["requests"] + mine["not_sent"], mine["served"]
            total_other, got_other = other["requests"] + other["not_sent"], other["served"]
        served_mine = got_mine / total_mine if total_mine else None
        served_other = got_other / total_other if total_other else None
        # The two runs send different requests: compare the share each one served.
        # A share at least a point lower and five more unserved: not noise.
        more = (
            served_mine is not None
            and served_other is not None
            and served_other < served_mine - 0.01
            and total_other - got_other >= total_mine - got_mine + 5
        )
        if more:
            failed_more.append(name)
        classes[name] = {
            "p99_ratio": _ratio(other["p99_s"], mine["p99_s"]),
            "served_share_resilient": served_mine,
            "served_share_baseline": served_other,
            "baseline_failed_what_resilient_served": more,
        }
    offset = None
    if ours["breaker_first_open_s"] is not None:
        offset = ours["breaker_first_open_s"] - ctx.t_inject
    baseline_slow = slow_after_open(
        baseline, None if offset is None else baseline.t_inject + offset
    )
    return {
        "p99_ratio": _ratio(theirs["p99_fault_s"], ours["p99_fault_s"]),
        "classes": classes,
        "baseline_failed_what_resilient_served": failed_more,
        "slow_after_open_resilient": ours["slow_after_open"]["count"],
        "slow_after_open_resilient_client": ours["slow_after_open"].get("client_count"),
        "slow_after_open_baseline": baseline_slow["count"],
        "slow_after_open_baseline_note": (
            "the baseline has no breaker: counted from the same offset after injection"
        ),
    }


def beside_baseline_check(ctx: RunContext, baseline: RunContext) -> Check:
    """The scenario's own comparison when it has one, else :func:`beats_baseline_check`."""
    if ctx.scenario.beats_baseline is not None:
        return ctx.scenario.beats_baseline(ctx, baseline)
    return beats_baseline_check(ctx, compare_with_baseline(ctx, baseline))


def beats_baseline_check(ctx: RunContext, comparison: dict[str, Any]) -> Check:
    """Issue 12: a p99 ``beats_baseline_by`` times lower, or the baseline failed requests
    that the resilient run served (says which)."""
    factor = ctx.scenario.beats_baseline_by or 0
    ratio = comparison["p99_ratio"]
    failed = comparison["baseline_failed_what_resilient_served"]
    by_ratio = ratio is not None and ratio >= factor
    parts = [f"baseline p99 / resilient p99 = {'n/a' if ratio is None else f'{ratio:.1f}'}x"]
    for name, figures in comparison["classes"].items():
        mine, other = figures["served_share_resilient"], figures["served_share_baseline"]
        if mine is not None and other is not None:
            parts.append(f"{name} served {mine:.0%} resilient vs {other:.0%} baseline")
    reason = (
        f"p99 {ratio:.1f}x lower"
        if by_ratio
        else f"baseline failed {', '.join(failed)} the resilient run served"
        if failed
        else f"neither: p99 not {factor:g}x lower and the baseline served as much"
    )
    return Check(
        f"beats the baseline (p99 {factor:g}x lower, or serves what it fails)",
        by_ratio or bool(failed),
        f"{reason}; " + "; ".join(parts),
    )
