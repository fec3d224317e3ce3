"""The peer comparison's endpoints are really protected by the library they stand for.

`python -m bench peers` takes minutes and is not run in CI; this checks in a few seconds
that every compared endpoint answers and that its protection is the peer's, not nothing
(so the comparison cannot silently rot into comparing unprotected views).
"""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from bench.peers import settings as peers_settings
from conftest import client_for
from orders.models import Order

pytestmark = pytest.mark.django_db
BODY = {"currency": "EUR", "amount": 1250}
REFUSALS = {429, 403, 503}


@pytest.fixture
def peers(settings):
    """The peers' settings (bench/peers/settings.py) over the test ones, this test only."""
    settings.ROOT_URLCONF = "bench.peers.urls"
    settings.CACHES = peers_settings.CACHES
    settings.IDEMPOTENCY_KEY = peers_settings.IDEMPOTENCY_KEY
    settings.RATELIMIT_USE_CACHE = peers_settings.RATELIMIT_USE_CACHE
    settings.MIDDLEWARE = peers_settings.MIDDLEWARE
    settings.PEERS_KEY_PREFIX = f"peers-test-{uuid.uuid4().hex[:8]}"
    settings.PEERS_LIMIT_REDIS_URL = settings.REDIS_URL
    settings.PEERS_RATE = 5  # low, so a short burst crosses every limiter
    policies = dict(peers_settings.RESILIENCE_RATELIMIT["policies"])
    for name in ("peers_policy", "peers_policy_closed"):
        policies[name] = {**policies[name], "capacity": 5, "refill_rate": 5.0}
    settings.RESILIENCE_RATELIMIT = {
        **settings.RESILIENCE_RATELIMIT,
        "middleware": {"policy": None, "path_prefixes": []},
        "policies": {**settings.RESILIENCE_RATELIMIT["policies"], **policies},
    }
    return settings


@pytest.fixture
def drf_idempotency(peers):
    """drf-idempotency's middleware and table (created inside the test's transaction)."""
    from drf_idempotency.models import IdempotencyRecord

    with connection.schema_editor() as editor:
        editor.create_model(IdempotencyRecord)
    peers.MIDDLEWARE = [
        *peers_settings.MIDDLEWARE[:-1],
        "drf_idempotency.middleware.IdempotencyMiddleware",
    ]
    peers.IDEMPOTENCY = {"BACKEND": "drf_idempotency.backends.database.DatabaseBackend"}


def post_twice(client, path: str):
    key = str(uuid.uuid4())
    first = client.post(path, BODY, format="json", HTTP_IDEMPOTENCY_KEY=key)
    second = client.post(path, BODY, format="json", HTTP_IDEMPOTENCY_KEY=key)
    return first, second


@pytest.mark.parametrize("peer", ["ours", "django-idempotency-key"])
def test_each_idempotency_peer_creates_one_order_for_a_repeated_key(peers, user, peer):
    first, second = post_twice(client_for(user), f"/peers/idem/{peer}")
    assert first.status_code == 201, first.content[:300]
    assert Order.objects.filter(owner=user).count() == 1
    assert second.content == first.content
    if peer == "ours":
        assert second["Idempotent-Replayed"] == "true"
    else:
        assert second.status_code == 409  # its documented replay status (CONFLICT_STATUS_CODE)


def test_drf_idempotency_endpoint_replays_through_its_middleware(drf_idempotency, user):
    first, second = post_twice(client_for(user), "/peers/idem/drf-idempotency")
    assert first.status_code == 201, first.content[:300]
    assert first["Idempotent-Replayed"] == "false"  # set by drf-idempotency, nobody else
    assert second["Idempotent-Replayed"] == "true"
    assert Order.objects.filter(owner=user).count() == 1


def test_the_unprotected_baseline_really_is_unprotected(peers, user):
    post_twice(client_for(user), "/peers/idem/unprotected")
    assert Order.objects.filter(owner=user).count() == 2


@pytest.mark.parametrize("limiter", ["ours", "ours-closed", "limits-moving", "limits-fixed",
                                     "django-ratelimit"])  # fmt: skip
def test_each_rate_limiter_refuses_past_the_policy_and_its_never_variant_does_not(
    peers, client, limiter
):
    statuses = [client.get(f"/peers/rl/{limiter}").status_code for _ in range(30)]
    admitted = statuses.count(200)
    assert admitted >= 5, statuses  # the policy's 5 (plus what refilled meanwhile)
    assert REFUSALS & set(statuses), statuses
    never = {client.get(f"/peers/rl/{limiter}/never").status_code for _ in range(30)}
    assert never == {200}
    assert {client.get("/peers/rl/plain").status_code for _ in range(30)} == {200}
