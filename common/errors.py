"""The project's error codes, beside the library's.

Services raise :class:`resilience.problems.ProblemError` subclasses (never DRF
exceptions): a stable machine-readable ``code``, an HTTP status and optional headers.
"Not now" answers are :class:`resilience.errors.Refusal`. ``common.exception_handler``
renders all of them, and every DRF and Django error, as an RFC 9457 problem document.
"""

from __future__ import annotations

from enum import StrEnum

from resilience.problems import ProblemCode


class ErrorCode(StrEnum):
    """The ``code`` values of the project's own domain errors.

    With :class:`resilience.problems.ProblemCode` (generic and library codes) they make
    :data:`ERROR_CODES`, the one list: the OpenAPI schema lists it (``common.schema``)
    and the contract tests fail on an answer whose code is not in it.
    """

    # Accounts.
    EMAIL_TAKEN = "email_taken"
    INVALID_CREDENTIALS = "invalid_credentials"
    # Orders.
    INVALID_ORDER_TRANSITION = "invalid_order_transition"
    # Refunds (orders.refunds).
    ORDER_NOT_REFUNDABLE = "order_not_refundable"
    REFUND_EXCEEDS_REMAINING = "refund_exceeds_remaining"
    REFUND_CURRENCY_MISMATCH = "refund_currency_mismatch"
    # Webhooks.
    WEBHOOK_TARGET_FORBIDDEN = "webhook_target_forbidden"
    WEBHOOK_ENDPOINT_LIMIT = "webhook_endpoint_limit"
    WEBHOOK_REPLAY_REFUSED = "webhook_replay_refused"


# Every code an answer may carry: the library's, then the project's.
ERROR_CODES: tuple[str, ...] = (*ProblemCode, *ErrorCode)
