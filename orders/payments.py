"""The payments provider, seen through the resilient HTTP client.

The call site names the dependency and nothing else: timeouts, retries with full
jitter, the retry budget, the breaker and the bulkhead all come from
``RESILIENCE["dependencies"]["payments"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from resilience.http import client
from resilience.policies import uses_dependency

PAYMENTS = uses_dependency("payments")


class PaymentDeclinedError(Exception):
    """The provider answered and refused (a 4xx other than 429): not worth retrying."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"payment declined ({status}): {detail}")


@dataclass(frozen=True)
class Authorization:
    id: str


def payments_authorize(
    *, order_id: object, amount: int, currency: str, idempotency_key: str, retry: bool = True
) -> Authorization:
    """Authorise ``amount`` for the order.

    Raises :class:`PaymentDeclinedError`, or a :class:`resilience.errors.Refusal` when
    the provider cannot be asked now (the order is then accepted as ``pending_payment``).
    ``idempotency_key`` comes from the caller's declared operation
    (``ORDER_PLACEMENT.downstream_key``), the one place keys are derived, so a resumed or
    retried authorisation never charges twice.
    """
    response = client(PAYMENTS).request(
        "POST",
        "/authorizations",
        json={"order_id": str(order_id), "amount": amount, "currency": currency},
        idempotency_key=idempotency_key,
        retry=retry,
    )
    if response.status_code in (200, 201):
        return Authorization(id=response.json()["id"])
    raise PaymentDeclinedError(response.status_code, response.text[:200])
