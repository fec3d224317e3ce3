"""A fake external payment provider for tests and chaos experiments.

API port::

    POST /authorizations   {"order_id": str, "amount": int > 0 (minor units), "currency": "EUR"}
                           header Idempotency-Key required
                           201 new authorisation; 200 + Idempotent-Replayed: true for a replay
                           (same key, same body); 422 same key, different body; 400 bad input
    GET  /authorizations   {"authorizations": [...], "requests_by_key": {key: n}}
    POST /refunds          {"authorization_id": str, "order_id": str, "amount": int > 0,
                           "currency": "EUR"}, header Idempotency-Key required; the same
                           answers as /authorizations (201, 200 replay, 422, 400), and 422
                           ``refund_exceeds_authorization`` when this and the earlier
                           refunds of the authorisation exceed it (404 ``unknown_authorization``
                           for an authorisation it never made; currency must match)
    GET  /refunds          {"refunds": [...], "requests_by_key": {key: n}, "stats": {...}}
    GET  /stats            {"requests", "authorizations", "faulted", "by_status": {"201": n}}
                           of /authorizations (``refund_stats()``: the same for /refunds)
    GET  /healthz          200 {"status": "ok"}; obeys the latency, ``status`` and
                           ``error_rate`` switches (and ``down``), so a slow or failing
                           provider fails the app's recovery probe; not counted

Only ``POST /authorizations``, ``POST /refunds`` and the API port's ``/healthz`` are
faulted, by the same switches; every request to them is counted, faulted or not.
``fail_first_n`` is consumed by the two POST routes only (whichever comes first).
The control port serves ``/healthz``, ``/stats``, ``/authorizations``, ``/refunds`` and the shared
``/control/faults`` and ``/control/reset`` (see :class:`chaos._httpserver.ChaosService`).

Run it with ``python -m chaos.payments --host 127.0.0.1 --port 8101 --control-port 8102``.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chaos._httpserver import (
    ChaosService,
    HttpError,
    Request,
    Response,
    Routes,
    build_arg_parser,
    run_until_signalled,
)

MAX_IDEMPOTENCY_KEY_LENGTH = 255
_CURRENCY = re.compile("[A-Z]{3}")


@dataclass(frozen=True)
class _Stored:
    """An authorisation and the fingerprint of the request body that created it."""

    fingerprint: str
    authorization: dict[str, Any]


def _validate(body: dict[str, Any]) -> dict[str, Any]:
    """Return the authorisation fields of a request body, raising 400 when invalid."""
    order_id = body.get("order_id")
    amount = body.get("amount")
    currency = body.get("currency")
    if not isinstance(order_id, str) or not order_id:
        raise HttpError(400, "invalid_request", "order_id must be a non-empty string")
    # bool is an int subclass; `true` is not an amount.
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise HttpError(400, "invalid_request", "amount must be a positive integer (minor units)")
    if not (isinstance(currency, str) and _CURRENCY.fullmatch(currency)):
        raise HttpError(400, "invalid_request", "currency must be a 3-letter ISO 4217 code")
    return {"order_id": order_id, "amount": amount, "currency": currency}


@dataclass
class _RefundLedger:
    """Refunds by Idempotency-Key, the amount refunded per authorisation, and counters."""

    by_key: dict[str, _Stored] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    faulted: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    requests_by_key: Counter[str] = field(default_factory=Counter)


def _check_key(key: str | None) -> None:
    if not key:
        raise HttpError(400, "missing_idempotency_key", "the Idempotency-Key header is required")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise HttpError(400, "invalid_idempotency_key", "Idempotency-Key is too long")


def _validate_refund(body: dict[str, Any]) -> dict[str, Any]:
    """The refund fields of a request body, raising 400 when invalid."""
    authorization_id = body.get("authorization_id")
    if not isinstance(authorization_id, str) or not authorization_id:
        raise HttpError(400, "invalid_request", "authorization_id must be a non-empty string")
    return {"authorization_id": authorization_id, **_validate(body)}


class PaymentsService(ChaosService):
    """The fake payment provider: idempotent authorisations, counters and fault switches.

    ``start()`` returns the bound ``(api_port, control_port)``; port 0 picks a free one.
    ``seed`` makes ``error_rate`` and latency jitter reproducible.
    """

    name = "payments"
    fault_statuses = frozenset({429, 500, 503})

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        *,
        seed: int | None = None,
    ) -> None:
        self._by_key: dict[str, _Stored] = {}
        self._requests = 0
        self._faulted = 0
        self._by_status: Counter[int] = Counter()
        self._requests_by_key: Counter[str] = Counter()
        self._refunds = _RefundLedger()
        super().__init__(host, port, control_port, seed=seed)

    def api_routes(self) -> Routes:
        """``/authorizations`` (POST faultable, GET listing) and ``/stats``."""
        return {
            "/authorizations": {"POST": self._post_authorization, "GET": self._get_authorizations},
            "/refunds": {"POST": self._post_refund, "GET": self._get_refunds},
            "/stats": {"GET": self._get_stats},
            "/healthz": {"GET": self._get_healthz},
        }

    def control_routes(self) -> Routes:
        """The read-only views, reachable even while the API port is down."""
        return {
            "/authorizations": {"GET": self._get_authorizations},
            "/refunds": {"GET": self._get_refunds},
            "/stats": {"GET": self._get_stats},
        }

    def _reset_state(self) -> None:
        self._refunds = _RefundLedger()
        self._by_key.clear()
        self._requests = 0
        self._faulted = 0
        self._by_status.clear()
        self._requests_by_key.clear()

    # -- programmatic views ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: requests to POST /authorizations, authorisations created, faulted
        requests, and responses by status (string keys, as in the JSON)."""
        with self._lock:
            return {
                "requests": self._requests,
                "authorizations": len(self._by_key),
                "faulted": self._faulted,
                "by_status": {str(code): n for code, n in sorted(self._by_status.items())},
            }

    def authorizations(self) -> list[dict[str, Any]]:
        """Every authorisation created, oldest first."""
        with self._lock:
            return [dict(stored.authorization) for stored in self._by_key.values()]

    def requests_by_key(self) -> dict[str, int]:
        """How many POST /authorizations requests carried each Idempotency-Key."""
        with self._lock:
            return dict(self._requests_by_key)

    def refunds(self) -> list[dict[str, Any]]:
        """Every refund made, oldest first."""
        with self._lock:
            return [dict(stored.authorization) for stored in self._refunds.by_key.values()]

    def refund_requests_by_key(self) -> dict[str, int]:
        """How many POST /refunds requests carried each Idempotency-Key."""
        with self._lock:
            return dict(self._refunds.requests_by_key)

    def refund_stats(self) -> dict[str, Any]:
        """Counters of POST /refunds, as :meth:`stats` for /authorizations."""
        with self._lock:
            ledger = self._refunds
            return {
                "requests": ledger.requests,
                "refunds": len(ledger.by_key),
                "faulted": ledger.faulted,
                "by_status": {str(code): n for code, n in sorted(ledger.by_status.items())},
            }

    # -- routes ----------------------------------------------------------------------------

    def _get_healthz(self, _request: Request) -> Response:
        """Health as a probe sees it: slow when the provider is slow, failing when it fails."""
        faults = self.faults()
        delay_ms = faults["latency_ms"] + secrets.SystemRandom().uniform(
            0.0, faults["latency_jitter_ms"]
        )
        if delay_ms > 0:
            self._stopping.wait(delay_ms / 1000)
        status = faults["status"]
        rate = faults["error_rate"]
        if status is None and rate > 0 and secrets.SystemRandom().random() < rate:
            status = faults["error_status"]
        if status is not None:
            return Response(status, {"status": "failing", "service": self.name})
        return Response(200, {"status": "ok", "service": self.name})

    def _post_authorization(self, request: Request) -> Response:
        key = request.header("Idempotency-Key")
        with self._lock:
            self._requests += 1
            if key:
                self._requests_by_key[key] += 1
        response = self.inject_fault()
        faulted = response is not None
        if response is None:
            try:
                response = self._authorize(request, key)
            except HttpError as exc:
                response = exc.response()
        with self._lock:
            if faulted:
                self._faulted += 1
            self._by_status[response.status] += 1
        return response

    def _authorize(self, request: Request, key: str | None) -> Response:
        _check_key(key)
        body = request.json_object()
        fields = _validate(body)
        # Canonical JSON, so key order and whitespace do not make "the same body" differ.
        fingerprint = json.dumps(body, sort_keys=True, separators=(",", ":"))
        # One lock around look-up-and-create: concurrent requests with one key create one
        # authorisation, and every other request sees it as a replay.
        with self._lock:
            stored = self._by_key.get(key)
            if stored is None:
                authorization = {
                    "id": f"auth_{secrets.token_hex(12)}",
                    **fields,
                    "status": "authorized",
                    "created_at": datetime.now(UTC).isoformat(),
                }
                self._by_key[key] = _Stored(fingerprint, authorization)
                return Response(201, dict(authorization))
        if stored.fingerprint != fingerprint:
            raise HttpError(
                422, "idempotency_key_reused", "this Idempotency-Key was used with a different body"
            )
        return Response(200, dict(stored.authorization), {"Idempotent-Replayed": "true"})

    def _post_refund(self, request: Request) -> Response:
        key = request.header("Idempotency-Key")
        with self._lock:
            ledger = self._refunds
            ledger.requests += 1
            if key:
                ledger.requests_by_key[key] += 1
        response = self.inject_fault()
        faulted = response is not None
        if response is None:
            try:
                response = self._refund(request, key, ledger)
            except HttpError as exc:
                response = exc.response()
        with self._lock:
            if faulted:
                ledger.faulted += 1
            ledger.by_status[response.status] += 1
        return response

    def _refund(self, request: Request, key: str | None, ledger: _RefundLedger) -> Response:
        _check_key(key)
        body = request.json_object()
        fields = _validate_refund(body)
        fingerprint = json.dumps(body, sort_keys=True, separators=(",", ":"))
        # One lock around look-up, the amount check and create, as for authorisations: a
        # key refunds once, and concurrent refunds never exceed the authorisation.
        with self._lock:
            stored = ledger.by_key.get(key)
            if stored is None:
                authorization = next(
                    (
                        s.authorization
                        for s in self._by_key.values()
                        if s.authorization["id"] == fields["authorization_id"]
                    ),
                    None,
                )
                if authorization is None:
                    raise HttpError(404, "unknown_authorization", "no such authorization")
                if fields["currency"] != authorization["currency"]:
                    raise HttpError(400, "invalid_request", "currency differs from the charge")
                refunded = ledger.refunded.get(fields["authorization_id"], 0)
                if refunded + fields["amount"] > authorization["amount"]:
                    raise HttpError(
                        422,
                        "refund_exceeds_authorization",
                        f"{refunded} of {authorization['amount']} refunded already",
                    )
                refund = {
                    "id": f"re_{secrets.token_hex(12)}",
                    **fields,
                    "status": "succeeded",
                    "created_at": datetime.now(UTC).isoformat(),
                }
                ledger.refunded[fields["authorization_id"]] = refunded + fields["amount"]
                ledger.by_key[key] = _Stored(fingerprint, refund)
                return Response(201, dict(refund))
        if stored.fingerprint != fingerprint:
            raise HttpError(
                422, "idempotency_key_reused", "this Idempotency-Key was used with a different body"
            )
        return Response(200, dict(stored.authorization), {"Idempotent-Replayed": "true"})

    def _get_refunds(self, _request: Request) -> Response:
        return Response(
            200,
            {
                "refunds": self.refunds(),
                "requests_by_key": self.refund_requests_by_key(),
                "stats": self.refund_stats(),
            },
        )

    def _get_authorizations(self, _request: Request) -> Response:
        return Response(
            200,
            {"authorizations": self.authorizations(), "requests_by_key": self.requests_by_key()},
        )

    def _get_stats(self, _request: Request) -> Response:
        return Response(200, self.stats())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: serve until SIGINT/SIGTERM."""
    parser = build_arg_parser("Fake payment provider for chaos experiments.", 8101, 8102)
    args = parser.parse_args(argv)
    service = PaymentsService(args.host, args.port, args.control_port, seed=args.seed)
    return run_until_signalled(service, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
