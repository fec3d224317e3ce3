"""Retry amplification while payments answers 503 to everything: budget on versus off.

Calls reaching payments per order created. With the budget, retries add at most ~20%
(plus a small floor); without it every order makes ``max_attempts`` calls.
"""

from __future__ import annotations

ORDERS = 200
ORDER = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 1, "unit_price": 500}]}


def amplification(payments, *, budget: bool) -> float:
    from django.test import override_settings

    from bench.support import client_for_new_user, payments_at, without_rate_limits

    resilience = payments_at(
        payments.api_url,
        # Isolate the budget: a breaker that never opens in this run's 600 calls at most.
        breaker={"window": "consecutive", "fail_max": 10_000, "slow_call_s": None},
        retry={"base_s": 0.001, "cap_s": 0.002, "budget_min_retries": 3 if budget else 1_000_000},
    )
    client = client_for_new_user()
    payments.reset()
    payments.set_faults(error_rate=1.0, error_status=503, retry_after=0)
    with override_settings(RESILIENCE=resilience), without_rate_limits():
        for _ in range(ORDERS):
            response = client.post("/api/v1/orders", ORDER, format="json")
            if response.status_code != 201 or response.json()["status"] != "pending_payment":
                raise RuntimeError(
                    f"unexpected answer {response.status_code}: {response.content!r}"
                )
    return payments.stats()["requests"] / ORDERS


def main() -> None:
    from bench.support import setup_django

    setup_django()
    from chaos.payments import PaymentsService

    with PaymentsService() as payments:
        with_budget = amplification(payments, budget=True)
        without_budget = amplification(payments, budget=False)
    print(f"payments answering 503 to everything, {ORDERS} orders each way (max_attempts 3)")
    print(f"  calls reaching payments per order, budget on:  {with_budget:.2f}")
    print(f"  calls reaching payments per order, budget off: {without_budget:.2f}")
    print(f"  load saved by the budget: {1 - with_budget / without_budget:.0%}")
