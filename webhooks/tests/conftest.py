"""Fixtures for webhook tests: a real receiver on free ports, endpoints aimed at it."""

from __future__ import annotations

import pytest

from chaos.receiver import ReceiverService


@pytest.fixture
def receiver():
    """The reference receiver (chaos.receiver) in this process, on free ports."""
    with ReceiverService() as service:
        yield service


@pytest.fixture
def published(monkeypatch):
    """Record what the relay publishes instead of sending it to the broker."""
    from webhooks.tasks import deliver

    sent: list[str] = []
    monkeypatch.setattr(deliver, "apply_async", lambda args, **_: sent.append(args[0]))
    return sent


def make_endpoint(user, receiver, *, path="/hooks/a", event_types=("order.created",)):
    """An endpoint of ``user`` at ``receiver`` + ``path``, its secret known to the receiver."""
    from webhooks.services import endpoint_create

    endpoint = endpoint_create(
        owner=user, url=f"{receiver.api_url}{path}", event_types=list(event_types)
    )
    receiver.set_secret(path, endpoint.secret)
    return endpoint


def emit(user, event_type="order.created", payload=None, **kwargs):
    """Emit one event in its own transaction (as a service would, inside its own)."""
    from django.db import transaction

    from webhooks.services import outbox_emit

    with transaction.atomic():
        return outbox_emit(event_type=event_type, payload=payload or {"n": 1}, owner=user, **kwargs)
