"""Benchmark endpoints: one trivial DRF view, unlimited and behind each kind of limiter."""

from __future__ import annotations

from django.urls import path
from django.utils.decorators import method_decorator
from django_ratelimit.decorators import ratelimit
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orders.apis import OrderListCreateApi
from resilience.ratelimit.business import business_ratelimit
from resilience.ratelimit.throttles import TokenBucketThrottle


class PlainApi(APIView):
    """No limit: the baseline every other endpoint is compared with."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class OverheadThrottle(TokenBucketThrottle):
    policies = ("bench_overhead",)


class AccuracyThrottle(TokenBucketThrottle):
    policies = ("bench_accuracy",)


class TokenBucketApi(PlainApi):
    """Our Redis token bucket, one EVALSHA per request, never refusing."""

    throttle_classes = [OverheadThrottle]


class AccuracyApi(PlainApi):
    """Our token bucket shaped like the nginx zone (100 burst, 100/s)."""

    throttle_classes = [AccuracyThrottle]


class MeApi(APIView):
    """A realistic endpoint: token authentication (one query) and a serialised user."""

    def get(self, request: Request) -> Response:
        return Response({"id": request.user.pk, "email": request.user.email})


class MeTokenBucketApi(MeApi):
    throttle_classes = [OverheadThrottle]


class OrderListApi(OrderListCreateApi):
    """The real order list (token auth, count and page queries, serialiser), unlimited."""

    throttle_classes: list = []


class OrderListTokenBucketApi(OrderListCreateApi):
    throttle_classes = [OverheadThrottle]


class DjangoRatelimitApi(PlainApi):
    """django-ratelimit's own decorator (fixed window in the Django cache), never refusing."""

    @method_decorator(ratelimit(group="bench-djrl", key="ip", rate="1000000000/h", block=True))
    def get(self, request: Request) -> Response:
        return Response({"ok": True})


class BusinessRuleApi(PlainApi):
    """The same through our wrapper (429 problem+json, RateLimit fields)."""

    @business_ratelimit(group="bench-business", key="ip", rate="1000000000/h")
    def get(self, request: Request) -> Response:
        return Response({"ok": True})


urlpatterns = [
    path("bench/plain", PlainApi.as_view()),
    path("bench/token-bucket", TokenBucketApi.as_view()),
    path("bench/django-ratelimit", DjangoRatelimitApi.as_view()),
    path("bench/business-rule", BusinessRuleApi.as_view()),
    path("bench/me", MeApi.as_view()),
    path("bench/me-token-bucket", MeTokenBucketApi.as_view()),
    path("bench/orders", OrderListApi.as_view()),
    path("bench/orders-token-bucket", OrderListTokenBucketApi.as_view()),
    path("api/bench/accuracy", AccuracyApi.as_view()),
    # Behind nginx, /api/ is limit_req'd: this is the gateway-limited endpoint.
    path("api/bench/plain", PlainApi.as_view()),
    path("healthz", PlainApi.as_view()),
]
