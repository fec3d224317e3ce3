"""What an ``Idempotency-Key`` costs on POST /api/v1/orders, in database statements.

Counted with Django's ``CaptureQueriesContext`` on the real Postgres (it also logs
``BEGIN`` and ``COMMIT``), keyed against unkeyed, on the same warm client and the same
payments service. Budget (adr/0014-declared-phases.md): one extra round trip of its own,
the claim; the record's other writes ride in the transactions the phases open anyway, one
per atomic phase (the last one also stores the answer), and no transaction is added.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from conftest import client_for
from orders.services import ORDER_PLACEMENT
from resilience.phases import Atomic

pytestmark = pytest.mark.usefixtures("no_rate_limits", "no_load_shedding")

ORDER = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 2, "unit_price": 1250}]}
RECORD_TABLE = '"resilience_idempotencyrecord"'


@dataclass(frozen=True)
class Cost:
    sql: list[str]
    transactions: int  # BEGIN ... COMMIT blocks
    alone: int  # statements outside any transaction: one round trip each
    inside: int  # statements inside a transaction (BEGIN and COMMIT not counted)
    record_alone: int  # ... of which touch the idempotency record
    record_inside: int

    def __str__(self) -> str:
        return "\n".join(self.sql)


def cost(client, **headers) -> Cost:
    with CaptureQueriesContext(connections["default"]) as captured:
        response = client.post("/api/v1/orders", ORDER, format="json", **headers)
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "paid"
    sql = [query["sql"] for query in captured.captured_queries]
    depth = transactions = alone = inside = record_alone = record_inside = 0
    for statement in sql:
        if statement == "BEGIN":
            depth, transactions = depth + 1, transactions + 1
        elif statement in ("COMMIT", "ROLLBACK"):
            depth -= 1
        elif depth:
            inside += 1
            record_inside += RECORD_TABLE in statement
        else:
            alone += 1
            record_alone += RECORD_TABLE in statement
    return Cost(sql, transactions, alone, inside, record_alone, record_inside)


@pytest.mark.django_db(transaction=True)
def test_a_keyed_order_costs_one_extra_round_trip_of_its_own(payments, user, capsys):
    client = client_for(user)
    cost(client)  # warm: payments connection, breakers, caches
    unkeyed = cost(client)
    keyed = cost(client, HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
    with capsys.disabled():
        print(
            f"\nPOST /api/v1/orders statements: unkeyed {len(unkeyed.sql)}, keyed "
            f"{len(keyed.sql)} (outside transactions {unkeyed.alone} -> {keyed.alone}, "
            f"inside {unkeyed.inside} -> {keyed.inside}, transactions "
            f"{unkeyed.transactions} -> {keyed.transactions})"
        )
    explain = f"keyed:\n{keyed}\n\nunkeyed:\n{unkeyed}"
    assert unkeyed.record_alone == unkeyed.record_inside == 0, explain
    # One round trip of its own: the claim (INSERT ... ON CONFLICT DO NOTHING RETURNING).
    assert keyed.alone - unkeyed.alone <= 1, explain
    assert keyed.record_alone == 1, explain
    # No transaction of its own: the record's writes ride in the phases' transactions,
    # one per atomic phase (the last one also stores the answer, no store after it).
    assert keyed.transactions == unkeyed.transactions, explain
    atomic_phases = sum(isinstance(phase, Atomic) for phase in ORDER_PLACEMENT.phases)
    assert keyed.record_inside == atomic_phases, explain
    assert keyed.inside - unkeyed.inside == atomic_phases, explain
