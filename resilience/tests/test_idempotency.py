"""Idempotency keys on a phased view: Stripe's semantics against the real Postgres."""

from __future__ import annotations

import logging
import uuid

import pytest
from django.db import transaction
from drf_spectacular.generators import SchemaGenerator
from prometheus_client import REGISTRY

from conftest import client_for
from orders.models import Order
from resilience.errors import DependencyUnavailableError
from resilience.idempotency import (
    IdempotencyLockLostError,
    claims,
    downstream_key,
    override_clock,
    request_fingerprint,
    store,
)
from resilience.models import IdempotencyRecord
from resilience.problems import ProblemError
from resilience.tests import idempotency_views as views
from resilience.tests.idempotency_helpers import (
    BODY,
    URL,
    URLS,
    FakeClock,
    authorizations_for,
    new_key,
    post,
    reset_test_views,
)
from tests.problems import assert_problem

pytestmark = [pytest.mark.django_db, pytest.mark.urls(URLS)]


@pytest.fixture(autouse=True)
def _clean_test_views():
    reset_test_views()
    yield
    reset_test_views()


def requests_total(outcome: str, scope: str = views.SCOPE) -> float:
    value = REGISTRY.get_sample_value(
        "resilience_idempotency_requests_total", {"scope": scope, "outcome": outcome}
    )
    return value or 0.0


def raise_(exc: BaseException):
    def hook() -> None:
        raise exc

    return hook


# --- First request, replay, mismatch ------------------------------------------------------------
def test_first_request_runs_and_a_retry_replays_the_identical_response(auth_client, user):
    key = new_key()
    first = post(auth_client, key)
    assert first.status_code == 201, first.content
    assert "Idempotent-Replayed" not in first
    assert first["RateLimit"]  # a per-request header...

    replay = post(auth_client, key)
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.content == first.content  # byte for byte
    assert replay["Content-Type"] == first["Content-Type"]
    assert replay["Location"] == first["Location"]
    assert "RateLimit" not in replay  # ...is never stored nor replayed
    assert Order.objects.filter(owner=user).count() == 1
    assert len(authorizations_for(first.json()["id"])) == 1

    record = IdempotencyRecord.objects.get(principal=user, key=key)
    assert record.recovery_point == "finished"
    assert record.response_status == 201
    assert record.locked_at is None
    assert record.finished_at is not None
    assert record.resource_id == first.json()["id"]
    assert record.fingerprint == request_fingerprint(method="POST", path=URL, query={}, body=BODY)


def test_without_a_key_the_view_just_runs(auth_client, user):
    assert post(auth_client).status_code == 201
    assert post(auth_client).status_code == 201
    assert Order.objects.filter(owner=user).count() == 2
    assert not IdempotencyRecord.objects.filter(principal=user).exists()


def test_key_order_and_whitespace_of_the_body_do_not_matter(auth_client, user):
    key = new_key()
    first = auth_client.post(
        URL,
        '{"amount": 1250, "currency": "EUR"}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    again = auth_client.post(
        URL,
        '{"currency":"EUR","amount":1250}',
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    assert first.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.filter(owner=user).count() == 1


def test_same_key_with_another_body_is_422(auth_client, user):
    key = new_key()
    assert post(auth_client, key).status_code == 201
    before = requests_total("mismatch")
    body = assert_problem(post(auth_client, key, body={**BODY, "amount": 1}), 422)
    assert body["code"] == "idempotency_key_mismatch"
    assert body["mismatch"] == "payload"
    assert requests_total("mismatch") == before + 1
    assert Order.objects.filter(owner=user).count() == 1


@pytest.mark.parametrize(
    ("url", "scope"),
    [("/test/idem/orders-elsewhere", views.SCOPE), ("/test/idem/other", "tests.other")],
)
def test_same_key_on_another_endpoint_is_422(auth_client, url, scope):
    key = new_key()
    assert post(auth_client, key).status_code == 201
    body = assert_problem(post(auth_client, key, url=url), 422, "idempotency_key_mismatch")
    assert body["mismatch"] == "endpoint"


def test_another_user_with_the_same_key_is_independent(make_user):
    alice, bob = make_user()[0], make_user()[0]
    key = new_key()
    first = post(client_for(alice), key)
    second = post(client_for(bob), key)
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert first.json()["id"] != second.json()["id"]
    assert Order.objects.filter(owner=alice).count() == 1
    assert Order.objects.filter(owner=bob).count() == 1


# --- The header ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    ["", "a" * 256, "has space", "tab\tinside", '""', '"a\\"b"', "caf\u00e9"],
)
def test_malformed_key_is_400_and_stores_nothing(auth_client, user, raw):
    before = requests_total("invalid")
    response = auth_client.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY=raw)
    assert_problem(response, 400, "idempotency_key_invalid")
    assert requests_total("invalid") == before + 1
    assert not IdempotencyRecord.objects.filter(principal=user).exists()
    assert not Order.objects.filter(owner=user).exists()


@pytest.mark.parametrize(
    "key", ["a", "A" * 255, "~!#$%&'*+-.^_`|0123456789", 'quote"inside"', str(uuid.uuid4())]
)
def test_well_formed_keys_are_accepted(auth_client, key):
    assert post(auth_client, key).status_code == 201


def test_a_quoted_key_is_the_same_key_as_the_bare_one(auth_client, user):
    key = new_key()
    assert post(auth_client, f'"{key}"').status_code == 201
    assert post(auth_client, key)["Idempotent-Replayed"] == "true"
    assert IdempotencyRecord.objects.get(principal=user).key == key


def test_required_key_missing_is_400(auth_client):
    before = requests_total("missing", "tests.required")
    response = auth_client.post("/test/idem/required", {}, format="json")
    assert_problem(response, 400, "idempotency_key_required")
    assert requests_total("missing", "tests.required") == before + 1
    assert post(auth_client, new_key(), url="/test/idem/required").status_code == 200


def test_a_setting_makes_the_key_required_per_scope(auth_client, settings):
    settings.IDEMPOTENCY_REQUIRED_SCOPES = [views.SCOPE]
    assert_problem(post(auth_client), 400, "idempotency_key_required")
    assert post(auth_client, new_key()).status_code == 201


def test_anonymous_requests_are_refused_before_any_record(api_client):
    response = post(api_client, new_key())
    assert_problem(response, 401)
    assert not IdempotencyRecord.objects.exists()


# --- What is stored -----------------------------------------------------------------------------
def test_validation_error_stores_nothing_and_the_fixed_retry_succeeds(auth_client, user):
    key = new_key()
    bad = post(auth_client, key, body={"currency": "XXX", "amount": 0})
    body = assert_problem(bad, 400, "invalid")
    assert {"currency", "amount"} <= body["errors"].keys()
    assert not IdempotencyRecord.objects.filter(principal=user, key=key).exists()

    fixed = post(auth_client, key)
    assert fixed.status_code == 201
    assert "Idempotent-Replayed" not in fixed
    assert Order.objects.filter(owner=user).count() == 1


def test_a_4xx_before_the_first_recovery_point_stores_nothing(auth_client, user):
    key = new_key()
    views.FAULTS["before_phases"] = raise_(ProblemError("Not now."))
    assert_problem(post(auth_client, key), 400, "bad_request")
    assert not IdempotencyRecord.objects.filter(principal=user).exists()
    views.FAULTS.clear()
    assert post(auth_client, key).status_code == 201


class PaymentDeclinedError(ProblemError):
    status = 402
    code = "payment_declined"
    title = "Payment declined"


def test_a_4xx_after_execution_began_is_stored_and_replayed(auth_client, user):
    key = new_key()
    views.FAULTS["after_order_created"] = raise_(PaymentDeclinedError())
    first = post(auth_client, key)
    assert_problem(first, 402, "payment_declined")
    views.FAULTS.clear()

    replay = post(auth_client, key)
    assert replay.status_code == 402
    assert replay["Idempotent-Replayed"] == "true"
    assert replay["Content-Type"] == "application/problem+json"
    assert replay.content == first.content
    assert Order.objects.filter(owner=user).count() == 1
    assert not views.AUTHORIZATIONS


# --- Crashes between phases and resumption --------------------------------------------------------
@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(RuntimeError("process fault"), id="unhandled-exception-500"),
        pytest.param(DependencyUnavailableError("payments", retry_after_s=1), id="503-response"),
    ],
)
def test_failure_after_phase_1_resumes_from_the_recovery_point(user, failure):
    client = client_for(user)
    client.raise_request_exception = False
    key = new_key()
    views.FAULTS["after_order_created"] = raise_(failure)

    failed = post(client, key)
    assert failed.status_code >= 500
    record = IdempotencyRecord.objects.get(principal=user, key=key)
    assert record.recovery_point == "order_created"
    assert record.locked_at is None  # released at once: the retry need not wait
    assert record.response_status is None  # 5xx answers are never stored
    order = Order.objects.get(owner=user)
    assert record.resource_id == str(order.id)
    assert order.status == "pending"

    views.FAULTS.clear()
    before = requests_total("resumed")
    retried = post(client, key)
    assert retried.status_code == 201, retried.content
    assert "Idempotent-Replayed" not in retried
    assert retried.json()["id"] == str(order.id)  # continued with the phase-1 order
    assert retried.json()["status"] == "paid"
    assert requests_total("resumed") == before + 1
    assert Order.objects.filter(owner=user).count() == 1
    assert len(authorizations_for(order.id)) == 1
    record.refresh_from_db()
    assert (record.recovery_point, record.attempts) == ("finished", 2)
    assert post(client, key)["Idempotent-Replayed"] == "true"


def test_crash_after_phase_2_does_not_authorise_twice(user):
    client = client_for(user)
    client.raise_request_exception = False
    key = new_key()
    views.FAULTS["after_payment_authorized"] = raise_(RuntimeError("died after phase 2"))
    assert post(client, key).status_code == 500
    record = IdempotencyRecord.objects.get(principal=user, key=key)
    assert record.recovery_point == "payment_authorized"

    views.FAULTS.clear()
    retried = post(client, key)
    assert retried.status_code == 201
    assert retried.json()["status"] == "paid"
    assert len(authorizations_for(retried.json()["id"])) == 1
    assert Order.objects.filter(owner=user).count() == 1


def test_a_5xx_before_any_recovery_point_keeps_the_key_for_the_same_body(user):
    client = client_for(user)
    client.raise_request_exception = False
    key = new_key()
    views.FAULTS["before_phases"] = raise_(RuntimeError("boom"))
    assert post(client, key).status_code == 500
    record = IdempotencyRecord.objects.get(principal=user, key=key)
    assert (record.recovery_point, record.locked_at) == ("started", None)
    # The key stays bound to its payload (Stripe), and the same request runs again.
    assert_problem(post(client, key, body={**BODY, "amount": 2}), 422)
    views.FAULTS.clear()
    assert post(client, key).status_code == 201
    assert Order.objects.filter(owner=user).count() == 1


def test_a_worker_timeout_system_exit_releases_the_lock_at_once(user):
    """gunicorn's worker timeout raises SystemExit in the request thread."""
    client = client_for(user)
    key = new_key()
    views.FAULTS["after_order_created"] = raise_(SystemExit(1))
    with pytest.raises(SystemExit):
        post(client, key)
    record = IdempotencyRecord.objects.get(principal=user, key=key)
    assert (record.recovery_point, record.locked_at) == ("order_created", None)
    views.FAULTS.clear()
    assert post(client, key).status_code == 201
    assert Order.objects.filter(owner=user).count() == 1


def test_a_held_lock_is_409_until_it_expires_then_taken_over(user, settings):
    """A process killed mid-request (SIGKILL: no code runs) leaves its lock behind."""
    client = client_for(user)
    client.raise_request_exception = False
    clock = FakeClock()
    key = new_key()
    with override_clock(clock):
        views.FAULTS["after_order_created"] = raise_(RuntimeError("about to be killed"))
        post(client, key)
        views.FAULTS.clear()
        # The state a killed process leaves: lock held by a token nobody has any more.
        IdempotencyRecord.objects.filter(principal=user, key=key).update(
            locked_at=clock(), lock_token=uuid.uuid4()
        )

        clock.advance(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT_S - 1)
        before = requests_total("in_flight_conflict")
        conflict = post(client, key)
        assert_problem(conflict, 409, "idempotency_request_in_flight")
        assert conflict["Retry-After"] == "1"
        assert requests_total("in_flight_conflict") == before + 1
        assert Order.objects.filter(owner=user).count() == 1

        clock.advance(seconds=2)  # the lock is now older than the timeout
        taken_over = post(client, key)
    assert taken_over.status_code == 201, taken_over.content
    assert taken_over.json()["status"] == "paid"
    assert Order.objects.filter(owner=user).count() == 1
    assert len(authorizations_for(taken_over.json()["id"])) == 1


def test_retry_after_never_points_past_the_lock_expiry(user, settings):
    settings.IDEMPOTENCY_CONFLICT_RETRY_AFTER_S = 30
    client = client_for(user)
    key = new_key()
    clock = FakeClock()
    with override_clock(clock):
        assert post(client, key).status_code == 201
        IdempotencyRecord.objects.filter(principal=user, key=key).update(
            recovery_point="order_created", locked_at=clock(), lock_token=uuid.uuid4()
        )
        clock.advance(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT_S - 5)
        assert post(client, key)["Retry-After"] == "5"


# --- Context API --------------------------------------------------------------------------
def test_advance_refuses_reserved_points_and_fails_once_the_lock_is_lost(user):
    clock = FakeClock()
    claim = claims.Claim(
        principal_id=user.pk,
        key=new_key(),
        scope="tests.ctx",
        method="POST",
        path="/x",
        fingerprint="f" * 64,
    )
    with override_clock(clock):
        outcome, record, token = claims.claim_record(claim)
        ctx = store.IdempotencyContext(record, lock_token=token, outcome=outcome)
        for reserved in ("started", "finished", "", "x" * 65):
            with pytest.raises(ValueError, match="recovery point"):
                ctx.advance(reserved)
        ctx.advance("step_one", resource_id=42)
        assert (ctx.recovery_point, ctx.resource_id) == ("step_one", "42")

        # Another attempt takes the expired lock over; our next advance must fail and
        # roll back the phase it belongs to.
        clock.advance(seconds=3600)
        assert claims.claim_record(claim)[0] == "resumed"

        def phase_two() -> None:
            with transaction.atomic():
                Order.objects.create(owner=user, currency="EUR", total_amount=1)
                ctx.advance("step_two")

        with pytest.raises(IdempotencyLockLostError):
            phase_two()
    assert not Order.objects.filter(owner=user).exists()
    assert IdempotencyRecord.objects.get(pk=record.pk).recovery_point == "step_one"


def test_downstream_key_is_deterministic_and_distinct_per_resource_and_step():
    order_a, order_b = uuid.uuid4(), uuid.uuid4()
    assert downstream_key("order", order_a) == downstream_key("order", order_a)
    assert downstream_key("order", order_a) == f"order-{order_a}"  # what payments has seen
    assert downstream_key("order", order_a) != downstream_key("order", order_b)
    assert downstream_key("order", order_a) != downstream_key("refund", order_a)
    assert downstream_key("order", order_a, "capture") == f"order-{order_a}-capture"
    assert downstream_key("order", order_a, "capture") != downstream_key("order", order_a)
    with pytest.raises(ValueError, match="namespace"):
        downstream_key("", order_a)


# --- Logs and the schema --------------------------------------------------------------------------
def test_each_decision_is_logged_with_its_outcome(auth_client, caplog):
    key = new_key()
    with caplog.at_level(logging.INFO, logger="resilience.idempotency"):
        post(auth_client, key)
        post(auth_client, key)
    decisions = [r for r in caplog.records if r.getMessage() == "idempotency decision"]
    assert [r.outcome for r in decisions] == ["first", "replay"]
    assert all(r.idempotency_key == key and r.idempotency_scope == views.SCOPE for r in decisions)
    results = [r for r in caplog.records if r.getMessage() == "idempotency result"]
    assert [r.result for r in results] == ["stored"]


def test_the_schema_documents_the_header_and_the_retention(settings):
    schema = SchemaGenerator(urlconf=URLS).get_schema(request=None, public=True)
    operation = schema["paths"]["/test/idem/orders"]["post"]
    (parameter,) = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
    assert parameter["in"] == "header"
    assert parameter.get("required", False) is False
    assert f"{settings.IDEMPOTENCY_RETENTION_S // 3600} hours" in parameter["description"]
    required = schema["paths"]["/test/idem/required"]["post"]["parameters"]
    assert [p["required"] for p in required if p["name"] == "Idempotency-Key"] == [True]
