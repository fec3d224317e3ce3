"""What a scenario is, what a run produced, and the verdict's checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chaos.scenarios.faults import Endpoints, Fault
from chaos.scenarios.traffic import NOT_SENT, Sample

if TYPE_CHECKING:
    from chaos.scenarios.runner import RunContext

# An order answered in one of these states is a documented answer: `pending_payment` is
# the degraded mode of DESIGN section 3 (accepted now, authorised later).
DOCUMENTED_ORDER_STATUSES = frozenset({"paid", "pending_payment"})


@dataclass(frozen=True)
class Check:
    """One line of the verdict; ``passed`` None means it did not apply (skipped)."""

    name: str
    passed: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class Scenario:
    """One experiment: a fault, what the stack must do under it, and its bounds.

    Bounds are generous on purpose (a 2-core CI machine, compressed time): they catch
    the harm the patterns exist to prevent (timeouts, errors, hangs), not jitter.
    """

    name: str
    summary: str
    fault: Fault
    dependency: str  # the breaker that guards the faulted dependency ("" if none)
    expect_breaker: bool  # it must open during the fault and be closed after recovery
    p99_bound_s: float  # p99 latency of requests started during the fault
    recover_bound_s: float  # heal -> every answer healthy again
    what_users_see: str
    create_share: float = 0.5  # fraction of requests that place orders (the rest read)
    # Share of each operation (chaos.scenarios.traffic.OPERATIONS) when not just orders
    # and reads at create_share; overload mixes every priority class.
    mix: dict[str, float] | None = None
    calls_to: str | None = None  # simulator whose received calls are counted ("payments")
    settle_deferred: bool = False  # pending_payment orders must be paid in the end
    storm: dict[str, int] | None = None  # retry-storm burst fired during the fault
    extra_checks: tuple[Callable[[RunContext], Check], ...] = ()
    # "owned_redis", "webhooks"; "direct": no fault proxy between the harness stack and
    # its dependencies, for a scenario that injects no network fault.
    needs: frozenset[str] = frozenset()
    prepare: Callable[[RunContext], None] | None = None  # setup after users exist
    # Run once right after the fault is injected (own clients of the scenario's own).
    during_fault: Callable[[RunContext], None] | None = None
    # Its load unless the run says otherwise: "collapse" for a scenario that shows its
    # point only above the capacity the fault leaves (chaos.scenarios.load).
    load: str = "steady"
    # Beside its baseline, the resilient run must show a p99 at least this many times
    # lower, or the baseline must fail requests the resilient run served (issue 12).
    beats_baseline_by: float | None = None
    # What "beats the baseline" means when not a p99 ratio (overload: critical goodput).
    beats_baseline: Callable[[RunContext, RunContext], Check] | None = None
    # Healthy traffic kept after recovery, seen in the report (overload: the limit grows
    # back in it).
    tail_s: float = 1.5
    # What a healthy answer is, when not "2xx, orders paid" (overload: at its capacity a
    # service may shed its lowest classes; critical requests must be served).
    healthy_when: Callable[[Sample], bool] | None = None
    default_duration_s: float = 30.0
    ci_duration_s: float = 4.0
    # The shortest fault its report runs (chaos report): a fault that shows its point only
    # once the baseline's queue has grown past what users wait for.
    report_min_duration_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def create_fraction(self) -> float:
        """Fraction of the requests that place orders."""
        return self.mix.get("create", 0.0) if self.mix else self.create_share

    def healthy(self, sample: Sample) -> bool:
        """Is this what a user gets when nothing is wrong?"""
        if self.healthy_when is not None:
            return self.healthy_when(sample)
        if sample.status not in (200, 201):
            return False
        return sample.op not in ("create", "storm") or sample.order_status == "paid"


def documented(sample: Sample) -> bool:
    """Is this answer one the API documents (success, degraded, or a retryable refusal)?"""
    if sample.status in (NOT_SENT, 0):
        return False
    if sample.status in (200, 201):
        return sample.order_status is None or sample.order_status in DOCUMENTED_ORDER_STATUSES
    # 429 rate limited, 503 dependency unavailable, 409 same key still in flight: each a
    # problem+json document with Retry-After (DESIGN section 1).
    if sample.status in (409, 429, 503):
        return sample.retry_after is not None and sample.problem
    return False


__all__ = ["Check", "Endpoints", "Scenario", "documented"]
