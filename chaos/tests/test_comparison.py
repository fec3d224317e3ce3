"""Who served what, beside the baseline: orders are counted per order the users placed."""

from __future__ import annotations

from types import SimpleNamespace

from chaos.scenarios.runner import order_intents
from chaos.scenarios.traffic import NOT_SENT, Sample


def _attempt(t: float, key: str | None, status: int, attempt: int = 1) -> Sample:
    return Sample(t, 0.01, "create", status, user=0, key=key, attempt=attempt)


def test_an_order_placed_after_honouring_a_refusal_counts_once_and_served():
    run = SimpleNamespace(
        t_inject=10.0,
        t_heal=20.0,
        samples=[
            _attempt(5.0, "before", 201),  # placed before the fault: not counted
            _attempt(11.0, "refused-then-placed", 503),
            _attempt(13.0, "refused-then-placed", 201, attempt=2),
            _attempt(12.0, "refused-for-good", 503),
            _attempt(14.0, "refused-for-good", 503, attempt=2),
            _attempt(19.0, "answered-after-the-heal", 0),  # no answer: timed out
            _attempt(21.0, "answered-after-the-heal", 201, attempt=2),
            _attempt(15.0, None, NOT_SENT),  # the client's in-flight cap: never sent
            _attempt(25.0, None, NOT_SENT),  # after the heal: not counted
            Sample(12.0, 0.01, "get", 200, user=0),  # a read is not an order
        ],
    )
    # Placed during the fault: three keys and one order the client could not send;
    # served: the one placed on its second attempt and the one placed after the heal.
    assert order_intents(run) == (4, 2)


def _run(samples: list[Sample], *, reads_p99_s: float, orders_p99_s: float) -> SimpleNamespace:
    reads = [s for s in samples if s.op == "get"]
    classes = {
        "reads": {
            "requests": len(reads),
            "not_sent": 0,
            "served": sum(s.status == 200 for s in reads),
            "p99_s": reads_p99_s,
        },
        "orders": {"requests": 0, "not_sent": 0, "served": 0, "p99_s": orders_p99_s},
    }
    return SimpleNamespace(
        t_inject=10.0,
        t_heal=20.0,
        samples=samples,
        scenario=SimpleNamespace(dependency=None),
        endpoints=SimpleNamespace(settings=None),
        summary={
            "classes": classes,
            "p99_fault_s": max(reads_p99_s, orders_p99_s),
            "breaker_first_open_s": None,
            "slow_after_open": {"count": None},
        },
    )


def test_each_class_is_held_to_its_own_p99_and_orders_to_the_orders_placed():
    from chaos.scenarios.runner import compare_with_baseline

    reads = [Sample(11.0 + i / 10, 0.01, "get", 200, user=0) for i in range(10)]
    ours = _run(
        reads + [_attempt(11.0 + i / 10, f"k{i}", 201) for i in range(10)],
        reads_p99_s=0.5,
        orders_p99_s=2.0,
    )
    theirs = _run(
        reads + [_attempt(11.0 + i / 10, f"k{i}", 0) for i in range(10)],  # all timed out
        reads_p99_s=5.0,
        orders_p99_s=4.0,
    )
    found = compare_with_baseline(ours, theirs)
    assert found["classes"]["reads"]["p99_ratio"] == 10.0
    assert found["classes"]["orders"]["p99_ratio"] == 2.0
    assert found["classes"]["orders"]["served_share_resilient"] == 1.0
    assert found["classes"]["orders"]["served_share_baseline"] == 0.0
    assert found["baseline_failed_what_resilient_served"] == ["orders"]
