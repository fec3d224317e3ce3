"""The webhooks API: endpoints (create, list, delete), ping and deliveries, bad inputs."""

from __future__ import annotations

import base64
import uuid

import pytest

from conftest import client_for
from tests.problems import assert_problem
from webhooks.models import Delivery, Endpoint

pytestmark = pytest.mark.django_db

ENDPOINTS = "/api/v1/webhooks/endpoints"
DELIVERIES = "/api/v1/webhooks/deliveries"
URL = "http://127.0.0.1:8201/hooks/a"


def create(client, **overrides):
    payload = {"url": URL, "event_types": ["order.created", "order.paid"], **overrides}
    return client.post(ENDPOINTS, payload, format="json")


@pytest.mark.usefixtures("no_rate_limits")
def test_create_shows_the_secret_once_and_list_never(auth_client, user):
    response = create(auth_client)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["url"] == URL
    assert body["event_types"] == ["order.created", "order.paid"]
    assert body["is_active"] is True
    secret = body["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert Endpoint.objects.get(id=body["id"]).owner == user

    listed = auth_client.get(ENDPOINTS).json()
    assert listed["count"] == 1
    assert "secret" not in listed["results"][0]
    detail = auth_client.get(f"{ENDPOINTS}/{body['id']}").json()
    assert "secret" not in detail
    assert secret not in str(listed) + str(detail)


@pytest.mark.usefixtures("no_rate_limits")
def test_each_endpoint_gets_its_own_secret(auth_client):
    first, second = create(auth_client).json(), create(auth_client).json()
    assert first["secret"] != second["secret"]


@pytest.mark.usefixtures("no_rate_limits")
@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"event_types": ["order.created"]}, "url"),
        ({"url": "not a url", "event_types": ["order.created"]}, "url"),
        ({"url": URL}, "event_types"),
        ({"url": URL, "event_types": []}, "event_types"),
        ({"url": URL, "event_types": ["order.exploded"]}, "event_types"),
        ({"url": URL, "event_types": "order.created"}, "event_types"),
        ({"url": "http://" + "a" * 2050 + ".com/", "event_types": ["order.created"]}, "url"),
    ],
)
def test_create_rejects_bad_input(auth_client, payload, field):
    body = assert_problem(auth_client.post(ENDPOINTS, payload, format="json"), 400)
    assert field in str(body)
    assert not Endpoint.objects.exists()


@pytest.mark.usefixtures("no_rate_limits")
def test_only_http_and_https_targets(auth_client):
    body = assert_problem(create(auth_client, url="ftp://127.0.0.1/x"), 422)
    assert body["code"] == "webhook_target_forbidden"
    assert body["reason"] == "scheme_not_allowed"


@pytest.mark.usefixtures("no_rate_limits")
def test_endpoint_count_is_bounded(auth_client, settings):
    settings.WEBHOOKS_MAX_ENDPOINTS_PER_USER = 2
    assert create(auth_client).status_code == 201
    assert create(auth_client).status_code == 201
    assert_problem(create(auth_client), 422, "webhook_endpoint_limit")


@pytest.mark.usefixtures("no_rate_limits")
def test_delete_hides_the_endpoint_and_keeps_its_history(auth_client):
    endpoint_id = create(auth_client).json()["id"]
    assert auth_client.delete(f"{ENDPOINTS}/{endpoint_id}").status_code == 204
    assert auth_client.get(ENDPOINTS).json()["count"] == 0
    assert_problem(auth_client.get(f"{ENDPOINTS}/{endpoint_id}"), 404)
    assert_problem(auth_client.delete(f"{ENDPOINTS}/{endpoint_id}"), 404)
    endpoint = Endpoint.objects.get(id=endpoint_id)
    assert (endpoint.is_active, endpoint.disabled_reason) == (False, "deleted")


@pytest.mark.usefixtures("no_rate_limits")
def test_another_users_endpoint_is_not_found(auth_client, make_user):
    endpoint_id = create(auth_client).json()["id"]
    other = client_for(make_user()[0])
    assert other.get(ENDPOINTS).json()["count"] == 0
    for call in (other.get, other.delete, other.post):
        path = f"{ENDPOINTS}/{endpoint_id}" + ("/ping" if call == other.post else "")
        assert_problem(call(path), 404)
    assert_problem(auth_client.get(f"{ENDPOINTS}/{uuid.uuid4()}"), 404)


def test_anonymous_callers_are_refused(api_client):
    assert_problem(api_client.get(ENDPOINTS), 401)
    assert_problem(api_client.post(ENDPOINTS, {}, format="json"), 401)
    assert_problem(api_client.get(DELIVERIES), 401)


@pytest.mark.usefixtures("no_rate_limits")
def test_ping_queues_a_delivery_listed_with_its_state(auth_client, published):
    endpoint_id = create(auth_client, event_types=["order.paid"]).json()["id"]
    response = auth_client.post(f"{ENDPOINTS}/{endpoint_id}/ping")
    assert response.status_code == 202, response.content
    delivery = response.json()
    assert delivery["event_type"] == "webhook.ping"
    assert delivery["endpoint_id"] == endpoint_id
    assert (delivery["status"], delivery["attempts"]) == ("pending", 0)

    listed = auth_client.get(DELIVERIES).json()
    assert [d["id"] for d in listed["results"]] == [delivery["id"]]
    assert {"attempts", "last_status_code", "last_latency_ms", "next_attempt_at"} <= set(
        listed["results"][0]
    )
    assert auth_client.get(DELIVERIES, {"status": "dead"}).json()["count"] == 0
    assert auth_client.get(DELIVERIES, {"endpoint": endpoint_id}).json()["count"] == 1
    assert_problem(auth_client.get(DELIVERIES, {"status": "exploded"}), 400)
    assert_problem(auth_client.get(DELIVERIES, {"endpoint": "nope"}), 400)


@pytest.mark.usefixtures("no_rate_limits")
def test_ping_of_a_deleted_endpoint_is_not_found(auth_client):
    endpoint_id = create(auth_client).json()["id"]
    auth_client.delete(f"{ENDPOINTS}/{endpoint_id}")
    assert_problem(auth_client.post(f"{ENDPOINTS}/{endpoint_id}/ping"), 404)


def test_pings_are_limited_per_user_per_hour(user, make_user, published, settings):
    # Windows live in the shared Redis for an hour; user ids restart with each test run.
    settings.RATELIMIT_CACHE_PREFIX = f"rl-fw-{uuid.uuid4().hex}:"
    client = client_for(user)
    endpoint_id = create(client).json()["id"]
    statuses = [client.post(f"{ENDPOINTS}/{endpoint_id}/ping").status_code for _ in range(10)]
    assert statuses == [202] * 10
    refused = client.post(f"{ENDPOINTS}/{endpoint_id}/ping")
    body = assert_problem(refused, 429)
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert "webhook-ping" in body["violated-policies"]
    assert Delivery.objects.count() == 10
    # Another user has a window of their own.
    other = client_for(make_user()[0])
    other_endpoint = create(other).json()["id"]
    assert other.post(f"{ENDPOINTS}/{other_endpoint}/ping").status_code == 202
