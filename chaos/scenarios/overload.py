"""overload: a traffic spike to 3x the steady load (1.8x the stack's measured capacity),
no dependency failing (issue 13; adr/0010).

The run measures the stack's capacity first (closed loop, the mix below), sends 1x (0.6
of it: an open-loop load with headroom), then 3x that during the "fault", then 1x again
(chaos.scenarios.load.capacity_plan).
At 1x the stack may shed its lower classes now and then: "healthy" (for the recovery
check) is critical requests served and the others served or shed with the documented
answer.
The mix covers every priority class the views declare: order creation and detail
(critical), the order list (normal), the report (best effort). Every user has an order
made beforehand (``prepare``), so a detail read is a detail read from the first second.

The checks, on the resilient run (the baseline, with no shedder, shows the collapse):

* critical goodput during the spike (answers within ``GOODPUT_DEADLINE_S``) is at least
  90% of its goodput at 1x, before the spike;
* critical p99 during the spike is within 3x of its p99 at 1x, before it;
* the lowest class is shed first: best effort's shed share >= normal's >= critical's;
* the limit is back within ``LIMIT_RECOVERY_BOUND_S`` of the spike's end;
* beside the baseline: at least ``BASELINE_GOODPUT_FACTOR`` x its critical goodput.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chaos.scenarios.base import Check
from chaos.scenarios.runner import percentile
from chaos.scenarios.traffic import NOT_SENT, PRIORITY_OF_OP, Sample

if TYPE_CHECKING:
    from chaos.scenarios.runner import RunContext

MIX = {"create": 0.15, "get": 0.15, "list": 0.4, "report": 0.3}
PRIORITIES = ("critical", "normal", "best_effort")
# A success later than this from the moment it was sent: its user has given up.
GOODPUT_DEADLINE_S = 2.0
CRITICAL_GOODPUT_SHARE = 0.9  # of its goodput at 1x
CRITICAL_P99_FACTOR = 3.0  # of its p99 before the spike
LIMIT_RECOVERY_BOUND_S = 10.0
# The resilient run's critical goodput in the spike against the baseline's.
BASELINE_GOODPUT_FACTOR = 2.0
# Traffic kept after recovery: the limit is watched growing back in it.
TAIL_S = 12.0
# Enough users that per-user limits never shape the load: at 3x of about 80 answers/s
# each sends about one request in 4 s, and a report in 15 s (orders_report allows 5 at
# once and one each 12 s).
USERS = 1000


def healthy(sample: Sample) -> bool:
    """At 1x, critical requests are served (orders paid); the lower classes are served or
    shed with the documented 503 (at its capacity the service may shed them)."""
    if sample.status in (200, 201):
        return sample.op not in ("create", "storm") or sample.order_status == "paid"
    shed = sample.status == 503 and sample.code == "overloaded"
    return shed and PRIORITY_OF_OP.get(sample.op) != "critical"


def prepare(ctx: RunContext) -> None:
    """One order per user, written straight into the stack's database, known to the reads."""
    from accounts.models import User as Account
    from orders.models import Order, OrderStatus

    emails = [user.email for user in ctx.users]
    accounts = {a.email: a for a in Account.objects.filter(email__in=emails)}
    paid = [
        Order(owner=accounts[email], currency="EUR", total_amount=1999, status=OrderStatus.PAID)
        for email in emails
    ]
    orders = Order.objects.bulk_create(paid)
    for index, order in enumerate(orders):
        ctx.traffic.know_orders(index, [str(order.id)])


def priority_figures(samples: list[Sample], since: float, until: float) -> dict[str, Any]:
    """Per priority class, requests started in [since, until): goodput, latency, shed."""
    window = max(1e-9, until - since)
    figures: dict[str, Any] = {}
    for level in PRIORITIES:
        group = [
            s
            for s in samples
            if since <= s.t < until and PRIORITY_OF_OP.get(s.op) == level and s.status != NOT_SENT
        ]
        good = [s for s in group if s.status in (200, 201) and s.latency_s <= GOODPUT_DEADLINE_S]
        shed = [s for s in group if s.status == 503 and s.code == "overloaded"]
        latencies = [s.latency_s for s in good]
        figures[level] = {
            "requests": len(group),
            "goodput_rps": len(good) / window,
            "p50_s": percentile(latencies, 0.5),
            "p99_s": percentile(latencies, 0.99),
            "shed": len(shed),
            "shed_share": len(shed) / len(group) if group else 0.0,
            "late": sum(1 for s in group if s.status in (200, 201)) - len(good),
        }
    return figures


def _phases(ctx: RunContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures before the spike (past the first second) and during it, kept in the summary."""
    if "priorities" not in ctx.summary:
        samples = ctx.samples
        ctx.summary["priorities"] = {
            "before": priority_figures(samples, min(1.0, ctx.t_inject), ctx.t_inject),
            "spike": priority_figures(samples, ctx.t_inject, ctx.t_heal),
            "after": priority_figures(samples, ctx.t_heal, ctx.t_end),
        }
    found = ctx.summary["priorities"]
    return found["before"], found["spike"]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def critical_goodput(ctx: RunContext) -> Check:
    before, spike = _phases(ctx)
    load = ctx.config["load"]
    at_1x = before["critical"]["goodput_rps"]
    got = spike["critical"]["goodput_rps"]
    name = f"critical goodput at {load['factor']:g}x >= {CRITICAL_GOODPUT_SHARE:.0%} of 1x"
    detail = (
        f"{got:.1f} critical answers/s within {GOODPUT_DEADLINE_S:g} s during the spike, "
        f"{at_1x:.1f}/s before it at 1x (offered there: "
        f"{load['rps'] * (MIX['create'] + MIX['get']):.1f}/s, the critical share of "
        f"{load['rps']:g} requests/s)"
    )
    return Check(name, at_1x > 0 and got >= CRITICAL_GOODPUT_SHARE * at_1x, detail)


def critical_p99(ctx: RunContext) -> Check:
    before, spike = _phases(ctx)
    quiet, loud = before["critical"]["p99_s"], spike["critical"]["p99_s"]
    ok = quiet is not None and loud is not None and loud <= CRITICAL_P99_FACTOR * quiet
    return Check(
        f"critical p99 during the spike within {CRITICAL_P99_FACTOR:g}x of before",
        ok,
        f"critical p99 {_ms(quiet)} before, {_ms(loud)} during the spike",
    )


def lowest_shed_first(ctx: RunContext) -> Check:
    _, spike = _phases(ctx)
    shares = [spike[level]["shed_share"] for level in PRIORITIES]
    ordered = shares[2] >= shares[1] >= shares[0] and spike["best_effort"]["shed"] > 0
    return Check(
        "lowest class shed first",
        ordered,
        "shed during the spike: "
        + ", ".join(
            f"{level} {spike[level]['shed']} ({spike[level]['shed_share']:.0%})"
            for level in PRIORITIES
        ),
    )


def limit_recovered(ctx: RunContext) -> Check:
    """The limit, summed over the web processes, back to 90% of its level before the spike."""
    observed = [(o.t, o.concurrency_limit) for o in ctx.observer.observations]
    before = [v for t, v in observed if t < ctx.t_inject and v is not None]
    after = [(t, v) for t, v in observed if t >= ctx.t_heal and v is not None]
    if not before or not after:
        return Check("limit recovered after the spike", None, "no concurrency limit exported")
    level = sorted(before)[len(before) // 2]
    low = min((v for t, v in observed if ctx.t_inject <= t < ctx.t_heal and v is not None),
              default=level)  # fmt: skip
    back = next((t - ctx.t_heal for t, v in after if v >= 0.9 * level), None)
    # How much it moves at steady 1x once it is back (the ramp back is not oscillation).
    settled = [v for t, v in after if back is None or t - ctx.t_heal >= back] or [level]
    spread = max(settled) - min(settled)
    ctx.summary["concurrency_limit"] = {
        "before": level,
        "lowest_in_spike": low,
        "recovered_s": back,
        "spread_once_back": spread,
    }
    return Check(
        "limit recovered after the spike",
        back is not None and back <= LIMIT_RECOVERY_BOUND_S,
        f"limit {level:g} before, down to {low:g} in the spike, back to 90% of it "
        f"{'never' if back is None else f'{back:.1f} s'} after (bound "
        f"{LIMIT_RECOVERY_BOUND_S:g} s); once back, it moved within {spread:g} at 1x",
    )


def beats_baseline(ctx: RunContext, baseline: RunContext) -> Check:
    """Without the shedder the spike collapses: the baseline's critical goodput falls."""
    _, ours = _phases(ctx)
    _, theirs = _phases(baseline)
    mine, other = ours["critical"]["goodput_rps"], theirs["critical"]["goodput_rps"]
    ratio = mine / other if other > 0 else float("inf")
    return Check(
        f"beats the baseline (critical goodput in the spike {BASELINE_GOODPUT_FACTOR:g}x higher)",
        ratio >= BASELINE_GOODPUT_FACTOR,
        f"critical answers within {GOODPUT_DEADLINE_S:g} s: {mine:.1f}/s resilient, "
        f"{other:.1f}/s baseline ({ratio:.1f}x); critical p99 "
        f"{_ms(ours['critical']['p99_s'])} resilient, {_ms(theirs['critical']['p99_s'])} baseline",
    )


def resilient_only(check):
    """The shedder's checks apply to the resilient run; the baseline has none."""

    def applies(ctx: RunContext) -> Check:
        found = check(ctx)
        if ctx.resilient:
            return found
        return Check(found.name, None, f"baseline (no shedder): {found.detail}")

    applies.__name__ = check.__name__
    return applies


CHECKS = tuple(
    resilient_only(check)
    for check in (critical_goodput, critical_p99, lowest_shed_first, limit_recovered)
)
