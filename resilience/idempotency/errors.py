"""The errors of idempotency keys, rendered as problem+json by common.exception_handler."""

from __future__ import annotations

from common.errors import ApplicationError, ConflictError, ErrorCode, UnprocessableError


class IdempotencyKeyInvalidError(ApplicationError):
    code = ErrorCode.IDEMPOTENCY_KEY_INVALID
    title = "Invalid Idempotency-Key"


class IdempotencyKeyRequiredError(ApplicationError):
    code = ErrorCode.IDEMPOTENCY_KEY_REQUIRED
    title = "Idempotency-Key required"


class IdempotencyKeyMismatchError(UnprocessableError):
    code = ErrorCode.IDEMPOTENCY_KEY_MISMATCH
    title = "Idempotency-Key reused for a different request"


class IdempotencyRequestInFlightError(ConflictError):
    code = ErrorCode.IDEMPOTENCY_REQUEST_IN_FLIGHT
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
