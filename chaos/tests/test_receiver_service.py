"""Tests for the reference webhook subscriber, against real instances on free ports."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from chaos._httpserver import free_port
from chaos.receiver import ReceiverService, decode_secret, sign, verify_signature
from chaos.tests.cli import serving_cli

TIMEOUT = 10  # seconds; every HTTP call is bounded
SECRET = "default-secret"
EVENT = {"type": "order.paid", "data": {"order_id": "ord_1"}}


@pytest.fixture
def receiver() -> Iterator[ReceiverService]:
    with ReceiverService(secret=SECRET, seed=1234) as service:
        yield service


def deliver(
    service: ReceiverService,
    path: str = "/hooks/orders",
    *,
    secret: str | bytes = SECRET,
    msg_id: str = "msg_1",
    timestamp: int | None = None,
    body: bytes | None = None,
    signature: str | None = None,
    omit: str | None = None,
) -> requests.Response:
    """POST a Standard Webhooks delivery; ``omit`` drops one of the three headers."""
    body = json.dumps(EVENT).encode() if body is None else body
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature or sign(secret, msg_id, timestamp, body),
        "Content-Type": "application/json",
    }
    headers.pop(omit or "", None)
    return requests.post(f"{service.api_url}{path}", data=body, headers=headers, timeout=TIMEOUT)


def control(service: ReceiverService, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{service.control_url}{path}", timeout=TIMEOUT, **kwargs)


# -- signatures ------------------------------------------------------------------------------


def test_valid_delivery_is_recorded(receiver: ReceiverService) -> None:
    timestamp = int(time.time())

    response = deliver(receiver, timestamp=timestamp)

    assert response.status_code == 204
    [event] = control(receiver, "GET", "/control/events").json()
    assert event["received_at"]
    assert {k: v for k, v in event.items() if k != "received_at"} == {
        "id": "msg_1",
        "path": "/hooks/orders",
        "timestamp": timestamp,
        "body": EVENT,
        "attempts": 1,
    }
    assert control(receiver, "GET", "/control/stats").json() == {
        "received": 1,
        "unique": 1,
        "duplicates": 0,
        "rejected": 0,
        "faulted": 0,
    }


def test_wrong_secret_is_401(receiver: ReceiverService) -> None:
    response = deliver(receiver, secret="not-the-secret")

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_signature"
    assert receiver.events() == []
    assert receiver.stats()["rejected"] == 1


def test_tampered_body_is_401(receiver: ReceiverService) -> None:
    timestamp = int(time.time())
    signature = sign(SECRET, "msg_1", timestamp, b'{"amount": 1}')

    response = deliver(receiver, timestamp=timestamp, body=b'{"amount": 1000}', signature=signature)

    assert response.status_code == 401


def test_any_valid_signature_among_several_passes(receiver: ReceiverService) -> None:
    timestamp = int(time.time())
    valid = sign(SECRET, "msg_1", timestamp, json.dumps(EVENT).encode())
    header = f"v1,{base64.b64encode(b'x' * 32).decode()} v1a,bogus {valid}"

    assert deliver(receiver, timestamp=timestamp, signature=header).status_code == 204


def test_signature_with_another_version_is_401(receiver: ReceiverService) -> None:
    timestamp = int(time.time())
    valid = sign(SECRET, "msg_1", timestamp, json.dumps(EVENT).encode())

    response = deliver(receiver, timestamp=timestamp, signature=valid.replace("v1,", "v2,"))

    assert response.status_code == 401


@pytest.mark.parametrize("offset", [-301, 301, -10_000])
def test_stale_or_future_timestamp_is_400(receiver: ReceiverService, offset: int) -> None:
    response = deliver(receiver, timestamp=int(time.time()) + offset)

    assert response.status_code == 400
    assert response.json()["error"] == "stale_timestamp"
    assert receiver.stats()["rejected"] == 1


def test_timestamp_within_tolerance_passes(receiver: ReceiverService) -> None:
    assert deliver(receiver, timestamp=int(time.time()) - 250).status_code == 204


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_400(receiver: ReceiverService, header: str) -> None:
    response = deliver(receiver, omit=header)

    assert response.status_code == 400
    assert response.json()["error"] == "missing_headers"


def test_signed_non_json_body_is_400(receiver: ReceiverService) -> None:
    assert deliver(receiver, body=b"not json").status_code == 400
    assert receiver.events() == []


def test_whsec_secret_is_base64_decoded(receiver: ReceiverService) -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    assert (
        control(
            receiver, "POST", "/control/secrets", json={"path": "/hooks/x", "secret": secret}
        ).status_code
        == 204
    )

    # The string itself is not the key ...
    assert deliver(receiver, "/hooks/x", secret=secret.encode(), msg_id="a").status_code == 401
    # ... the decoded bytes are; signing with the whsec_ string decodes it the same way.
    assert deliver(receiver, "/hooks/x", secret=key, msg_id="b").status_code == 204
    assert deliver(receiver, "/hooks/x", secret=secret, msg_id="c").status_code == 204


def test_decode_secret() -> None:
    assert decode_secret("whsec_c2VjcmV0") == b"secret"
    assert decode_secret("raw secret") == b"raw secret"
    with pytest.raises(ValueError, match="base64"):
        decode_secret("whsec_not base64!")
    with pytest.raises(ValueError, match="empty"):
        decode_secret("")


def test_verify_signature_checks_every_key() -> None:
    signature = sign(b"new", "id", 1, b"{}")

    assert verify_signature([b"old", b"new"], "id", 1, b"{}", signature)
    assert not verify_signature([b"old"], "id", 1, b"{}", signature)


def test_per_path_secret_overrides_the_default(receiver: ReceiverService) -> None:
    receiver.set_secret("/hooks/a", "path-secret")

    assert deliver(receiver, "/hooks/a", secret=SECRET, msg_id="1").status_code == 401
    assert deliver(receiver, "/hooks/a", secret="path-secret", msg_id="2").status_code == 204
    assert deliver(receiver, "/hooks/b", secret=SECRET, msg_id="3").status_code == 204
    assert control(receiver, "GET", "/control/secrets").json() == {
        "paths": ["/hooks/a"],
        "default": True,
    }


def test_several_secrets_per_path_allow_rotation(receiver: ReceiverService) -> None:
    receiver.set_secret("/hooks/a", ["old-secret", "new-secret"])

    assert deliver(receiver, "/hooks/a", secret="old-secret", msg_id="1").status_code == 204
    assert deliver(receiver, "/hooks/a", secret="new-secret", msg_id="2").status_code == 204


@pytest.mark.parametrize(
    "payload",
    [
        {"path": "/elsewhere", "secret": "s"},
        {"path": "/hooks/x", "secret": ""},
        {"path": "/hooks/x", "secret": "whsec_***"},
        {"path": "/hooks/x"},
        {"secret": "s"},
    ],
)
def test_invalid_secret_configuration_is_400(
    receiver: ReceiverService, payload: dict[str, Any]
) -> None:
    response = control(receiver, "POST", "/control/secrets", json=payload)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_secret"


def test_no_secret_configured_is_401() -> None:
    with ReceiverService() as service:
        response = deliver(service)

    assert response.status_code == 401
    assert response.json()["error"] == "no_secret"


# -- dedupe ----------------------------------------------------------------------------------


def test_repeated_webhook_id_is_acknowledged_once(receiver: ReceiverService) -> None:
    first = deliver(receiver)
    second = deliver(receiver)

    assert (first.status_code, second.status_code) == (204, 200)
    assert second.json() == {"id": "msg_1", "duplicate": True}
    [event] = receiver.events()
    assert event["attempts"] == 2
    assert receiver.stats() == {
        "received": 2,
        "unique": 1,
        "duplicates": 1,
        "rejected": 0,
        "faulted": 0,
    }


def test_same_webhook_id_on_another_path_is_another_event(receiver: ReceiverService) -> None:
    assert deliver(receiver, "/hooks/a").status_code == 204
    assert deliver(receiver, "/hooks/b").status_code == 204
    assert len(receiver.events()) == 2


def test_concurrent_duplicates_record_one_event(receiver: ReceiverService) -> None:
    barrier = threading.Barrier(10, timeout=TIMEOUT)
    timestamp = int(time.time())

    def send(_: int) -> int:
        barrier.wait()
        return deliver(receiver, timestamp=timestamp).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = sorted(pool.map(send, range(10)))

    assert statuses == [200] * 9 + [204]
    assert receiver.stats()["unique"] == 1
    assert receiver.stats()["duplicates"] == 9
    assert receiver.events()[0]["attempts"] == 10


# -- fault switches --------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after"), [(503, "5"), (410, None)])
def test_status_switch_answers_every_delivery(
    receiver: ReceiverService, status: int, retry_after: str | None
) -> None:
    control(receiver, "POST", "/control/faults", json={"status": status, "retry_after": 5})

    responses = [deliver(receiver, msg_id=f"m{i}") for i in range(3)]

    assert [r.status_code for r in responses] == [status] * 3
    assert all(r.headers.get("Retry-After") == retry_after for r in responses)
    assert receiver.events() == []
    assert receiver.stats() == {
        "received": 3,
        "unique": 0,
        "duplicates": 0,
        "rejected": 0,
        "faulted": 3,
    }

    control(receiver, "POST", "/control/faults", json={"status": None})
    assert deliver(receiver, msg_id="m0").status_code == 204


def test_error_rate_one_fails_every_delivery(receiver: ReceiverService) -> None:
    receiver.set_faults(error_rate=1.0, error_status=500)

    assert [deliver(receiver, msg_id=f"m{i}").status_code for i in range(3)] == [500] * 3
    assert receiver.stats()["faulted"] == 3


def test_fail_first_n_then_the_retry_is_recorded_once(receiver: ReceiverService) -> None:
    receiver.set_faults(fail_first_n=2, error_status=503)

    # A sender retrying one message: two faulted attempts, then one recorded event.
    statuses = [deliver(receiver).status_code for _ in range(3)]

    assert statuses == [503, 503, 204]
    [event] = receiver.events()
    assert event["attempts"] == 1
    assert receiver.stats()["received"] == 3
    assert receiver.stats()["faulted"] == 2


def test_latency_delays_the_answer(receiver: ReceiverService) -> None:
    receiver.set_faults(latency_ms=200)

    started = time.monotonic()
    assert deliver(receiver).status_code == 204
    assert time.monotonic() - started >= 0.2


def test_down_refuses_connections_then_comes_back_on_the_same_port(
    receiver: ReceiverService,
) -> None:
    port = receiver.api_port

    control(receiver, "POST", "/control/faults", json={"down": True})

    with pytest.raises(requests.ConnectionError, match="refused"):
        deliver(receiver)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((receiver.host, port), timeout=TIMEOUT).close()
    assert control(receiver, "GET", "/control/stats").status_code == 200

    control(receiver, "POST", "/control/faults", json={"down": False})

    assert receiver.api_port == port
    assert deliver(receiver).status_code == 204


def test_fault_status_must_be_an_error(receiver: ReceiverService) -> None:
    response = control(receiver, "POST", "/control/faults", json={"status": 200})

    assert response.status_code == 400
    assert receiver.faults()["status"] is None


def test_reset_returns_to_the_start_up_state(receiver: ReceiverService) -> None:
    receiver.set_secret("/hooks/a", "path-secret")
    deliver(receiver, "/hooks/a", secret="path-secret")
    receiver.set_faults(status=503, down=True)

    assert control(receiver, "POST", "/control/reset").status_code == 200

    assert receiver.events() == []
    assert set(receiver.stats().values()) == {0}
    assert receiver.faults()["status"] is None
    # The per-path secret is gone; the start-up default secret still applies.
    assert deliver(receiver, "/hooks/a", secret=SECRET).status_code == 204


# -- CLI -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_verifies_with_the_default_secret_and_stops_on_sigterm() -> None:
    port, control_port = free_port(), free_port()
    with serving_cli(
        "chaos.receiver",
        *("--port", str(port), "--control-port", str(control_port)),
        *("--secret", "whsec_c2VjcmV0"),
        health_url=f"http://127.0.0.1:{control_port}/healthz",
    ) as run:
        body = json.dumps(EVENT).encode()
        timestamp = int(time.time())
        delivery = requests.post(
            f"http://127.0.0.1:{port}/hooks/cli",
            data=body,
            headers={
                "webhook-id": "cli-1",
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(b"secret", "cli-1", timestamp, body),
            },
            timeout=TIMEOUT,
        )
        assert delivery.status_code == 204

    assert run.returncode == 0
    assert "POST /hooks/cli 204" in run.stderr
