"""Thin views over the order services and selectors."""

from __future__ import annotations

import hashlib
from uuid import UUID

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.pagination import BoundedPageNumberPagination, paginated_data
from orders import selectors, services
from orders.serializers import (
    OrderCreateInputSerializer,
    OrderOutputSerializer,
    OrderReportInputSerializer,
    OrderReportOutputSerializer,
)
from resilience.concurrency import priority
from resilience.idempotency import idempotent
from resilience.ratelimit.throttles import throttle
from resilience.stale import DEGRADED_HEADER, read_through

ORDER_CREATE_SCOPE = "orders.create"


def order_created_response(order) -> Response:
    """The 201 of a placed order (also what the idempotency completer stores)."""
    return Response(
        OrderOutputSerializer(order).data,
        status=status.HTTP_201_CREATED,
        headers={"Location": f"/api/v1/orders/{order.id}"},
    )


ORDER_EXAMPLE = {
    "id": "3f0c7a52-1f7e-4d8e-9a4c-2b1d5e6f7a80",
    "status": "paid",
    "currency": "EUR",
    "total_amount": 2500,
    "items": [{"sku": "BOOK-1", "quantity": 2, "unit_price": 1250, "line_total": 2500}],
    "created_at": "2026-12-01T09:30:00Z",
    "updated_at": "2026-12-01T09:30:01Z",
}


# A read served from the last copy while Postgres is down (resilience.stale).
STALE_HEADERS = [
    OpenApiParameter(
        DEGRADED_HEADER,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200],
        enum=["stale"],
        description="`stale`: Postgres is unavailable and this is the last copy served.",
    ),
    OpenApiParameter(
        "Age",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[200],
        description="Seconds since the stale copy was computed.",
    ),
]


@priority("normal", POST="critical")
class OrderListCreateApi(APIView):
    throttle_classes = [throttle("orders_create", methods={"POST"})]  # listing is not limited
    pagination_class = BoundedPageNumberPagination  # GET: documents the envelope

    @extend_schema(
        request=OrderCreateInputSerializer,
        responses={201: OrderOutputSerializer},
        operation_id="orders_create",
        description=(
            "Place an order. Send an `Idempotency-Key` (a UUIDv4 per order) and reuse it "
            "on every retry of the same order: the order is placed once."
        ),
        parameters=[
            OpenApiParameter(
                "Location",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                response=[201],
                description="The new order: `/api/v1/orders/{id}`.",
            )
        ],
        examples=[
            OpenApiExample(
                "Two books",
                value={
                    "currency": "EUR",
                    "items": [{"sku": "BOOK-1", "quantity": 2, "unit_price": 1250}],
                },
                request_only=True,
            ),
            OpenApiExample("Placed", value=ORDER_EXAMPLE, response_only=True, status_codes=[201]),
        ],
    )
    @idempotent(scope=ORDER_CREATE_SCOPE)
    def post(self, request: Request) -> Response:
        # Validation runs before the first recovery point: a 400 stores nothing, so the
        # client may fix the body and retry with the same key (Stripe's rule).
        data = OrderCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The answer is built and stored inside the last phase's transaction.
        return services.order_place(
            owner=request.user,
            recovery=request.idempotency,
            respond=order_created_response,
            **data.validated_data,
        )

    @extend_schema(
        responses={200: OrderOutputSerializer(many=True)},
        operation_id="orders_list",
        description=(
            "Your orders, newest first, one page at a time. While Postgres is down the "
            "last copy of the same page served may be answered, marked stale "
            "(`X-Degraded: stale` and `Age` headers)."
        ),
        parameters=STALE_HEADERS,
    )
    def get(self, request: Request) -> Response:
        # One copy per user and query (page, page_size), the query hashed to bound the key.
        query = hashlib.sha256(request.query_params.urlencode().encode()).hexdigest()[:16]
        read = read_through(
            f"orders:list:{request.user.pk}:{query}",
            lambda: paginated_data(
                request, self, selectors.order_list(owner=request.user), OrderOutputSerializer
            ),
            fresh_s=0,
            stale_s=settings.ORDERS_STALE_READ_S,
        )
        return Response(read.value, headers=read.headers())


@priority("critical")
class OrderDetailApi(APIView):
    @extend_schema(
        responses={200: OrderOutputSerializer},
        operation_id="orders_retrieve",
        description=(
            "One of your orders. While Postgres is down the last copy served may be "
            "answered, marked stale (`X-Degraded: stale` and `Age` headers)."
        ),
        parameters=STALE_HEADERS,
    )
    def get(self, request: Request, order_id: UUID) -> Response:
        # While Postgres is down, the last copy served is answered, marked stale.
        read = read_through(
            f"orders:detail:{request.user.pk}:{order_id}",
            lambda: (
                OrderOutputSerializer(
                    selectors.order_get(owner=request.user, order_id=order_id)
                ).data
            ),
            fresh_s=0,
            stale_s=settings.ORDERS_STALE_READ_S,
        )
        return Response(read.value, headers=read.headers())


@priority("best_effort")
class OrderReportApi(APIView):
    throttle_classes = [throttle("orders_report")]  # the expensive report, tight

    @extend_schema(
        parameters=[OrderReportInputSerializer, *STALE_HEADERS],
        responses={200: OrderReportOutputSerializer},
        description=(
            "Totals per day, status and currency. Reused for a minute; served stale while "
            "Postgres is down; refused (503) while its rate limiter cannot be checked."
        ),
    )
    def get(self, request: Request) -> Response:
        params = OrderReportInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        days = params.validated_data["days"]
        # The expensive query: reused for a minute, and served stale while Postgres is down.
        read = read_through(
            f"orders:report:{request.user.pk}:{days}",
            lambda: (
                OrderReportOutputSerializer(
                    {"days": days, "rows": selectors.order_report(owner=request.user, days=days)}
                ).data
            ),
            fresh_s=settings.ORDERS_REPORT_FRESH_S,
            stale_s=settings.ORDERS_STALE_READ_S,
        )
        return Response(read.value, headers=read.headers())
