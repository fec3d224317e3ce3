"""The cost of an ``Idempotency-Key`` on POST /api/v1/orders, measured side by side.

Requests with and without a key alternate in one run against the same database and the
same payments simulator, so both series see the same machine noise.
"""

from __future__ import annotations

import uuid

ROUNDS = 300
WARMUP = 20
ORDER = {"currency": "EUR", "items": [{"sku": "abc", "quantity": 2, "unit_price": 1250}]}


def round_trips(post) -> tuple[int, int]:
    """(round trips to Postgres, transactions) of one request.

    Each entry ``CaptureQueriesContext`` logs is one round trip, except Django's ``COMMIT``
    after a statement that carried its own (the server is idle; psycopg sends nothing).
    """
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connections["default"]) as captured:
        post()
    trips = transactions = 0
    committed = False
    for query in captured.captured_queries:
        sql = query["sql"]
        if sql == "COMMIT" and committed:
            committed = False
            continue
        trips, transactions = trips + 1, transactions + (sql == "BEGIN")
        committed = sql.endswith("; COMMIT")
    return trips, transactions


def main() -> None:
    from bench.support import setup_django, timed, timing

    setup_django()
    from django.test import override_settings

    from bench.support import client_for_new_user, payments_at, without_rate_limits
    from chaos.payments import PaymentsService

    with PaymentsService() as payments:
        resilience = payments_at(payments.api_url)
        client = client_for_new_user()

        def without_key():
            assert client.post("/api/v1/orders", ORDER, format="json").status_code == 201

        def with_key():
            key = str(uuid.uuid4())
            response = client.post("/api/v1/orders", ORDER, format="json", HTTP_IDEMPOTENCY_KEY=key)
            assert response.status_code == 201

        plain, keyed = [], []
        with override_settings(RESILIENCE=resilience), without_rate_limits():
            for _ in range(WARMUP):
                without_key()
                with_key()
            for _ in range(ROUNDS):
                plain.append(timed(without_key))
                keyed.append(timed(with_key))
            counts = {"without": round_trips(without_key), "with": round_trips(with_key)}
    without, with_ = timing(plain), timing(keyed)
    print(f"POST /api/v1/orders in-process, payments on loopback, {ROUNDS} each, interleaved")
    print(f"  without Idempotency-Key: {without}")
    print(f"  with Idempotency-Key:    {with_}")
    print(
        f"  p50 ratio with/without: {with_.p50_ms / without.p50_ms:.2f}"
        f" (+{with_.p50_ms - without.p50_ms:.2f} ms)"
    )
    for label, (trips, transactions) in counts.items():
        print(f"  round trips {label + ' key:':12} {trips} ({transactions} transactions)")
    print(f"  the key adds {counts['with'][0] - counts['without'][0]} round trip(s) to Postgres")
