"""The project's admin site: Django's own, with the API login's limits on its login form."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from accounts.apis import LOGIN_POLICIES
from resilience.ratelimit.decisions import check_request, normalize_username
from resilience.ratelimit.middleware import refusal_response
from resilience.ratelimit.throttles import declare_policies

declare_policies(LOGIN_POLICIES)


class RateLimitedAdminSite(admin.AdminSite):
    """The admin whose login draws from the API login's buckets (per IP and per username).

    A second login form must not be a second set of guesses: a POST here spends from the
    same ``login_ip`` and ``login_username`` buckets as ``POST /api/v1/auth/login`` and
    is refused the same way (429 problem+json with ``Retry-After``) once either is empty.
    """

    def login(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST":
            # Django's login form calls the account's email "username".
            submitted = normalize_username(request.POST.get("username"))
            decision = check_request(request, LOGIN_POLICIES, username=submitted)
            if not decision.allowed:
                return refusal_response(request, decision)
        return super().login(request, extra_context)
