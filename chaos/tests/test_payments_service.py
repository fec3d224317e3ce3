"""Tests for the fake payment provider, against real instances on free ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from chaos._httpserver import FaultConfig, free_port
from chaos.payments import PaymentsService
from chaos.tests.cli import serving_cli

TIMEOUT = 10  # seconds; every HTTP call is bounded
BODY = {"order_id": "ord_1", "amount": 1250, "currency": "EUR"}


@pytest.fixture
def payments() -> Iterator[PaymentsService]:
    with PaymentsService(seed=1234) as service:
        yield service


def authorize(
    service: PaymentsService, key: str | None = "key-1", body: Any = BODY
) -> requests.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return requests.post(
        f"{service.api_url}/authorizations", json=body, headers=headers, timeout=TIMEOUT
    )


def control(service: PaymentsService, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{service.control_url}{path}", timeout=TIMEOUT, **kwargs)


# -- authorisations and idempotency ----------------------------------------------------------


def test_new_authorization_is_created(payments: PaymentsService) -> None:
    response = authorize(payments)

    assert response.status_code == 201
    data = response.json()
    assert data["id"].startswith("auth_")
    assert {k: data[k] for k in BODY} == BODY
    assert data["status"] == "authorized"
    assert data["created_at"]
    assert "Idempotent-Replayed" not in response.headers


def test_same_key_same_body_replays_without_second_charge(payments: PaymentsService) -> None:
    first = authorize(payments)
    # Same body with another key order: still "the same body".
    second = authorize(payments, body=dict(reversed(BODY.items())))

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert len(payments.authorizations()) == 1
    assert payments.stats()["authorizations"] == 1


def test_same_key_different_body_is_422(payments: PaymentsService) -> None:
    authorize(payments)

    response = authorize(payments, body={**BODY, "amount": 999})

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert len(payments.authorizations()) == 1


def test_concurrent_requests_with_one_key_create_one_authorization(
    payments: PaymentsService,
) -> None:
    # Injected latency holds every request in the handler, so all 20 race for the create.
    payments.set_faults(latency_ms=50)
    barrier = threading.Barrier(20, timeout=TIMEOUT)

    def send(_: int) -> requests.Response:
        barrier.wait()
        return authorize(payments, key="shared")

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(send, range(20)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert payments.stats()["authorizations"] == 1
    assert payments.requests_by_key() == {"shared": 20}


def test_missing_idempotency_key_is_400(payments: PaymentsService) -> None:
    response = authorize(payments, key=None)

    assert response.status_code == 400
    assert response.json()["error"] == "missing_idempotency_key"
    assert payments.authorizations() == []


@pytest.mark.parametrize(
    "body",
    [
        {**BODY, "amount": 0},
        {**BODY, "amount": -5},
        {**BODY, "amount": "1250"},
        {**BODY, "amount": True},
        {**BODY, "amount": 12.5},
        {**BODY, "currency": "eur"},
        {**BODY, "currency": "EURO"},
        {**BODY, "order_id": ""},
        {"amount": 1250, "currency": "EUR"},
        ["not", "an", "object"],
    ],
)
def test_invalid_fields_are_400(payments: PaymentsService, body: Any) -> None:
    response = authorize(payments, body=body)

    assert response.status_code == 400
    assert response.json()["error"] in {"invalid_request", "invalid_json"}
    assert payments.authorizations() == []


def test_invalid_json_is_400(payments: PaymentsService) -> None:
    response = requests.post(
        f"{payments.api_url}/authorizations",
        data=b"{not json",
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
        timeout=TIMEOUT,
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_unknown_route_and_wrong_method(payments: PaymentsService) -> None:
    missing = requests.get(f"{payments.api_url}/nope", timeout=TIMEOUT)
    wrong = requests.delete(f"{payments.api_url}/authorizations", timeout=TIMEOUT)

    assert missing.status_code == 404
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET, POST"


def test_healthz_on_both_ports(payments: PaymentsService) -> None:
    assert payments.api_port != payments.control_port
    for base in (payments.api_url, payments.control_url):
        response = requests.get(f"{base}/healthz", timeout=TIMEOUT)
        assert response.json() == {"status": "ok", "service": "payments"}


def test_api_healthz_obeys_the_latency_and_status_switches(payments: PaymentsService) -> None:
    """The app's recovery probe must fail while the provider is slow or failing."""
    payments.set_faults(latency_ms=300)
    started = time.monotonic()
    assert requests.get(f"{payments.api_url}/healthz", timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - started >= 0.3
    payments.set_faults(latency_ms=0, status=503)
    assert requests.get(f"{payments.api_url}/healthz", timeout=TIMEOUT).status_code == 503
    payments.set_faults(status=None, fail_first_n=1)
    assert requests.get(f"{payments.api_url}/healthz", timeout=TIMEOUT).status_code == 200
    assert payments.faults()["fail_first_n"] == 1  # left for /authorizations
    assert payments.stats()["requests"] == 0  # health checks are not counted


# -- counters --------------------------------------------------------------------------------


def test_counters_cover_every_outcome(payments: PaymentsService) -> None:
    authorize(payments, key="a")  # 201
    authorize(payments, key="a")  # 200 replay
    authorize(payments, key="a", body={**BODY, "amount": 1})  # 422
    authorize(payments, key=None)  # 400
    payments.set_faults(fail_first_n=1, error_status=503)
    authorize(payments, key="b")  # 503 injected

    stats = control(payments, "GET", "/stats").json()
    assert stats == {
        "requests": 5,
        "authorizations": 1,
        "faulted": 1,
        "by_status": {"200": 1, "201": 1, "400": 1, "422": 1, "503": 1},
    }
    assert requests.get(f"{payments.api_url}/stats", timeout=TIMEOUT).json() == stats
    listing = control(payments, "GET", "/authorizations").json()
    assert [a["order_id"] for a in listing["authorizations"]] == ["ord_1"]
    assert listing["requests_by_key"] == {"a": 3, "b": 1}


# -- fault switches --------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after"), [(500, None), (503, "7"), (429, "7")])
def test_error_rate_one_fails_every_request(
    payments: PaymentsService, status: int, retry_after: str | None
) -> None:
    switches = control(
        payments,
        "POST",
        "/control/faults",
        json={"error_rate": 1, "error_status": status, "retry_after": 7},
    )
    assert switches.status_code == 200
    assert switches.json()["error_status"] == status

    responses = [authorize(payments, key=f"k{i}") for i in range(3)]

    assert [r.status_code for r in responses] == [status] * 3
    assert all(r.headers.get("Retry-After") == retry_after for r in responses)
    assert responses[0].json()["error"] == "injected_fault"
    assert payments.stats() == {
        "requests": 3,
        "authorizations": 0,
        "faulted": 3,
        "by_status": {str(status): 3},
    }


def test_retry_after_defaults_to_one_second(payments: PaymentsService) -> None:
    payments.set_faults(error_rate=1.0, error_status=429)

    assert authorize(payments).headers["Retry-After"] == "1"


def test_seeded_error_rate_is_reproducible() -> None:
    def statuses(service: PaymentsService) -> list[int]:
        service.set_faults(error_rate=0.5)
        return [authorize(service, key=f"k{i}").status_code for i in range(20)]

    with PaymentsService(seed=7) as first, PaymentsService(seed=7) as second:
        run = statuses(first)
        assert statuses(second) == run
        first.reset()  # reset re-seeds, so the run repeats
        assert statuses(first) == run
    assert set(run) == {201, 500}


def test_fail_first_n_fails_then_succeeds(payments: PaymentsService) -> None:
    payments.set_faults(fail_first_n=2, error_status=503)

    # A client retrying with the same key: two failures, then exactly one authorisation.
    statuses = [authorize(payments, key="retry-me").status_code for _ in range(3)]

    assert statuses == [503, 503, 201]
    assert payments.faults()["fail_first_n"] == 0
    assert payments.stats()["faulted"] == 2
    assert len(payments.authorizations()) == 1


def test_latency_delays_the_answer(payments: PaymentsService) -> None:
    payments.set_faults(latency_ms=200, latency_jitter_ms=50)

    started = time.monotonic()
    response = authorize(payments)

    assert response.status_code == 201
    assert time.monotonic() - started >= 0.2


def test_down_refuses_connections_then_comes_back_on_the_same_port(
    payments: PaymentsService,
) -> None:
    port = payments.api_port

    assert control(payments, "POST", "/control/faults", json={"down": True}).json()["down"]

    with pytest.raises(requests.ConnectionError, match="refused"):
        authorize(payments)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((payments.host, port), timeout=TIMEOUT).close()
    # The control port stays reachable while the API port is down.
    assert control(payments, "GET", "/control/faults").json()["down"] is True
    assert control(payments, "GET", "/stats").json()["requests"] == 0

    assert (
        control(payments, "POST", "/control/faults", json={"down": False}).json()["down"] is False
    )

    assert payments.api_port == port
    assert authorize(payments).status_code == 201


def test_control_is_never_faulted(payments: PaymentsService) -> None:
    payments.set_faults(error_rate=1.0, error_status=503, latency_ms=5_000)

    started = time.monotonic()
    assert control(payments, "GET", "/stats").status_code == 200
    assert control(payments, "GET", "/healthz").status_code == 200
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "changes",
    [
        {"error_status": 418},
        {"error_rate": 1.5},
        {"error_rate": True},
        {"latency_ms": -1},
        {"fail_first_n": 1.5},
        {"down": "yes"},
        {"latency": 100},
    ],
)
def test_invalid_fault_switches_are_rejected(
    payments: PaymentsService, changes: dict[str, Any]
) -> None:
    before = payments.faults()

    response = control(payments, "POST", "/control/faults", json=changes)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_faults"
    assert payments.faults() == before
    with pytest.raises(ValueError, match=r"unknown|must|allowed"):
        payments.set_faults(**changes)


def test_reset_clears_faults_counters_and_authorizations(payments: PaymentsService) -> None:
    authorize(payments)
    payments.set_faults(error_rate=1.0, down=True)

    assert control(payments, "POST", "/control/reset").status_code == 200

    assert control(payments, "GET", "/control/faults").json() == FaultConfig().to_dict()
    assert payments.stats() == {"requests": 0, "authorizations": 0, "faulted": 0, "by_status": {}}
    assert payments.authorizations() == []
    assert authorize(payments).status_code == 201  # the API port is back up


def test_stop_leaves_no_server_threads() -> None:
    service = PaymentsService()
    service.start()
    service.set_faults(down=True)
    service.set_faults(down=False)
    authorize(service)

    service.stop()

    assert not [t for t in threading.enumerate() if t.name.startswith("chaos.payments")]


# -- CLI -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_serves_and_shuts_down_on_sigterm() -> None:
    port, control_port = free_port(), free_port()
    with serving_cli(
        "chaos.payments",
        *("--port", str(port), "--control-port", str(control_port), "--seed", "1"),
        health_url=f"http://127.0.0.1:{port}/healthz",
    ) as run:
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        assert health.status_code == 200
        control_health = requests.get(f"http://127.0.0.1:{control_port}/healthz", timeout=1)
        assert control_health.status_code == 200

    assert run.returncode == 0
    assert "GET /healthz 200" in run.stderr
    assert "shutting down" in run.stderr


# -- refunds -------------------------------------------------------------------------------


def refund(
    service: PaymentsService, authorization: dict, key: str | None = "refund-1", **changes: Any
) -> requests.Response:
    body = {
        "authorization_id": authorization["id"],
        "order_id": authorization["order_id"],
        "amount": 500,
        "currency": authorization["currency"],
        **changes,
    }
    headers = {"Idempotency-Key": key} if key is not None else {}
    return requests.post(f"{service.api_url}/refunds", json=body, headers=headers, timeout=TIMEOUT)


def test_a_refund_is_idempotent_on_its_key(payments: PaymentsService) -> None:
    charge = authorize(payments).json()
    first = refund(payments, charge)
    replay = refund(payments, charge)
    other = refund(payments, charge, amount=600)

    assert (first.status_code, replay.status_code, other.status_code) == (201, 200, 422)
    assert first.json()["id"].startswith("re_")
    assert first.json()["status"] == "succeeded"
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    assert other.json()["error"] == "idempotency_key_reused"
    assert payments.refund_stats() == {
        "requests": 3,
        "refunds": 1,
        "faulted": 0,
        "by_status": {"200": 1, "201": 1, "422": 1},
    }
    assert payments.refund_requests_by_key() == {"refund-1": 3}
    assert payments.stats()["requests"] == 1  # the authorisation's counters are its own


def test_refunds_never_exceed_the_authorization(payments: PaymentsService) -> None:
    charge = authorize(payments).json()  # 1250
    assert refund(payments, charge, key="a", amount=1000).status_code == 201
    over = refund(payments, charge, key="b", amount=251)
    assert (over.status_code, over.json()["error"]) == (422, "refund_exceeds_authorization")
    assert refund(payments, charge, key="c", amount=250).status_code == 201
    assert sum(r["amount"] for r in payments.refunds()) == 1250


def test_concurrent_refunds_never_exceed_the_authorization(payments: PaymentsService) -> None:
    charge = authorize(payments).json()  # 1250: two refunds of 500 fit
    payments.set_faults(latency_ms=50)
    barrier = threading.Barrier(8, timeout=TIMEOUT)

    def send(index: int) -> int:
        barrier.wait()
        return refund(payments, charge, key=f"k{index}").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(send, range(8)))
    assert statuses == [201, 201] + [422] * 6


@pytest.mark.parametrize(
    ("changes", "status", "error"),
    [
        ({"authorization_id": "auth_nope"}, 404, "unknown_authorization"),
        ({"authorization_id": ""}, 400, "invalid_request"),
        ({"currency": "USD"}, 400, "invalid_request"),
        ({"amount": 0}, 400, "invalid_request"),
        ({"order_id": ""}, 400, "invalid_request"),
    ],
)
def test_invalid_refunds_are_refused(
    payments: PaymentsService, changes: dict, status: int, error: str
) -> None:
    charge = authorize(payments).json()
    response = refund(payments, charge, **changes)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert payments.refunds() == []
    assert refund(payments, charge, key=None).status_code == 400


def test_refunds_honour_the_fault_switches_and_reset(payments: PaymentsService) -> None:
    charge = authorize(payments).json()
    payments.set_faults(fail_first_n=1, error_status=503)
    failed = refund(payments, charge)
    assert (failed.status_code, failed.headers["Retry-After"]) == (503, "1")
    assert refund(payments, charge).status_code == 201  # same key, after the fault: refunded
    payments.set_faults(down=True)
    with pytest.raises(requests.ConnectionError):
        refund(payments, charge)
    payments.set_faults(down=False)
    stats = control(payments, "GET", "/refunds").json()["stats"]
    assert (stats["faulted"], stats["refunds"]) == (1, 1)
    payments.reset()
    assert payments.refunds() == []
    assert payments.refund_stats()["requests"] == 0
