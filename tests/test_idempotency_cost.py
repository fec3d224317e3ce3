"""What an ``Idempotency-Key`` costs on POST /api/v1/orders, in database round trips.

Counted with Django's ``CaptureQueriesContext`` on the real Postgres, keyed against
unkeyed, on the same warm client and the same payments service. Every entry it captures
is one round trip (psycopg sends ``BEGIN`` on its own too), except Django's ``COMMIT``
right after a statement that ended with its own ``COMMIT``: the server is idle by then and
psycopg sends nothing. Budget (adr/0014-declared-phases.md): one extra round trip, the
claim; the record's writes travel with the COMMIT of the phase they belong to.
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
    round_trips: int
    transactions: int
    record_statements: int  # statements touching the idempotency record
    record_with_commit: int  # ... of which carried their transaction's COMMIT

    def __str__(self) -> str:
        return "\n".join(statement[:200] for statement in self.sql)


def cost(client, **headers) -> Cost:
    with CaptureQueriesContext(connections["default"]) as captured:
        response = client.post("/api/v1/orders", ORDER, format="json", **headers)
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "paid"
    sql = [query["sql"] for query in captured.captured_queries]
    round_trips = transactions = record = record_with_commit = 0
    committed = False  # the previous statement ended its transaction itself
    for statement in sql:
        if statement == "COMMIT" and committed:
            committed = False
            continue  # psycopg: nothing to send, the server is idle
        round_trips += 1
        transactions += statement == "BEGIN"
        committed = statement.endswith("; COMMIT")
        if RECORD_TABLE in statement:
            record += 1
            record_with_commit += committed
    return Cost(sql, round_trips, transactions, record, record_with_commit)


@pytest.mark.django_db(transaction=True)
def test_a_keyed_order_costs_at_most_one_extra_round_trip(payments, user, capsys):
    client = client_for(user)
    cost(client)  # warm: payments connection, breakers, caches
    unkeyed = cost(client)
    keyed = cost(client, HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
    with capsys.disabled():
        print(
            f"\nPOST /api/v1/orders round trips: unkeyed {unkeyed.round_trips}, keyed "
            f"{keyed.round_trips}; transactions {unkeyed.transactions} and "
            f"{keyed.transactions}; record statements {keyed.record_statements}, "
            f"{keyed.record_with_commit} of them with their COMMIT"
        )
    explain = f"keyed:\n{keyed}\n\nunkeyed:\n{unkeyed}"
    assert unkeyed.record_statements == 0, explain
    assert keyed.round_trips - unkeyed.round_trips <= 1, explain
    assert keyed.transactions == unkeyed.transactions, explain
    # The claim, then one write per atomic phase, each sent with that phase's COMMIT (the
    # last one also stores the answer: there is no store after it).
    atomic_phases = sum(isinstance(phase, Atomic) for phase in ORDER_PLACEMENT.phases)
    assert keyed.record_statements == 1 + atomic_phases, explain
    assert keyed.record_with_commit == atomic_phases, explain


@pytest.mark.django_db(transaction=True)
def test_placing_an_order_opens_no_savepoint_of_its_own(payments, user):
    """Each phase is one transaction and the services inside it open none of their own:
    a SAVEPOINT and its RELEASE are two round trips that undo nothing the phase's
    rollback would not (they were 4 of 17, orders.services)."""
    client = client_for(user)
    cost(client)  # warm
    keyed = cost(client, HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
    assert not [s for s in keyed.sql if s.startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))], keyed
