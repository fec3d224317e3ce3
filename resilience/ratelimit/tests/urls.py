"""Test-only views for the business-rule limits (django-ratelimit), mounted per test."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.utils.decorators import method_decorator
from django_ratelimit.decorators import ratelimit
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from resilience.ratelimit.business import business_ratelimit


class PingApi(APIView):
    """Stands for the webhooks feature's ping: 2 per client per minute."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @business_ratelimit(group="test-ping", key="ip", rate="2/m")
    def post(self, request: Request) -> Response:
        return Response({"pinged": True})


class PingFailOpenApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @business_ratelimit(group="test-ping-open", key="ip", rate="2/m", fail_open=True)
    def post(self, request: Request) -> Response:
        return Response({"pinged": True})


class PlainDecoratorApi(APIView):
    """django-ratelimit's own decorator: its ``Ratelimited`` must still become a 429."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @method_decorator(ratelimit(group="test-plain", key="ip", rate="1/m", block=True))
    def post(self, request: Request) -> Response:
        return Response({"ok": True})


@business_ratelimit(group="test-django-view", key="ip", rate="1/m")
def django_view(request: HttpRequest) -> JsonResponse:
    """A plain Django view: the decorator answers with problem+json itself."""
    return JsonResponse({"ok": True})


urlpatterns = [
    path("ping", PingApi.as_view()),
    path("ping-open", PingFailOpenApi.as_view()),
    path("plain", PlainDecoratorApi.as_view()),
    path("django", django_view),
]
