"""One slow customer holds at most its host's share of the webhook workers (adr/0007).

Deliveries run in prefork children, one at a time each, so the limit that isolates
customers from each other is per target host across the whole worker fleet, in Redis.
Here concurrent attempts (threads standing in for worker children: they share nothing
but Redis and Postgres) deliver to a slow receiver and to a fast one.
"""

from __future__ import annotations

import threading

import pytest

from chaos.receiver import ReceiverService
from resilience.policies import get_policy
from webhooks import services
from webhooks.models import Delivery
from webhooks.tests.conftest import emit, make_endpoint

pytestmark = [pytest.mark.usefixtures("no_rate_limits")]


@pytest.mark.django_db(transaction=True)
def test_a_slow_host_gets_its_slots_and_the_rest_are_deferred_while_other_hosts_go_on(
    user, receiver, published
):
    slots = get_policy("webhook").bulkhead.max_concurrent
    with ReceiverService() as fast:
        slow_endpoint = make_endpoint(user, receiver, path="/hooks/slow")
        fast_endpoint = make_endpoint(user, fast, path="/hooks/fast")
        receiver.set_faults(latency_ms=1500)
        for _ in range(slots + 2):
            emit(user)  # one delivery to each endpoint per event
        slow = list(Delivery.objects.filter(endpoint=slow_endpoint))
        fast_one = Delivery.objects.filter(endpoint=fast_endpoint).first()
        outcomes: dict[str, list[str]] = {"slow": [], "fast": []}
        started = threading.Barrier(len(slow))

        def deliver(delivery, kind: str, barrier=None) -> None:
            if barrier is not None:
                barrier.wait(5)
            outcomes[kind].append(services.delivery_attempt(delivery_id=delivery.id))

        workers = [threading.Thread(target=deliver, args=(d, "slow", started)) for d in slow]
        for worker in workers:
            worker.start()
        # While the slow host holds its slots, another customer's delivery goes through.
        deliver(fast_one, "fast")
        for worker in workers:
            worker.join(15)

    assert outcomes["fast"] == ["succeeded"]
    assert sorted(outcomes["slow"]) == sorted(["succeeded"] * slots + ["deferred"] * 2)
    assert receiver.stats()["received"] == slots  # the deferred ones never reached it
    deferred = Delivery.objects.filter(endpoint=slow_endpoint, attempts=0, status="pending")
    assert deferred.count() == 2  # rescheduled without spending an attempt
