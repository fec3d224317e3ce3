"""A reference webhook subscriber that verifies Standard Webhooks signatures.

Hook port::

    POST /hooks/<anything>   headers webhook-id, webhook-timestamp, webhook-signature
                             204 new event; 200 duplicate webhook-id (acknowledged, not
                             recorded again); 400 missing headers, stale timestamp or a
                             non-JSON body; 401 no secret or no valid signature
    GET  /healthz

Control port (never faulted, never down)::

    POST /control/secrets    {"path": "/hooks/x", "secret": "..." or ["...", ...]}
    GET  /control/secrets    {"paths": [...], "default": bool}  (never the secrets)
    GET  /control/events     [{"id", "path", "timestamp", "received_at", "body", "attempts"}]
    GET  /control/stats      {"received", "unique", "duplicates", "rejected", "faulted"}
    POST /control/reset, GET|POST /control/faults   (see chaos._httpserver.ChaosService)

Run it with ``python -m chaos.receiver --port 8201 --control-port 8202 --secret S``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import sys
import time
from collections.abc import Iterable
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

DEFAULT_TOLERANCE_S = 300
HOOK_PREFIX = "/hooks/"
WHSEC_PREFIX = "whsec_"


def decode_secret(secret: str | bytes) -> bytes:
    """Turn a configured secret into the HMAC key.

    Standard Webhooks convention: a string starting with ``whsec_`` carries the key as
    base64 after the prefix, so ``whsec_c2VjcmV0`` is the key ``b"secret"``. Any other
    string is used as-is (its UTF-8 bytes); bytes are already a key.
    Raises ValueError for an empty secret or a ``whsec_`` secret that is not base64.
    """
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(WHSEC_PREFIX):
        try:
            key = base64.b64decode(secret.removeprefix(WHSEC_PREFIX), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"{WHSEC_PREFIX} secret is not valid base64") from exc
    else:
        key = secret.encode()
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``v1,<base64 HMAC-SHA256>`` signature of ``{id}.{timestamp}.{body}``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_signature(
    keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes, header: str
) -> bool:
    """True when any ``v1`` signature in the space-separated ``header`` matches any key.

    Comparisons are constant-time; other versions (e.g. ``v1a``) are ignored.
    """
    candidates = [
        signature.encode()
        for version, _, signature in (part.partition(",") for part in header.split())
        if version == "v1"
    ]
    for key in keys:
        expected = sign(key, msg_id, timestamp, body).removeprefix("v1,").encode()
        # Compare against every candidate (a list, not a short-circuiting generator), each
        # in constant time, so timing does not reveal which signature matched.
        matches = [hmac.compare_digest(expected, candidate) for candidate in candidates]
        if any(matches):
            return True
    return False


class ReceiverService(ChaosService):
    """The webhook subscriber: signature checks, dedupe on webhook-id, fault switches.

    ``secret`` is the default for every hook path; per-path secrets set with
    :meth:`set_secret` (or ``POST /control/secrets``) take precedence. Events are
    deduplicated per (path, webhook-id). ``tolerance_s`` bounds how far
    ``webhook-timestamp`` may be from now, in either direction.
    """

    name = "receiver"
    fault_statuses = range(400, 600)

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        *,
        secret: str | None = None,
        tolerance_s: int = DEFAULT_TOLERANCE_S,
        seed: int | None = None,
    ) -> None:
        self._default_keys = [decode_secret(secret)] if secret else []
        self._keys_by_path: dict[str, list[bytes]] = {}
        self._tolerance_s = tolerance_s
        self._events: dict[tuple[str, str], dict[str, Any]] = {}
        self._counts = dict.fromkeys(("received", "unique", "duplicates", "rejected", "faulted"), 0)
        super().__init__(host, port, control_port, seed=seed)

    def api_routes(self) -> Routes:
        """``POST /hooks/<anything>``."""
        return {HOOK_PREFIX + "*": {"POST": self._receive}}

    def control_routes(self) -> Routes:
        """Secrets, recorded events and counters."""
        return {
            "/control/secrets": {"GET": self._get_secrets, "POST": self._post_secret},
            "/control/events": {"GET": lambda _request: Response(200, self.events())},
            "/control/stats": {"GET": lambda _request: Response(200, self.stats())},
        }

    def _reset_state(self) -> None:
        # Back to the start-up state: the CLI default secret stays, per-path ones go.
        self._keys_by_path.clear()
        self._events.clear()
        self._counts = dict.fromkeys(self._counts, 0)

    # -- programmatic API ------------------------------------------------------------------

    def set_secret(self, path: str, secret: str | list[str]) -> None:
        """Set the secret(s) for one hook path; a signature valid for any of them passes.

        Raises ValueError for a path outside ``/hooks/`` or an invalid secret.
        """
        if not path.startswith(HOOK_PREFIX):
            raise ValueError(f"path must start with {HOOK_PREFIX}")
        secrets = [secret] if isinstance(secret, str) else secret
        if not secrets:
            raise ValueError("at least one secret is required")
        keys = [decode_secret(item) for item in secrets]
        with self._lock:
            self._keys_by_path[path] = keys

    def events(self) -> list[dict[str, Any]]:
        """Unique recorded events, in arrival order."""
        with self._lock:
            return [dict(event) for event in self._events.values()]

    def stats(self) -> dict[str, int]:
        """Counters: received (every attempt), unique, duplicates, rejected, faulted."""
        with self._lock:
            return dict(self._counts)

    # -- routes ----------------------------------------------------------------------------

    def _receive(self, request: Request) -> Response:
        with self._lock:
            self._counts["received"] += 1
        fault = self.inject_fault()
        if fault is not None:
            with self._lock:
                self._counts["faulted"] += 1
            return fault
        try:
            msg_id, timestamp, body = self._verify(request)
        except HttpError:
            with self._lock:
                self._counts["rejected"] += 1
            raise
        with self._lock:
            event = self._events.get((request.path, msg_id))
            if event is not None:
                event["attempts"] += 1
                self._counts["duplicates"] += 1
                return Response(200, {"id": msg_id, "duplicate": True})
            self._events[(request.path, msg_id)] = {
                "id": msg_id,
                "path": request.path,
                "timestamp": timestamp,
                "received_at": datetime.now(UTC).isoformat(),
                "body": body,
                "attempts": 1,
            }
            self._counts["unique"] += 1
        return Response(204)

    def _verify(self, request: Request) -> tuple[str, int, Any]:
        """Return (webhook-id, timestamp, parsed body) or raise 400/401."""
        msg_id = request.header("webhook-id")
        raw_timestamp = request.header("webhook-timestamp")
        signature = request.header("webhook-signature")
        if not (msg_id and raw_timestamp and signature):
            raise HttpError(
                400, "missing_headers", "webhook-id, webhook-timestamp and webhook-signature"
            )
        try:
            timestamp = int(raw_timestamp)
        except ValueError as exc:
            raise HttpError(
                400, "invalid_timestamp", "webhook-timestamp must be unix seconds"
            ) from exc
        # Checked before the signature, as the reference libraries do: a replayed old
        # message is refused whatever it carries.
        if abs(time.time() - timestamp) > self._tolerance_s:
            raise HttpError(400, "stale_timestamp", f"more than {self._tolerance_s}s from now")
        with self._lock:
            keys = self._keys_by_path.get(request.path, self._default_keys)
        if not keys:
            raise HttpError(401, "no_secret", f"no secret configured for {request.path}")
        if not verify_signature(keys, msg_id, timestamp, request.body, signature):
            raise HttpError(401, "invalid_signature", "no valid v1 signature")
        return msg_id, timestamp, request.json()

    def _get_secrets(self, _request: Request) -> Response:
        with self._lock:
            paths = sorted(self._keys_by_path)
        return Response(200, {"paths": paths, "default": bool(self._default_keys)})

    def _post_secret(self, request: Request) -> Response:
        data = request.json_object()
        path, secret = data.get("path"), data.get("secret")
        valid_secret = isinstance(secret, str) or (
            isinstance(secret, list) and all(isinstance(item, str) for item in secret)
        )
        if not isinstance(path, str) or not valid_secret:
            raise HttpError(400, "invalid_secret", 'expected {"path": str, "secret": str | [str]}')
        try:
            self.set_secret(path, secret)
        except ValueError as exc:
            raise HttpError(400, "invalid_secret", str(exc)) from exc
        return Response(204)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: serve until SIGINT/SIGTERM."""
    parser = build_arg_parser("Reference Standard Webhooks subscriber.", 8201, 8202)
    parser.add_argument("--secret", default=None, help="default secret for every hook path")
    parser.add_argument(
        "--tolerance", type=int, default=DEFAULT_TOLERANCE_S, help="timestamp tolerance, seconds"
    )
    args = parser.parse_args(argv)
    try:
        service = ReceiverService(
            args.host,
            args.port,
            args.control_port,
            secret=args.secret,
            tolerance_s=args.tolerance,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return run_until_signalled(service, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
