"""The errors of idempotency keys, rendered as problem+json (resilience.problems)."""

from __future__ import annotations

from resilience.problems import ConflictError, ProblemCode, ProblemError, UnprocessableError


class IdempotencyKeyInvalidError(ProblemError):
    code = ProblemCode.IDEMPOTENCY_KEY_INVALID
    title = "Invalid Idempotency-Key"


class IdempotencyKeyRequiredError(ProblemError):
    code = ProblemCode.IDEMPOTENCY_KEY_REQUIRED
    title = "Idempotency-Key required"


class IdempotencyKeyMismatchError(UnprocessableError):
    code = ProblemCode.IDEMPOTENCY_KEY_MISMATCH
    title = "Idempotency-Key reused for a different request"


class IdempotencyRequestInFlightError(ConflictError):
    code = ProblemCode.IDEMPOTENCY_REQUEST_IN_FLIGHT
    title = "A request with this Idempotency-Key is in progress"

    def __init__(self, *, retry_after: int) -> None:
        super().__init__(
            "The first request with this Idempotency-Key has not finished; retry later.",
            headers={"Retry-After": str(retry_after)},
        )


class IdempotencyLockLostError(Exception):
    """The record's lock was taken over by another attempt; this attempt must stop.

    Raised by :meth:`IdempotencyContext.advance` (and ``finish``) inside the caller's
    transaction, so the phase's work rolls back with it. The decorator turns it into a
    replay or a 409.
    """
