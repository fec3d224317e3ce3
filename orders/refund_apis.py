"""Refunds of an order: ``POST`` and ``GET /api/v1/orders/{order_id}/refunds``.

Every resilience pattern here is a declaration: the throttle's policy (settings), the
idempotency decorator, the priority class; the payments call in ``orders.refunds`` names
its dependency and nothing else (docs/adding-a-resilient-endpoint.md).
"""

from __future__ import annotations

from uuid import UUID

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import ErrorCode
from common.pagination import BoundedPageNumberPagination, paginated_response
from common.schema import problems
from orders import refunds
from orders.models import RefundStatus
from orders.refund_serializers import RefundCreateInputSerializer, RefundOutputSerializer
from resilience.concurrency import priority
from resilience.idempotency import StoredResponse, idempotent
from resilience.ratelimit.throttles import throttle

ORDER_REFUND_SCOPE = "orders.refund"


def refund_status_code(refund) -> int:
    """202 while the refund is pending (payments was unavailable), else 201."""
    pending = refund.status == RefundStatus.PENDING
    return status.HTTP_202_ACCEPTED if pending else status.HTTP_201_CREATED


def refund_response(refund) -> Response:
    """The answer of a refund request (also what the idempotency record stores)."""
    return Response(RefundOutputSerializer(refund).data, status=refund_status_code(refund))


def stored_refund_response(refund) -> StoredResponse:
    """The same answer, for the completer of a refund request left mid-way."""
    return StoredResponse.json(refund_status_code(refund), RefundOutputSerializer(refund).data)


# Finishes a refund request whose client never came back, as its retry would (apps.py).
complete_refund = refunds.REFUND.completer(respond=stored_refund_response)

REFUND_EXAMPLE = {
    "id": "9b2d4c1e-5f6a-4b7c-8d9e-0a1b2c3d4e5f",
    "order_id": "3f0c7a52-1f7e-4d8e-9a4c-2b1d5e6f7a80",
    "status": "succeeded",
    "amount": 1250,
    "currency": "EUR",
    "reason": "one book returned",
    "created_at": "2026-12-01T10:00:00Z",
    "updated_at": "2026-12-01T10:00:00Z",
}


@priority("normal", POST="critical")
class OrderRefundsApi(APIView):
    throttle_classes = [throttle("orders_refund", methods={"POST"})]  # listing is not limited
    pagination_class = BoundedPageNumberPagination  # GET: documents the envelope

    @problems(
        {
            409: [ErrorCode.ORDER_NOT_REFUNDABLE],
            422: [ErrorCode.REFUND_EXCEEDS_REMAINING, ErrorCode.REFUND_CURRENCY_MISMATCH],
        }
    )
    @extend_schema(
        request=RefundCreateInputSerializer,
        responses={201: RefundOutputSerializer, 202: RefundOutputSerializer},
        operation_id="orders_refunds_create",
        description=(
            "Refund all or part of a paid order (amount in minor units of its currency). "
            "201: the provider refunded it (`succeeded`; `failed` if it declined). 202: the "
            "payment provider is unavailable; the refund is accepted `pending`, its amount "
            "reserved, and completed in the background (list the refunds to see it move). "
            "Send an `Idempotency-Key` and reuse it on every retry: the refund is made once. "
            "Refused: an order that is not paid (409 `order_not_refundable`), more than is "
            "left to refund (422 `refund_exceeds_remaining`, with `refundable_amount`), "
            "another currency (422 `refund_currency_mismatch`)."
        ),
        examples=[
            OpenApiExample(
                "Part of an order",
                value={"amount": 1250, "reason": "one book returned"},
                request_only=True,
            ),
            OpenApiExample(
                "Refunded", value=REFUND_EXAMPLE, response_only=True, status_codes=[201]
            ),
            OpenApiExample(
                "Accepted, pending",
                value={**REFUND_EXAMPLE, "status": "pending"},
                response_only=True,
                status_codes=[202],
            ),
        ],
    )
    @idempotent(scope=ORDER_REFUND_SCOPE)
    def post(self, request: Request, order_id: UUID) -> Response:
        # Validation and the refusals run before the first recovery point: a 4xx stores
        # nothing, so the client may fix the body and retry with the same key.
        data = RefundCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The answer is built and stored inside the last phase's transaction.
        return refunds.refund_create(
            owner=request.user,
            order_id=order_id,
            recovery=request.idempotency,
            respond=refund_response,
            **data.validated_data,
        )

    @extend_schema(
        responses={200: RefundOutputSerializer(many=True)},
        operation_id="orders_refunds_list",
        description="The refunds of one of your orders, newest first, one page at a time.",
    )
    def get(self, request: Request, order_id: UUID) -> Response:
        found = refunds.refund_list(owner=request.user, order_id=order_id)
        return paginated_response(request, self, found, RefundOutputSerializer)
