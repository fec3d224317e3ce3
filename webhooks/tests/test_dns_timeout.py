"""A target whose DNS does not answer: the attempt fails and is retried, never dead."""

from __future__ import annotations

import pytest

from tests.silent_servers import silent_udp_server
from webhooks import services
from webhooks.models import Delivery, DeliveryStatus, Endpoint
from webhooks.tests.conftest import emit, make_endpoint

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_rate_limits")]


def test_a_dns_timeout_at_delivery_is_a_failed_attempt_not_a_dead_letter(
    user, receiver, published, settings
):
    endpoint = make_endpoint(user, receiver)
    # The endpoint now names a host (registration resolved an address; names change).
    Endpoint.objects.filter(id=endpoint.id).update(url="http://hooks.example.com/hooks/a")
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    settings.DNS_RESOLVE_TIMEOUT_S = 0.3
    with silent_udp_server() as (port, received):
        settings.DNS_NAMESERVERS = [f"127.0.0.1:{port}"]
        outcome = services.delivery_attempt(delivery_id=delivery.id)
    assert received
    assert outcome == "retry"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.attempts == 1
    assert "DNS lookup" in delivery.attempt_log.get().error
