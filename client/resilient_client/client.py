"""The client: typed methods over one careful ``_call``.

Per logical operation (one method call), the client

- generates one ``Idempotency-Key`` for operations that take one and sends the same key
  on every retry, so the server runs the operation once;
- retries only what may be retried: a refusal before any work (429, 503
  ``rate_limiter_unavailable``, a connection that was never made, 409
  ``idempotency_request_in_flight``), and other 503/502/504 and timeouts only when the
  request is safe to repeat (a read, or keyed);
- sleeps a full-jitter backoff between attempts, or at least ``Retry-After`` when the
  server gave one;
- spends retries from a budget shared by all calls of the client (20% of first attempts
  by default), so a dead server sees about 1.2 requests per call, not ``max_attempts``;
- never outlives ``deadline_s``: each attempt's timeouts are cut to the time left, and a
  wait that would end after the deadline is not started;
- reads ``RateLimit`` and, once a policy has nothing left, waits for it (or gives up at
  once with :class:`RateLimitedError` if the wait would pass the deadline) rather than
  sending a request it knows will be refused.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
from urllib3.exceptions import NewConnectionError

from resilient_client.errors import (
    ApiError,
    ClientError,
    DeadlineExceededError,
    RateLimitedError,
    TransportError,
    error_for,
)
from resilient_client.models import (
    Delivery,
    Order,
    OrderItem,
    Page,
    Token,
    User,
    WebhookEndpoint,
)
from resilient_client.ratelimit import RateLimitState
from resilient_client.retry import RetryBudget, RetryPolicy

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})  # DELETE: idempotent
_REFUSED_BEFORE_WORK = frozenset({"rate_limiter_unavailable", "idempotency_request_in_flight"})
_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass
class Attempt:
    """One request of a logical call, as sent and answered."""

    operation: str
    number: int
    idempotency_key: str | None
    started_s: float  # on the client's monotonic clock
    status: int | None = None  # None: no answer (transport error)
    code: str | None = None
    retry_after: float | None = None
    elapsed_s: float = 0.0


@dataclass
class Trace:
    """Every attempt of one logical call, and what the client decided."""

    operation: str
    idempotency_key: str | None
    attempts: list[Attempt] = field(default_factory=list)
    waited_for_rate_limit_s: float = 0.0
    outcome: str = "pending"  # ok, error, deadline, budget, rate_limited_locally


class Client:
    """A client of the resilient backend API (``base_url`` like ``http://127.0.0.1:8000``)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        session: requests.Session | None = None,
        on_attempt: Callable[[Attempt], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retry = retry or RetryPolicy()
        self.budget = budget or RetryBudget()
        self.session = session or requests.Session()
        self.ratelimits = RateLimitState(clock)
        self.on_attempt = on_attempt
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 - jitter, not cryptography
        self._local = threading.local()

    @property
    def last_trace(self) -> Trace | None:
        """The trace of the last call made by this thread."""
        return getattr(self._local, "trace", None)

    # --- Accounts -------------------------------------------------------------------------
    def signup(self, email: str, password: str) -> User:
        data = self._call(
            "auth_signup_create",
            "POST",
            "/api/v1/auth/signup",
            body={"email": email, "password": password},
            expect=(201,),
        )
        return User.from_json(data)

    def login(self, email: str, password: str) -> Token:
        """Exchange credentials for a token; later calls of this client send it."""
        data = self._call(
            "auth_login_create",
            "POST",
            "/api/v1/auth/login",
            body={"email": email, "password": password},
            expect=(200,),
        )
        token = Token.from_json(data)
        self.token = token.token
        return token

    def logout(self) -> None:
        self._call("auth_logout_create", "POST", "/api/v1/auth/logout", expect=(204,))
        self.token = None

    def me(self) -> User:
        return User.from_json(self._call("auth_me_retrieve", "GET", "/api/v1/auth/me"))

    # --- Orders ---------------------------------------------------------------------------
    def create_order(
        self,
        currency: str,
        items: Iterable[OrderItem | dict[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> Order:
        """Place an order once, however many retries it takes (one key for all of them)."""
        body = {
            "currency": currency,
            "items": [item.to_json() if isinstance(item, OrderItem) else item for item in items],
        }
        data = self._call(
            "orders_create",
            "POST",
            "/api/v1/orders",
            body=body,
            expect=(201,),
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        return Order.from_json(data)

    def list_orders(self, *, page: int | None = None, page_size: int | None = None) -> Page[Order]:
        data = self._call(
            "orders_list", "GET", "/api/v1/orders", params=_params(page=page, page_size=page_size)
        )
        return Page.from_json(data, Order.from_json)

    def get_order(self, order_id: str) -> Order:
        return Order.from_json(self._call("orders_retrieve", "GET", f"/api/v1/orders/{order_id}"))

    def order_report(self, *, days: int = 30) -> dict[str, Any]:
        return self._call(
            "v1_orders_report_retrieve", "GET", "/api/v1/orders/report", params={"days": days}
        )

    # --- Webhooks -------------------------------------------------------------------------
    def create_webhook_endpoint(self, url: str, event_types: Iterable[str]) -> WebhookEndpoint:
        data = self._call(
            "webhook_endpoints_create",
            "POST",
            "/api/v1/webhooks/endpoints",
            body={"url": url, "event_types": list(event_types)},
            expect=(201,),
        )
        return WebhookEndpoint.from_json(data)

    def list_webhook_endpoints(
        self, *, page: int | None = None, page_size: int | None = None
    ) -> Page[WebhookEndpoint]:
        data = self._call(
            "webhook_endpoints_list",
            "GET",
            "/api/v1/webhooks/endpoints",
            params=_params(page=page, page_size=page_size),
        )
        return Page.from_json(data, WebhookEndpoint.from_json)

    def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        path = f"/api/v1/webhooks/endpoints/{endpoint_id}"
        return WebhookEndpoint.from_json(self._call("v1_webhooks_endpoints_retrieve", "GET", path))

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        path = f"/api/v1/webhooks/endpoints/{endpoint_id}"
        self._call("v1_webhooks_endpoints_destroy", "DELETE", path, expect=(204,))

    def ping_webhook_endpoint(self, endpoint_id: str) -> Delivery:
        path = f"/api/v1/webhooks/endpoints/{endpoint_id}/ping"
        return Delivery.from_json(
            self._call("v1_webhooks_endpoints_ping_create", "POST", path, expect=(202,))
        )

    def list_webhook_deliveries(
        self,
        *,
        status: str | None = None,
        endpoint: str | None = None,
        page: int | None = None,
        page_size: int | None = None,
    ) -> Page[Delivery]:
        params = _params(status=status, endpoint=endpoint, page=page, page_size=page_size)
        data = self._call(
            "webhook_deliveries_list", "GET", "/api/v1/webhooks/deliveries", params=params
        )
        return Page.from_json(data, Delivery.from_json)

    # --- The one careful call -------------------------------------------------------------
    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        expect: tuple[int, ...] = (200,),
        idempotency_key: str | None = None,
    ) -> Any:
        deadline = self._clock() + self.retry.deadline_s
        trace = Trace(operation, idempotency_key)
        self._local.trace = trace
        repeatable = method in SAFE_METHODS or idempotency_key is not None
        last_error: ClientError | None = None
        for number in range(1, self.retry.max_attempts + 1):
            self._wait_for_room(operation, deadline, trace)
            remaining = deadline - self._clock()
            if remaining <= 0:
                trace.outcome = "deadline"
                raise DeadlineExceededError(f"{operation}: deadline passed", last_error=last_error)
            if number == 1:
                self.budget.record_first_attempt()
            attempt = Attempt(operation, number, idempotency_key, self._clock())
            trace.attempts.append(attempt)
            try:
                result = self._send(method, path, body, params, idempotency_key, deadline, attempt)
            except ClientError as error:
                last_error = error
            else:
                status, headers, payload = result
                self.ratelimits.observe(operation, headers)
                if status in expect:
                    self._notify(attempt)
                    trace.outcome = "ok"
                    return payload
                last_error = error_for(
                    status, payload if isinstance(payload, dict) else {}, _retry_after(headers)
                )
                attempt.code = last_error.code
                attempt.retry_after = last_error.retry_after
            self._notify(attempt)
            if isinstance(last_error, DeadlineExceededError):
                trace.outcome = "deadline"
                raise last_error
            if not _retryable(last_error, repeatable) or number == self.retry.max_attempts:
                trace.outcome = "error"
                raise last_error
            delay = self.retry.backoff_s(
                number, getattr(last_error, "retry_after", None), self._rng
            )
            if self._clock() + delay >= deadline:
                trace.outcome = "deadline"
                raise DeadlineExceededError(
                    f"{operation}: the next retry would start after the deadline",
                    last_error=last_error,
                )
            if not self.budget.try_spend():
                trace.outcome = "budget"
                raise last_error
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_for_room(self, operation: str, deadline: float, trace: Trace) -> None:
        wait = self.ratelimits.wait_s(operation)
        if wait <= 0:
            return
        if self._clock() + wait >= deadline:
            trace.outcome = "rate_limited_locally"
            raise RateLimitedError(
                429,
                "rate_limited",
                f"{operation}: the server's RateLimit says no room for {wait:.1f} s, "
                "past this call's deadline; no request sent.",
                {"code": "rate_limited", "client_side": True},
                retry_after=wait,
            )
        trace.waited_for_rate_limit_s += wait
        self._sleep(wait)

    def _send(  # noqa: PLR0917 - private, called from one place
        self,
        method: str,
        path: str,
        body: Any,
        params: dict[str, Any] | None,
        idempotency_key: str | None,
        deadline: float,
        attempt: Attempt,
    ) -> tuple[int, Any, Any]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        remaining = max(0.001, deadline - self._clock())
        timeout = (
            min(self.retry.connect_timeout_s, remaining),
            min(self.retry.attempt_timeout_s, remaining),
        )
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                json=body,
                params=params,
                headers=headers,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
            )
        except requests.ConnectTimeout as exc:
            raise TransportError(f"connect timeout: {exc}", sent=False) from exc
        except requests.Timeout as exc:
            raise self._timeout(exc, deadline) from exc
        except requests.ConnectionError as exc:
            reason = getattr(exc.args[0], "reason", None) if exc.args else None
            sent = not isinstance(reason, NewConnectionError)
            raise TransportError(f"connection failed: {exc}", sent=sent) from exc
        finally:
            attempt.elapsed_s = self._clock() - attempt.started_s
        with response:
            attempt.status = response.status_code
            content = self._read(response, deadline)
        attempt.elapsed_s = self._clock() - attempt.started_s
        payload: Any = None
        if content:
            try:
                payload = json.loads(content)
            except ValueError:
                payload = {"detail": content[:200].decode(errors="replace")}
        return response.status_code, response.headers, payload

    def _read(self, response: requests.Response, deadline: float) -> bytes:
        """The body, but never past the deadline (a server may drip bytes)."""
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(8192):
                chunks.append(chunk)
                size += len(chunk)
                if self._clock() >= deadline:
                    raise DeadlineExceededError("deadline passed while reading the answer")
                if size > _MAX_BODY_BYTES:
                    raise TransportError("answer too large", sent=True)
        except requests.RequestException as exc:
            raise TransportError(f"reading the answer failed: {exc}", sent=True) from exc
        return b"".join(chunks)

    def _timeout(self, exc: Exception, deadline: float) -> ClientError:
        if self._clock() >= deadline - 0.001:
            return DeadlineExceededError(f"deadline passed waiting for the answer: {exc}")
        return TransportError(f"read timeout: {exc}", sent=True)

    def _notify(self, attempt: Attempt) -> None:
        if self.on_attempt is not None:
            self.on_attempt(attempt)


def _retryable(error: ClientError, repeatable: bool) -> bool:
    """Whether another attempt may help and cannot do harm."""
    if isinstance(error, TransportError):
        return repeatable or not error.sent
    if not isinstance(error, ApiError):
        return False
    if error.status == 429 or error.code in _REFUSED_BEFORE_WORK:
        return True
    return repeatable and error.status in (502, 503, 504)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: this API never sends one


def _params(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}
