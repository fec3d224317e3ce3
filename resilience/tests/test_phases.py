"""Declared phases (resilience.phases) on the real Postgres: run, record, resume, finish."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from orders.models import Order, OrderStatus
from resilience.idempotency import (
    STARTED,
    IdempotencyLockLostError,
    StoredResponse,
    claims,
    downstream_key,
    store,
)
from resilience.models import IdempotencyRecord
from resilience.phases import Operation, atomic, call

pytestmark = pytest.mark.django_db


class Died(Exception):
    """The process "died" in the middle of an operation."""


def operation(calls: list, *, die_in: str = "") -> Operation:
    """Create an order, "charge" it outside (recording the key sent), mark it paid."""

    def create(progress):
        calls.append("create")
        return Order.objects.create(
            owner=progress.inputs["owner"], currency="EUR", total_amount=progress.inputs["amount"]
        )

    def charge(progress):
        calls.append(("charge", progress.downstream_key()))
        if die_in == "charge":
            raise Died
        return "ch_1"

    def settle(progress):
        calls.append(("settle", progress.result))
        Order.objects.filter(id=progress.resource.id).update(status=OrderStatus.PAID)
        if die_in == "settle":
            raise Died
        return Order.objects.get(id=progress.resource.id)

    return Operation(
        "order",
        load=lambda order_id: Order.objects.get(id=order_id),
        phases=[atomic("created", create), call("charge", charge), atomic("paid", settle)],
    )


def claimed(user, key: str):
    claim = claims.Claim(
        principal_id=user.pk, key=key, scope="tests.phases", method="POST", path="/x",
        fingerprint="f" * 64,
    )  # fmt: skip
    outcome, record, token = claims.claim_record(claim)
    return store.IdempotencyContext(record, lock_token=token, outcome=outcome)


def respond(order) -> StoredResponse:
    return StoredResponse.json(201, {"id": str(order.id), "status": order.status})


def test_without_a_key_every_phase_runs_and_nothing_is_recorded(user):
    calls: list = []
    order = operation(calls).run(owner=user, amount=100)
    assert order.status == OrderStatus.PAID
    assert calls == ["create", ("charge", f"order-{order.id}"), ("settle", "ch_1")]
    assert not IdempotencyRecord.objects.exists()


def test_a_crash_resumes_after_the_last_recovery_point_with_the_same_downstream_key(user):
    key, calls = str(uuid.uuid4()), []
    ctx = claimed(user, key)
    with pytest.raises(Died):
        operation(calls, die_in="charge").run(recovery=ctx, respond=respond, owner=user, amount=5)
    ctx._release()
    record = IdempotencyRecord.objects.get(pk=ctx.record_id)
    order = Order.objects.get()
    assert (record.recovery_point, record.resource_id) == ("created", str(order.id))

    retry = claimed(user, key)
    assert retry.outcome == "resumed"
    calls.clear()
    answer = operation(calls).run(recovery=retry, respond=respond)  # no inputs needed
    assert calls == [("charge", downstream_key("order", order.id)), ("settle", "ch_1")]
    assert Order.objects.count() == 1
    record.refresh_from_db()
    # The last phase stored the answer with its work: no recovery point of its own.
    assert (record.recovery_point, record.response_status) == ("finished", 201)
    assert record.response_body == answer.body
    assert (record.locked_at, record.lock_token) == (None, None)


def test_a_crash_in_the_last_phase_rolls_back_its_work_and_its_answer(user):
    key, calls = str(uuid.uuid4()), []
    ctx = claimed(user, key)
    with pytest.raises(Died):
        operation(calls, die_in="settle").run(recovery=ctx, respond=respond, owner=user, amount=5)
    record = IdempotencyRecord.objects.get(pk=ctx.record_id)
    assert record.recovery_point == "created"
    assert Order.objects.get().status == OrderStatus.PENDING  # phase 3 rolled back


def test_the_completer_leaves_a_record_that_never_got_past_started(user):
    ctx = claimed(user, str(uuid.uuid4()))
    assert operation([]).completer(respond)(ctx) is None
    assert ctx.recovery_point == STARTED


def test_a_record_at_a_former_point_name_resumes_after_that_phase(user):
    calls: list = []
    base = operation(calls)
    renamed = Operation(
        base.namespace,
        load=base.load,
        phases=[atomic("order_created", base.phases[0].run, formerly=("created",)),
                *base.phases[1:]],
    )  # fmt: skip
    order = Order.objects.create(owner=user, currency="EUR", total_amount=1)
    ctx = claimed(user, str(uuid.uuid4()))
    ctx.advance("created", resource_id=order.id)
    renamed.run(recovery=ctx, respond=respond)
    assert "create" not in calls
    assert ctx.finished


def test_declarations_are_checked():
    def noop(progress):
        return None

    load = Order.objects.get
    with pytest.raises(ValueError, match="starts with an atomic phase"):
        Operation("x", load=load, phases=[call("c", noop), atomic("a", noop)])
    with pytest.raises(ValueError, match="unique and not reserved"):
        Operation("x", load=load, phases=[atomic("a", noop), atomic("a", noop)])
    with pytest.raises(ValueError, match="unique and not reserved"):
        Operation("x", load=load, phases=[atomic("finished", noop)])
    with pytest.raises(KeyError):
        Operation("x", load=load, phases=[atomic("a", noop)]).with_phase("b", noop)
    with pytest.raises(TypeError, match="must return the resource"):
        Operation("x", load=load, phases=[atomic("a", noop)]).run()


def test_a_5xx_answer_is_never_stored_by_the_last_phase(user):
    ctx = claimed(user, str(uuid.uuid4()))

    def make(progress):
        return Order.objects.create(owner=user, currency="EUR", total_amount=1)

    with pytest.raises(ValueError, match="never stored"):
        one_phase(make).run(recovery=ctx, respond=lambda _order: StoredResponse(503, "{}"))
    assert not Order.objects.exists()  # the phase rolled back with it
    assert ctx.recovery_point == STARTED


# --- The record's write travels with the phase's COMMIT (adr/0014) ----------------------------
def one_phase(make) -> Operation:
    return Operation("order", load=lambda pk: Order.objects.get(id=pk), phases=[atomic("a", make)])


@pytest.mark.django_db(transaction=True)
def test_a_write_sent_with_the_commit_commits_the_work_and_runs_on_commit_hooks(user):
    fired: list[int] = []

    def make(progress):
        transaction.on_commit(lambda: fired.append(1))
        return Order.objects.create(owner=user, currency="EUR", total_amount=1)

    ctx = claimed(user, str(uuid.uuid4()))
    with CaptureQueriesContext(connection) as captured:
        one_phase(make).run(recovery=ctx, respond=respond)
    assert any(q["sql"].endswith("; COMMIT") for q in captured.captured_queries)
    assert fired == [1]
    assert not connection.in_atomic_block
    record = IdempotencyRecord.objects.get(pk=ctx.record_id)
    assert (record.recovery_point, Order.objects.count()) == ("finished", 1)


@pytest.mark.django_db(transaction=True)
def test_a_lock_lost_before_the_commit_rolls_the_phase_back(user):
    ctx = claimed(user, str(uuid.uuid4()))
    # Another attempt took the expired lock over: the token on the record is not ours.
    IdempotencyRecord.objects.filter(pk=ctx.record_id).update(lock_token=uuid.uuid4())

    def make(progress):
        return Order.objects.create(owner=user, currency="EUR", total_amount=1)

    for respond_with in (respond, None):  # the last write with the answer, or a point
        with pytest.raises(IdempotencyLockLostError):
            one_phase(make).run(recovery=ctx, respond=respond_with)
        assert not connection.in_atomic_block
        assert not Order.objects.exists()  # the COMMIT after the failed check never ran
    assert IdempotencyRecord.objects.get(pk=ctx.record_id).recovery_point == STARTED
