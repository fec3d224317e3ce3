"""refunds-payments-503: refunds asked while payments fails them, clients retrying with the
same keys (issue 14).

Setup (``prepare``): users of the scenario's own, each with a paid order. During the fault
(``during_fault``): each order gets a few refunds, each refund sent as several copies at
once with one ``Idempotency-Key`` (a client unsure its first request left) and retried
with that key like a good client (``Retry-After``, jittered) until a final answer. After
the heal every accepted key is sent once more. The checks:

* no refund lost: every key answered 201/202 names a refund the order lists;
* none applied twice: one refund per key (the late retry is a replay of it), the order
  lists no refund beyond its keys, and the provider refunded each at most once;
* every pending refund completed: the worker's sweep makes every 202 ``pending`` refund
  ``succeeded`` once payments is back (bounded wait).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chaos.scenarios.base import Check
from chaos.scenarios.client import Answer, ChaosError, request
from chaos.scenarios.traffic import ORDER, RETRYABLE, User, make_users

if TYPE_CHECKING:
    from chaos.scenarios.runner import RunContext

USERS = 8
REFUNDS_PER_ORDER = 2
REFUND_AMOUNT = 500  # two of them fit in an order of the traffic's 1999
COPIES = 2  # each refund sent this many times at once, with one key
CLIENT_RETRIES = 3
RETRY_AFTER_CAP_S = 2.0
PAID_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 90.0
STATE = "refunds"


@dataclass
class RefundKey:
    """What the clients saw for one logical refund (one Idempotency-Key)."""

    user: int
    order_id: str
    answers: list[dict[str, Any]] = field(default_factory=list)

    def refund_ids(self) -> set[str]:
        return {a["id"] for a in self.answers if a["status"] in (200, 201, 202) and a["id"]}


@dataclass
class RefundRun:
    users: list[User]
    orders: list[tuple[int, str]]  # (user index, paid order id)
    keys: dict[str, RefundKey] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=random.Random)
    final: dict[str, Any] | None = None  # the settled state, fetched once for all checks


def _run(ctx: RunContext) -> RefundRun | None:
    return ctx.scenario_state.get(STATE)


def _post(ctx: RunContext, user: User, order_id: str, key: str) -> Answer:
    return request(
        "POST",
        f"{ctx.endpoints.base_url}/api/v1/orders/{order_id}/refunds",
        body={"amount": REFUND_AMOUNT, "reason": "chaos"},
        headers={**user.auth, "Idempotency-Key": key},
        source_ip=user.source_ip,
    )


def _paid_order(ctx: RunContext, user: User) -> str | None:
    """Place an order and wait until it is paid (the worker settles a deferred one)."""
    base = ctx.endpoints.base_url
    key = f"refund-order-{uuid.uuid4()}"
    deadline = time.monotonic() + PAID_TIMEOUT_S
    answer = None
    while time.monotonic() < deadline:
        answer = request(
            "POST",
            f"{base}/api/v1/orders",
            body=ORDER,
            headers={**user.auth, "Idempotency-Key": key},
            source_ip=user.source_ip,
        )
        if answer.status == 201:
            break
        time.sleep(0.5)
    if answer is None or answer.status != 201:
        return None
    order_id = str(answer.body["id"])
    while not (answer.status in {200, 201} and answer.body.get("status") == "paid"):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)  # the worker's sweep settles a deferred order
        answer = request("GET", f"{base}/api/v1/orders/{order_id}", headers=user.auth)
    return order_id


def prepare(ctx: RunContext) -> None:
    """Users of the scenario's own, each with one paid order to refund during the fault."""
    users = make_users(ctx.endpoints.base_url, USERS)
    orders = []
    for index, user in enumerate(users):
        order_id = _paid_order(ctx, user)
        if order_id is None:
            ctx.config["refunds_setup"] = f"no paid order for user {index} within the timeout"
            return
        orders.append((index, order_id))
    run = RefundRun(users, orders, rng=random.Random(ctx.config.get("seed")))
    ctx.scenario_state[STATE] = run
    ctx.config["refunds_setup"] = "ok"


def _refund_with_retries(ctx: RunContext, run: RefundRun, key: str) -> None:
    """One copy of a refund: retried with its key until a final answer, as a client does."""
    record = run.keys[key]
    user = run.users[record.user]
    for attempt in range(1, CLIENT_RETRIES + 2):
        answer = _post(ctx, user, record.order_id, key)
        body = answer.body if isinstance(answer.body, dict) else {}
        with run.lock:
            record.answers.append(
                {
                    "t": time.monotonic(),
                    "phase": "fault",
                    "status": answer.status,
                    "id": str(body["id"]) if answer.status < 300 and "id" in body else None,
                    "refund_status": body.get("status") if answer.status < 300 else None,
                    "code": body.get("code") if answer.status >= 400 else None,
                    "replayed": answer.headers.get("idempotent-replayed") == "true",
                }
            )
            wait = min(float(answer.retry_after or 0.5), RETRY_AFTER_CAP_S) * run.rng.uniform(
                0.5, 1.0
            )
        if answer.status not in RETRYABLE or attempt > CLIENT_RETRIES:
            return
        time.sleep(wait)  # the client's backoff, honouring Retry-After


def during_fault(ctx: RunContext) -> None:
    """Refunds of every prepared order, each as concurrent copies with one key."""
    run = _run(ctx)
    if run is None:
        return
    jobs = []
    for user, order_id in run.orders:
        for _ in range(REFUNDS_PER_ORDER):
            key = f"chaos-refund-{uuid.uuid4()}"
            run.keys[key] = RefundKey(user, order_id)
            jobs += [key] * COPIES
    # A few clients at a time: the refunds must not crowd out the orders the run measures.
    with ThreadPoolExecutor(max_workers=2 * COPIES, thread_name_prefix="chaos-refunds") as pool:
        list(pool.map(lambda key: _refund_with_retries(ctx, run, key), jobs))


# -- after the heal -------------------------------------------------------------------------
def _list_refunds(ctx: RunContext, run: RefundRun, user: int, order_id: str) -> list[dict] | None:
    for _ in range(5):
        answer = request(
            "GET",
            f"{ctx.endpoints.base_url}/api/v1/orders/{order_id}/refunds?page_size=100",
            headers=run.users[user].auth,
        )
        if answer.status == 200:
            return list(answer.body["results"])
        time.sleep(0.5)
    return None


def _final(ctx: RunContext) -> dict[str, Any]:
    """Once for all checks: retry every accepted key, wait for the pending ones, fetch all."""
    run = _run(ctx)
    if run.final is not None:
        return run.final
    accepted = {k: r for k, r in run.keys.items() if r.refund_ids()}
    late = {}
    for key, record in accepted.items():  # a client retrying once more, after the heal
        answer = _post(ctx, run.users[record.user], record.order_id, key)
        late[key] = answer
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    by_order: dict[str, list[dict] | None] = {}
    while True:
        by_order = {oid: _list_refunds(ctx, run, user, oid) for user, oid in run.orders}
        pending = sum(1 for rs in by_order.values() for r in rs or [] if r["status"] == "pending")
        if not pending or not ctx.endpoints.has_worker or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    provider = None
    try:
        answer = request("GET", f"{ctx.endpoints.simulator('payments')}/refunds", timeout=10)
        if answer.status == 200:
            provider = answer.body["refunds"]
    except ChaosError:
        provider = None
    run.final = {"late": late, "by_order": by_order, "provider": provider, "pending": pending}
    return run.final


def _not_ready(ctx: RunContext, name: str) -> Check | None:
    setup = ctx.config.get("refunds_setup")
    if setup != "ok" or _run(ctx) is None:
        return Check(name, False, f"refunds not set up: {setup}")
    return None


def no_refund_lost(ctx: RunContext) -> Check:
    name = "no refund lost"
    if (failed := _not_ready(ctx, name)) is not None:
        return failed
    run, final = _run(ctx), _final(ctx)
    listed = {r["id"] for rs in final["by_order"].values() for r in rs or []}
    answered = {i for record in run.keys.values() for i in record.refund_ids()}
    statuses = Counter(
        f"{a['status']} {a['refund_status'] or a['code'] or ''}".strip()
        for record in run.keys.values()
        for a in record.answers
    )
    missing = answered - listed
    return Check(
        name,
        bool(answered) and not missing and None not in final["by_order"].values(),
        f"{len(run.keys)} refund keys, {len(answered)} refunds accepted "
        f"(answers {dict(statuses)}), {len(missing)} of them not listed by their order after",
    )


def none_applied_twice(ctx: RunContext) -> Check:
    name = "no refund applied twice"
    if (failed := _not_ready(ctx, name)) is not None:
        return failed
    run, final = _run(ctx), _final(ctx)
    several = [k for k, r in run.keys.items() if len(r.refund_ids()) > 1]
    late_wrong = [
        key
        for key, answer in final["late"].items()
        if not (
            answer.status in (201, 202)
            and answer.headers.get("idempotent-replayed") == "true"
            and isinstance(answer.body, dict)
            and {str(answer.body.get("id"))} == run.keys[key].refund_ids()
        )
    ]
    accepted_per_order = Counter(r.order_id for r in run.keys.values() if r.refund_ids())
    listed_per_order = {oid: len(rs or []) for oid, rs in final["by_order"].items()}
    extra = {oid: n for oid, n in listed_per_order.items() if n > accepted_per_order[oid]}
    ours = {oid for _, oid in run.orders}
    provider = final["provider"]
    succeeded = Counter(
        oid for oid, rs in final["by_order"].items() for r in rs or [] if r["status"] == "succeeded"
    )
    at_provider = Counter(r["order_id"] for r in provider or [] if r["order_id"] in ours)
    provider_extra = {oid: n for oid, n in at_provider.items() if n > succeeded[oid]}
    ok = not several and not late_wrong and not extra and not provider_extra
    return Check(
        name,
        ok and provider is not None,
        f"{len(several)} keys with several refunds; {len(late_wrong)} of "
        f"{len(final['late'])} late retries not a replay of their refund; "
        f"{len(extra)} orders listing more refunds than keys; provider refunds "
        f"{sum(at_provider.values())} for {sum(succeeded.values())} succeeded "
        f"({len(provider_extra)} orders refunded more at the provider)",
    )


def pending_completed(ctx: RunContext) -> Check:
    name = "every pending refund completed after the heal"
    if (failed := _not_ready(ctx, name)) is not None:
        return failed
    if not ctx.endpoints.has_worker:
        return Check(name, None, "no worker on this stack: not checked")
    run, final = _run(ctx), _final(ctx)
    answered_pending = {
        a["id"]
        for record in run.keys.values()
        for a in record.answers
        if a["status"] == 202 and a["id"]
    }
    statuses = Counter(r["status"] for rs in final["by_order"].values() for r in rs or [])
    return Check(
        name,
        final["pending"] == 0 and statuses.get("failed", 0) == 0,
        f"{len(answered_pending)} refunds answered 202 pending during the fault; "
        f"after the heal: {dict(statuses)}",
    )


CHECKS = (pending_completed, no_refund_lost, none_applied_twice)
