"""The product's URLs plus one view that waits like a thread stuck on a slow dependency."""

from __future__ import annotations

import time

from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from resilience.concurrency import priority

MAX_SLOW_S = 2.0


@priority("critical")  # as order creation, the request that waits on payments
def slow(request: HttpRequest) -> JsonResponse:
    """Hold this thread for ``seconds`` (at most 2 s), as a call to a slow provider would."""
    seconds = min(MAX_SLOW_S, max(0.0, float(request.GET.get("seconds", "0.8"))))
    time.sleep(seconds)
    return JsonResponse({"slept_s": seconds})


urlpatterns = [
    path("bench/slow", slow),
    path("", include("config.urls")),
]
