"""A fake external payment provider for tests and chaos experiments.

API port::

    POST /authorizations   {"order_id": str, "amount": int > 0 (minor units), "currency": "EUR"}
                           header Idempotency-Key required
                           201 new authorisation; 200 + Idempotent-Replayed: true for a replay
                           (same key, same body); 422 same key, different body; 400 bad input
    GET  /authorizations   {"authorizations": [...], "requests_by_key": {key: n}}
    GET  /stats            {"requests", "authorizations", "faulted", "by_status": {"201": n}}
    GET  /healthz          200 {"status": "ok"}; obeys the latency, ``status`` and
                           ``error_rate`` switches (and ``down``), so a slow or failing
                           provider fails the app's recovery probe; not counted

Only ``POST /authorizations`` and the API port's ``/healthz`` are faulted; every request
to ``/authorizations`` is counted, faulted or not. ``fail_first_n`` is consumed by
``/authorizations`` only.
The control port serves ``/healthz``, ``/stats``, ``/authorizations`` and the shared
``/control/faults`` and ``/control/reset`` (see :class:`chaos._httpserver.ChaosService`).

Run it with ``python -m chaos.payments --host 127.0.0.1 --port 8101 --control-port 8102``.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections import Counter
from dataclasses import dataclass
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
        super().__init__(host, port, control_port, seed=seed)

    def api_routes(self) -> Routes:
        """``/authorizations`` (POST faultable, GET listing) and ``/stats``."""
        return {
            "/authorizations": {"POST": self._post_authorization, "GET": self._get_authorizations},
            "/stats": {"GET": self._get_stats},
            "/healthz": {"GET": self._get_healthz},
        }

    def control_routes(self) -> Routes:
        """The read-only views, reachable even while the API port is down."""
        return {
            "/authorizations": {"GET": self._get_authorizations},
            "/stats": {"GET": self._get_stats},
        }

    def _reset_state(self) -> None:
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
        if not key:
            raise HttpError(
                400, "missing_idempotency_key", "the Idempotency-Key header is required"
            )
        if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise HttpError(400, "invalid_idempotency_key", "Idempotency-Key is too long")
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
