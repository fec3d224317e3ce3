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
