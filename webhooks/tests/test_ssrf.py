"""SSRF guard: refused at registration (422) and again at delivery time (DNS rebinding)."""

from __future__ import annotations

import ipaddress

import pytest

from resilience import ssrf
from tests.problems import assert_problem
from webhooks import services
from webhooks.models import Delivery, DeliveryStatus
from webhooks.tests.conftest import emit

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_rate_limits")]

ENDPOINTS = "/api/v1/webhooks/endpoints"


def register(client, url):
    return client.post(ENDPOINTS, {"url": url, "event_types": ["order.paid"]}, format="json")


def fake_dns(monkeypatch, answers: dict[str, str]) -> None:
    """Resolve the given names to the given addresses (this test only); others fail."""

    def resolve(host, port):
        if host not in answers:
            raise OSError(f"no such host {host}")
        return [ipaddress.ip_address(answers[host])]

    monkeypatch.setattr(ssrf, "resolve", resolve)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/hook", "forbidden_address"),
        ("http://169.254.169.254/latest/meta-data/", "forbidden_address"),
        ("http://[::1]:8201/hooks/a", "forbidden_address"),
        ("http://[::ffff:10.0.0.1]/hook", "forbidden_address"),
        ("http://192.168.1.1/hook", "forbidden_address"),
        ("http://100.64.0.1/hook", "forbidden_address"),
        ("http://224.0.0.1/hook", "forbidden_address"),
        ("http://0.0.0.0/hook", "forbidden_address"),
        ("https://127.0.0.2/hook", "forbidden_address"),  # allowlisted is 127.0.0.1 only
        ("file:///etc/passwd", None),  # not even a URL to the serializer
    ],
)
def test_private_and_special_addresses_are_refused(auth_client, url, reason):
    response = register(auth_client, url)
    if reason is None:
        assert_problem(response, 400)
        return
    body = assert_problem(response, 422, "webhook_target_forbidden")
    assert body["reason"] == reason


def test_localhost_is_refused_unless_allowlisted(auth_client, settings):
    assert register(auth_client, "http://localhost:8201/hooks/a").status_code == 201
    assert register(auth_client, "http://127.0.0.1:8201/hooks/a").status_code == 201
    settings.WEBHOOKS_ALLOWED_TARGETS = []
    body = assert_problem(register(auth_client, "http://localhost:8201/hooks/a"), 422)
    assert body["reason"] == "forbidden_address"
    assert_problem(register(auth_client, "http://127.0.0.1:8201/hooks/a"), 422)


def test_a_name_resolving_to_a_private_address_is_refused(auth_client, monkeypatch):
    fake_dns(monkeypatch, {"hooks.example.com": "93.184.216.34", "internal.example": "10.1.2.3"})
    assert register(auth_client, "https://hooks.example.com/x").status_code == 201
    body = assert_problem(register(auth_client, "https://internal.example/x"), 422)
    assert body["reason"] == "forbidden_address"
    assert "10.1.2.3" in body["detail"]
    body = assert_problem(register(auth_client, "https://nowhere.example/x"), 422)
    assert body["reason"] == "unresolvable_host"


def test_every_resolved_address_must_be_allowed(monkeypatch):
    answer = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.9")]
    monkeypatch.setattr(ssrf, "resolve", lambda *_: answer)
    with pytest.raises(ssrf.ForbiddenTargetError):
        ssrf.check_target("https://mixed.example/x", allowed=[])


def test_delivery_time_check_catches_dns_rebinding(user, monkeypatch, published):
    fake_dns(monkeypatch, {"hooks.example.com": "93.184.216.34"})
    endpoint = services.endpoint_create(
        owner=user, url="https://hooks.example.com/x", event_types=["order.created"]
    )
    emit(user)
    delivery = Delivery.objects.get(endpoint=endpoint)
    # The name now points inside the network: the worker refuses before connecting.
    fake_dns(monkeypatch, {"hooks.example.com": "169.254.169.254"})
    assert services.delivery_attempt(delivery_id=delivery.id) == "forbidden"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DEAD
    assert "169.254.169.254" in delivery.last_error


def test_the_connection_itself_refuses_private_addresses(receiver, settings):
    """Layer 2 (requests-hardened) refuses at connect time even if layer 1 was skipped."""
    guarded = ssrf.guarded_client("webhook:guard-test", allowed=[])
    with pytest.raises(ssrf.FORBIDDEN_ADDRESS_ERRORS):
        guarded.request("POST", f"{receiver.api_url}/hooks/a", data=b"{}", retry=False)
    assert receiver.stats()["received"] == 0


def test_redirects_are_dead_lettered_not_followed():
    # never_redirect in the hardened session; a 3xx answer is a refusal of this request.
    assert services._classify(307, None).outcome == "dead"
