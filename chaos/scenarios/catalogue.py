"""The experiments. Each names its fault, the breaker it expects, and its bounds.

Bounds come from the settings (docs/timeouts.md): the request deadline is 5 s, the
Postgres pool wait 1 s, payments attempts 0.25 s connect + 1 s read. They are generous
for a loaded 2-core machine, and still far below what the same fault costs without the
patterns (see each scenario's baseline in docs/chaos/).
"""

from __future__ import annotations

from chaos.scenarios import overload, refunds, webhooks
from chaos.scenarios.base import Check, Scenario
from chaos.scenarios.faults import KillRedis, LoadSpike, ProxyDown, ProxyToxic, SimulatorFaults
from chaos.scenarios.load import fault_hold
from chaos.scenarios.runner import (
    RunContext,
    beats_baseline_check,
    compare_with_baseline,
    percentile,
)
from chaos.scenarios.traffic import NOT_SENT


def _payments_calls_bounded(ctx: RunContext) -> Check:
    """The breaker and the retry budget keep load off a failing provider."""
    s = ctx.summary
    calls = s["calls_to_dependency_during_fault"]
    creates = sum(
        1 for x in ctx.during_fault() if x.op in ("create", "storm") and x.status != NOT_SENT
    )
    if calls is None:
        return Check("calls reaching payments bounded", None, "payments control port not reachable")
    # Without a breaker every order would cost up to max_attempts (3) calls.
    return Check(
        "calls reaching payments bounded",
        calls <= max(10, creates),
        f"{calls} calls reached payments for {creates} order requests during the fault",
    )


def _hung(ctx: RunContext) -> list:
    """Requests of the fault that got no HTTP answer, or one later than the request
    deadline (a thread waited on a Postgres that never answers)."""
    stack = ctx.endpoints.settings
    bound = stack.request_deadline_s if stack is not None else None
    return [
        x
        for x in ctx.during_fault()
        if x.status == 0 or (x.status > 0 and bound is not None and x.latency_s > bound)
    ]


def _never_hangs(ctx: RunContext) -> Check:
    """A Postgres that swallows its answers: every request is answered within its deadline."""
    hung = _hung(ctx)
    worst = ctx.summary["max_fault_s"]
    return Check(
        "no request hangs",
        not hung,
        f"{len(hung)} requests unanswered or answered past the request deadline during the "
        f"fault; slowest answer {'n/a' if worst is None else f'{worst * 1000:.0f} ms'}",
    )


def _answers_what_the_baseline_leaves_hanging(ctx: RunContext, baseline: RunContext) -> Check:
    """Beside the baseline: the generic comparison, or requests the baseline left hanging
    (no answer, or past the deadline) while every one of ours was answered in time."""
    generic = beats_baseline_check(ctx, compare_with_baseline(ctx, baseline))
    ours, theirs = len(_hung(ctx)), len(_hung(baseline))
    hangs_fewer = ours == 0 and theirs > 0
    return Check(
        "beats the baseline (p99 10x lower, serves what it fails, or answers what it leaves "
        "hanging)",
        bool(generic.passed) or hangs_fewer,
        f"{theirs} baseline requests hung (no answer, or past the deadline) against {ours}; "
        f"{generic.detail}",
    )


def _bulkhead_isolates_reads(ctx: RunContext) -> Check:
    """Slow payments must not slow reads: they never wait for a payments slot."""
    reads = [x.latency_s for x in ctx.during_fault() if x.op in ("get", "list") and x.status == 200]
    p99 = percentile(reads, 0.99)
    bound = ctx.scenario.extra["read_p99_bound_s"]
    return Check(
        "reads unaffected by slow payments",
        p99 is not None and p99 <= bound,
        f"GET p99 {'n/a' if p99 is None else f'{p99 * 1000:.0f} ms'} during the fault "
        f"(bound {bound * 1000:.0f} ms); "
        f"{ctx.summary['bulkhead_rejected']:.0f} bulkhead rejections",
    )


def _bulkhead_rejected(ctx: RunContext) -> Check:
    """Under a load whose payments calls outnumber the bulkhead's slots, it must refuse."""
    rejected = ctx.summary["bulkhead_rejected"]
    stack = ctx.endpoints.settings
    bulkhead = (stack.policy("payments").get("bulkhead") or {}) if stack else {}
    size = bulkhead.get("max_concurrent")
    if size is None:
        return Check("bulkhead shed the excess", None, "no payments bulkhead in the settings")
    slots = int(size) * stack.web_workers
    # How long a request-path call may hold a slot on the resilient stack: the fault's
    # latency, cut by the read timeout and by the request-path budget when there is one.
    timeouts = stack.policy("payments").get("timeouts") or {}
    hold = fault_hold(ctx.scenario, stack)[0] or 0.0
    if timeouts.get("request_budget_s"):
        hold = min(hold, float(timeouts["request_budget_s"]))
    wanted = ctx.config["rps"] * ctx.scenario.create_share * hold
    detail = (
        f"{rejected:.0f} calls refused by the bulkhead; the load asks for about "
        f"{wanted:.1f} payments calls at once (held up to {hold:g} s each), the bulkhead "
        f"has {size} per process x {stack.web_workers} processes = {slots} (settings)"
    )
    if wanted <= slots:
        # Below its slots the bulkhead has nothing to shed: the request budget defers first.
        return Check("bulkhead shed the excess", None, f"load below the slots: {detail}")
    return Check("bulkhead shed the excess", rejected >= 1, detail)


def _storm_amplification(ctx: RunContext) -> Check:
    """A storm of client retries must not become a storm of provider calls."""
    calls = ctx.summary["calls_to_dependency_during_fault"]
    storm = [x for x in ctx.samples if x.op == "storm"]
    storm_keys = {x.key for x in storm}
    if calls is None or not storm_keys:
        return Check("retry storm absorbed", None, "payments control port not reachable")
    # Idempotency keys collapse the storm's copies and retries into one order each; the
    # retry budget and the deferral schedule bound the provider calls per order. Without
    # them every storm request would be an order with up to 3 calls of its own.
    fault_keys = {x.key for x in ctx.during_fault() if x.op in ("create", "storm")}
    per_order = calls / max(1, len(fault_keys))
    return Check(
        "retry storm absorbed",
        calls <= 2 * len(fault_keys) + 10,
        f"{len(storm)} storm requests for {len(storm_keys)} keys; {calls} calls reached "
        f"payments for {len(fault_keys)} orders during the fault ({per_order:.2f} per order)",
    )


def _webhooks_delivered(ctx: RunContext) -> Check:
    """Every order event reaches the receiver once it is back (needs the webhooks feature)."""
    return webhooks.deliveries_check(ctx)


REDIS_USERS_SEE = (
    "Nothing: rate limits fall back to per-process buckets, the cache is bypassed; "
    "/readyz stays 200 and lists redis under degraded."
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="redis-down",
            beats_baseline_by=10.0,
            summary="Redis unreachable (network down through the proxy)",
            fault=ProxyDown("redis"),
            dependency="redis",
            expect_breaker=True,
            p99_bound_s=1.0,
            recover_bound_s=15.0,
            what_users_see=REDIS_USERS_SEE,
        ),
        Scenario(
            name="redis-kill",
            summary="redis-server killed with kill -9 (a Redis the harness owns), restarted empty",
            fault=KillRedis(),
            dependency="redis",
            expect_breaker=True,
            p99_bound_s=1.0,
            recover_bound_s=15.0,
            what_users_see=REDIS_USERS_SEE + " Limits restart from full buckets after the restart.",
            needs=frozenset({"owned_redis"}),
        ),
        Scenario(
            name="postgres-slow",
            beats_baseline_by=10.0,
            summary="Every Postgres round trip 150 ms slower (latency toxic, 30 ms jitter)",
            # 150 ms, not 50: at 50 ms the capacity the fault leaves (32 threads / 0.6 s =
            # 53 requests/s) is above what a 2-core machine serves healthy (48 to 54), so
            # the collapse load was clipped below it and the baseline was never pushed
            # past its capacity. At 150 ms it is 17.8 requests/s, and 1.5x of it fits.
            fault=ProxyToxic("postgres", "latency", (("latency", 150), ("jitter", 30))),
            # For the collapse load: measured at 50 ms per round trip, an order creation
            # took about 1.05 s (20 round trips) and a read 0.25 s (5) at their p50
            # (chaos run postgres-slow, 2026-12-03); half the traffic each: about 12.
            extra={"round_trips_per_request": 12},
            # At 1.5x its capacity the baseline's queue wait grows by 0.5 s a second and
            # reaches the users' 10 s timeout 20 s into the fault; a 20 s fault ends just
            # before the collapse, and the queue drains at healthy speed after the heal.
            report_min_duration_s=60.0,
            dependency="postgres",
            expect_breaker=False,  # slow is not down: statement timeouts, not the breaker
            p99_bound_s=6.0,  # the request deadline (5 s) plus queueing
            recover_bound_s=15.0,
            what_users_see=(
                "Slower answers; no errors unless the pool queue fills, then a fast 503 "
                "with Retry-After."
            ),
        ),
        Scenario(
            name="postgres-down",
            beats_baseline_by=10.0,
            summary="Postgres unreachable (network down through the proxy)",
            fault=ProxyDown("postgres"),
            dependency="postgres",
            expect_breaker=True,
            # A thread's first checkout gives up within a slice (0.1 s) of the first refused
            # connection attempt; then fast (adr/0016).
            p99_bound_s=2.5,
            recover_bound_s=20.0,  # breaker reset (5 s by default) plus the trial
            what_users_see="503 problem+json with Retry-After, fast once the breaker is open.",
        ),
        Scenario(
            name="postgres-hang",
            beats_baseline_by=10.0,
            summary=(
                "Postgres swallows every answer (timeout toxic that never closes): a "
                "partition, where postgres-down is a refusal"
            ),
            fault=ProxyToxic("postgres", "timeout", (("timeout", 0),)),
            beats_baseline=_answers_what_the_baseline_leaves_hanging,
            extra_checks=(_never_hangs,),
            dependency="postgres",
            expect_breaker=True,
            # The client read deadline (3 s) or the pool wait (1 s) until the breaker
            # opens, then milliseconds; the request deadline (5 s) above all.
            p99_bound_s=5.0,
            recover_bound_s=20.0,  # breaker reset (5 s by default) plus the probe
            what_users_see=(
                "503 problem+json with Retry-After: within the read deadline (3 s) until "
                "the breaker opens, then in milliseconds; never a hang."
            ),
        ),
        Scenario(
            name="payments-503",
            beats_baseline_by=10.0,
            summary="The payment provider answers 503 (Retry-After: 1) to every call",
            fault=SimulatorFaults(
                "payments", (("error_rate", 1.0), ("error_status", 503), ("retry_after", 1))
            ),
            dependency="payments",
            expect_breaker=True,
            p99_bound_s=3.0,
            recover_bound_s=30.0,  # breaker reset (10 s by default) plus the trial
            what_users_see="201 with status pending_payment; the worker pays the order later.",
            calls_to="payments",
            settle_deferred=True,
            extra_checks=(_payments_calls_bounded,),
        ),
        Scenario(
            name="refunds-payments-503",
            summary=(
                "The payment provider answers 503 to every call while refunds are asked, "
                "each sent as concurrent copies and retried with the same Idempotency-Key"
            ),
            fault=SimulatorFaults(
                "payments", (("error_rate", 1.0), ("error_status", 503), ("retry_after", 1))
            ),
            dependency="payments",
            expect_breaker=True,
            p99_bound_s=3.0,
            recover_bound_s=30.0,
            what_users_see=(
                "202 with the refund pending (its amount reserved); copies in flight 409, "
                "later ones the stored answer; the worker completes every refund after the heal."
            ),
            calls_to="payments",
            settle_deferred=True,
            extra_checks=refunds.CHECKS,
            prepare=refunds.prepare,
            during_fault=refunds.during_fault,
        ),
        Scenario(
            name="payments-slow",
            beats_baseline_by=10.0,
            summary="The payment provider takes 2 s per call (read timeout 1 s)",
            fault=SimulatorFaults("payments", (("latency_ms", 2000),)),
            dependency="payments",
            expect_breaker=True,
            p99_bound_s=5.5,  # the request deadline (5 s) bounds the retries
            recover_bound_s=30.0,
            what_users_see=(
                "A slower 201 pending_payment at first, then a fast one once the breaker opens."
            ),
            calls_to="payments",
            settle_deferred=True,
            extra_checks=(_payments_calls_bounded,),
        ),
        Scenario(
            name="webhook-target-down",
            summary="The webhook receiver refuses connections",
            fault=SimulatorFaults("receiver", (("down", True),)),
            dependency="",  # per-target breakers are named webhook:<host>
            expect_breaker=False,
            p99_bound_s=1.5,  # the API never waits for webhook delivery
            recover_bound_s=15.0,
            what_users_see="Nothing on the API; deliveries wait, then arrive once it is back.",
            extra_checks=(_webhooks_delivered,),
            needs=frozenset({"webhooks"}),
            prepare=webhooks.prepare,
        ),
        Scenario(
            name="retry-storm",
            summary=(
                "Flaky payments (50% 503) while 20 clients each fire 3 copies of an order "
                "and retry at once"
            ),
            fault=SimulatorFaults(
                "payments", (("error_rate", 0.5), ("error_status", 503), ("retry_after", 0))
            ),
            dependency="payments",
            expect_breaker=False,  # consecutive-failure breaker: 50% rarely trips it
            p99_bound_s=5.5,
            recover_bound_s=30.0,
            what_users_see=(
                "One order per Idempotency-Key: duplicates in flight get 409 with Retry-After, "
                "later ones the stored answer; paid or pending_payment."
            ),
            calls_to="payments",
            settle_deferred=True,
            storm={"clients": 20, "copies": 3, "retries": 3},
            extra_checks=(_storm_amplification,),
        ),
        Scenario(
            name="bulkhead-saturation",
            summary="Payments slowed to 800 ms a call while orders keep coming: bulkhead fills",
            fault=SimulatorFaults("payments", (("latency_ms", 800),)),
            dependency="payments",
            expect_breaker=False,  # slow but answering: nothing for the breaker to count
            p99_bound_s=3.0,
            recover_bound_s=30.0,
            what_users_see=(
                "Orders beyond the bulkhead: an immediate 201 pending_payment; reads unaffected."
            ),
            create_share=0.7,
            calls_to="payments",
            settle_deferred=True,
            extra_checks=(_bulkhead_rejected, _bulkhead_isolates_reads),
            extra={"read_p99_bound_s": 1.0},
            # At 10 requests/s the shipped bulkhead never fills; above the capacity the
            # fault leaves, calls beyond its slots are refused at once.
            load="collapse",
        ),
        Scenario(
            name="overload",
            beats_baseline_by=overload.BASELINE_GOODPUT_FACTOR,
            beats_baseline=overload.beats_baseline,
            tail_s=overload.TAIL_S,
            healthy_when=overload.healthy,
            summary=(
                "A traffic spike to 3x the steady load (1.8x the stack's measured capacity), "
                "every priority class in the mix, nothing failing"
            ),
            fault=LoadSpike(3.0),
            dependency="",  # no breaker: the load shedder (resilience.concurrency)
            expect_breaker=False,
            # Shed answers are fast; served ones wait at most their class's queue budget
            # (1 s for critical) plus their own time.
            p99_bound_s=3.0,
            recover_bound_s=15.0,
            what_users_see=(
                "Critical requests (orders, order detail) served as before; lists and the "
                "report shed first with 503 overloaded and Retry-After."
            ),
            mix=overload.MIX,
            prepare=overload.prepare,
            extra_checks=overload.CHECKS,
            extra={"users": overload.USERS},
            needs=frozenset({"direct"}),
            default_duration_s=20.0,
            ci_duration_s=6.0,
        ),
    )
}
