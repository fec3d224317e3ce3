"""Keys: the ``Idempotency-Key`` header, the request fingerprint, downstream keys.

Pure functions, no database: what a key may look like, what makes two requests "the
same request", and the one derivation of the key sent to a downstream service.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from rest_framework.utils.encoders import JSONEncoder

from resilience.idempotency.errors import IdempotencyKeyInvalidError

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Visible ASCII (0x21-0x7E): UUIDs, ULIDs and base64 fit; spaces do not, since HTTP
# strips leading and trailing whitespace from header values and would make "a" and
# "a " the same key on the wire but not in the table.
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# What parse_key accepts, as one regular expression for the OpenAPI schema: a bare token
# of 1 to 255 visible ASCII characters that is not itself a quoted string, or an RFC 8941
# string (quotes around 1 to 255 visible characters without quote or backslash).
KEY_PATTERN = (
    r'^(?:[\x21-\x7E]|[\x21\x23-\x7E][\x21-\x7E]{1,254}|"[\x21-\x7E]{0,253}[\x21\x23-\x7E]'
    r'|"[\x21\x23-\x5B\x5D-\x7E]{1,255}")$'
)


def parse_key(raw: str) -> str:
    """Validate an ``Idempotency-Key`` header value and return the key.

    Accepts a bare token (Stripe) or an RFC 8941 string (the IETF draft sends
    ``"8e03978e-..."``); both name the same key.
    """
    key = raw
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        key = raw[1:-1]
        if '"' in key or "\\" in key:
            raise IdempotencyKeyInvalidError("Idempotency-Key must not contain escapes.")
    if not _VALID_KEY.fullmatch(key):
        raise IdempotencyKeyInvalidError(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters "
            "(0x21-0x7E), e.g. a UUID."
        )
    return key


def _canonical_data(data: Any) -> Any:
    if hasattr(data, "lists"):  # a QueryDict (form or query string): keep repeated values
        return dict(data.lists())
    return data


def request_fingerprint(*, method: str, path: str, query: Any, body: Any) -> str:
    """SHA-256 hex over method, path, query and body as canonical JSON.

    Canonical: sorted keys, no whitespace, so key order and formatting of the client's
    JSON do not matter while any change of a value does.
    """
    canonical = json.dumps(
        [method.upper(), path, _canonical_data(query), _canonical_data(body)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        cls=JSONEncoder,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def downstream_key(namespace: str, resource_id: Any, step: str = "") -> str:
    """The idempotency key sent downstream for ``step`` of the resource ``resource_id``.

    The one derivation in the project (adr/0014). It depends on the resource alone, not on
    the client's key, so every path that acts on the resource sends the same key: the
    request, its retry with the same ``Idempotency-Key``, the completer and the background
    retry of a deferred call (which has no client key at all). ``"order-<uuid>"`` is the
    key payments has always seen for an order's authorisation; a new step of the same
    resource adds a suffix (``"order-<uuid>-capture"``).
    """
    if not namespace or not str(resource_id):
        raise ValueError("a downstream key needs a namespace and a resource id")
    key = f"{namespace}-{resource_id}"
    return f"{key}-{step}" if step else key
