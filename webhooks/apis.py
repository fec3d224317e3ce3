"""Thin views over the webhook services and selectors."""

from __future__ import annotations

from uuid import UUID

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.errors import ErrorCode
from common.pagination import BoundedPageNumberPagination, paginated_response
from common.schema import problems
from resilience.concurrency import priority
from resilience.problems import ProblemCode
from resilience.ratelimit.business import business_ratelimit
from webhooks import selectors, services
from webhooks.serializers import (
    DeliveryListInputSerializer,
    DeliveryOutputSerializer,
    EndpointCreatedOutputSerializer,
    EndpointCreateInputSerializer,
    EndpointOutputSerializer,
)


class EndpointListCreateApi(APIView):
    pagination_class = BoundedPageNumberPagination  # GET: documents the envelope

    @problems({422: [ErrorCode.WEBHOOK_TARGET_FORBIDDEN, ErrorCode.WEBHOOK_ENDPOINT_LIMIT]})
    @extend_schema(
        request=EndpointCreateInputSerializer,
        responses={201: EndpointCreatedOutputSerializer},
        operation_id="webhook_endpoints_create",
        description=(
            "Register an endpoint. The signing secret is in this answer only. A URL that is "
            "not http(s) or resolves to a private or loopback address: 422 "
            "`webhook_target_forbidden` (SSRF guard); more than "
            f"{settings.WEBHOOKS_MAX_ENDPOINTS_PER_USER} endpoints: 422 `webhook_endpoint_limit`."
        ),
        examples=[
            OpenApiExample(
                "Order events",
                value={"url": "https://hooks.example.com/orders", "event_types": ["order.paid"]},
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = EndpointCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = services.endpoint_create(owner=request.user, **data.validated_data)
        return Response(
            EndpointCreatedOutputSerializer(endpoint).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        responses={200: EndpointOutputSerializer(many=True)},
        operation_id="webhook_endpoints_list",
    )
    def get(self, request: Request) -> Response:
        endpoints = selectors.endpoint_list(owner=request.user)
        return paginated_response(request, self, endpoints, EndpointOutputSerializer)


class EndpointDetailApi(APIView):
    @extend_schema(responses={200: EndpointOutputSerializer})
    def get(self, request: Request, endpoint_id: UUID) -> Response:
        endpoint = selectors.endpoint_get(owner=request.user, endpoint_id=endpoint_id)
        return Response(EndpointOutputSerializer(endpoint).data)

    @extend_schema(responses={204: OpenApiResponse(description="Deleted")})
    def delete(self, request: Request, endpoint_id: UUID) -> Response:
        services.endpoint_delete(owner=request.user, endpoint_id=endpoint_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndpointPingApi(APIView):
    @problems({422: [ProblemCode.UNPROCESSABLE]})
    @extend_schema(
        request=None,
        responses={202: DeliveryOutputSerializer},
        description=f"Queue a `webhook.ping` event; limited to {settings.WEBHOOKS_PING_RATE}"
        " per user (fixed window, 429 with Retry-After).",
    )
    # A product rule ("N pings per user per hour"), so a fixed window that users can read
    # off the answer: resilience.ratelimit.business, not a token bucket.
    @business_ratelimit(group="webhook-ping", key="user", rate=settings.WEBHOOKS_PING_RATE)
    def post(self, request: Request, endpoint_id: UUID) -> Response:
        delivery = services.endpoint_ping(owner=request.user, endpoint_id=endpoint_id)
        return Response(DeliveryOutputSerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


@priority("best_effort")
class DeliveryListApi(APIView):
    pagination_class = BoundedPageNumberPagination

    @extend_schema(
        parameters=[DeliveryListInputSerializer],
        responses={200: DeliveryOutputSerializer(many=True)},
        operation_id="webhook_deliveries_list",
    )
    def get(self, request: Request) -> Response:
        params = DeliveryListInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        deliveries = selectors.delivery_list(
            owner=request.user,
            status=params.validated_data.get("status"),
            endpoint_id=params.validated_data.get("endpoint"),
        )
        return paginated_response(request, self, deliveries, DeliveryOutputSerializer)
