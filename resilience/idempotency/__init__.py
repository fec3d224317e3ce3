"""Idempotency keys with Stripe's semantics, stored in Postgres, resumable in phases.

A DRF view method opts in with :func:`idempotent`; a multi-phase operation is declared
with :mod:`resilience.phases`, which records its recovery points here. The package, by job:

- :mod:`~resilience.idempotency.keys`: the header, the request fingerprint, the one
  derivation of downstream keys;
- :mod:`~resilience.idempotency.claims`: the claim of a key (first, replay, 409, 422,
  takeover);
- :mod:`~resilience.idempotency.store`: the lock holder's context (recovery points, the
  stored answer, each write sent with its phase's COMMIT), replays, the clock;
- :mod:`~resilience.idempotency.decorator`: ``@idempotent`` and what each answer stores;
- :mod:`~resilience.idempotency.maintenance`: completers, the purge, stale locks;
- :mod:`~resilience.idempotency.errors`: the problem+json errors.

See docs/patterns/idempotency-keys.md, adr/0005-idempotency-storage.md and
adr/0014-declared-phases.md.
"""

from __future__ import annotations

from resilience.idempotency.decorator import idempotent, key_parameter
from resilience.idempotency.errors import (
    IdempotencyKeyInvalidError,
    IdempotencyKeyMismatchError,
    IdempotencyKeyRequiredError,
    IdempotencyLockLostError,
    IdempotencyRequestInFlightError,
)
from resilience.idempotency.keys import (
    KEY_HEADER,
    KEY_PATTERN,
    MAX_KEY_LENGTH,
    REPLAYED_HEADER,
    downstream_key,
    parse_key,
    request_fingerprint,
)
from resilience.idempotency.maintenance import (
    Completer,
    idempotency_locks_release_stale,
    idempotency_records_complete_stale,
    idempotency_records_purge_expired,
    register_completer,
    unregister_completer,
)
from resilience.idempotency.store import (
    FINISHED,
    STARTED,
    IdempotencyContext,
    StoredResponse,
    now,
    override_clock,
)

__all__ = [
    "FINISHED",
    "KEY_HEADER",
    "KEY_PATTERN",
    "MAX_KEY_LENGTH",
    "REPLAYED_HEADER",
    "STARTED",
    "Completer",
    "IdempotencyContext",
    "IdempotencyKeyInvalidError",
    "IdempotencyKeyMismatchError",
    "IdempotencyKeyRequiredError",
    "IdempotencyLockLostError",
    "IdempotencyRequestInFlightError",
    "StoredResponse",
    "downstream_key",
    "idempotency_locks_release_stale",
    "idempotency_records_complete_stale",
    "idempotency_records_purge_expired",
    "idempotent",
    "key_parameter",
    "now",
    "override_clock",
    "parse_key",
    "register_completer",
    "request_fingerprint",
    "unregister_completer",
]
