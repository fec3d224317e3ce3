"""The OpenAPI schema tells the truth about errors, headers and links (issue 15).

drf-spectacular documents what the views declare; this ``AutoSchema`` adds what every
operation can answer besides its success, derived from the same code that answers it:

- one reusable ``Problem`` component (RFC 9457 members plus ``code``, ``errors`` and
  ``request_id``) whose ``code`` lists :data:`common.errors.ERROR_CODES`;
- per operation, each error status it can really give, as ``application/problem+json``,
  with the codes that status carries: from its authentication, request body, query
  serializer, path parameters, pagination, idempotency, throttles (fail-closed ones give
  ``rate_limiter_unavailable``), the middleware every ``/api/`` request passes, and the
  domain codes a view declares with :func:`problems`;
- the response headers: ``RateLimit``/``RateLimit-Policy`` and ``X-Request-ID`` on every
  answer, ``Retry-After`` on 429 and 503 (and the idempotency 409), ``WWW-Authenticate``
  on 401, ``Idempotent-Replayed`` on idempotent operations.

``link_hook`` (a postprocessing hook) adds the OpenAPI links of the first session
(signup -> login -> order -> order detail) that stateful contract tests follow.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.conf import settings
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from common.errors import ERROR_CODES
from resilience.problems import PROBLEM_CONTENT_TYPE, ProblemCode

E = ProblemCode
PROBLEM_COMPONENT = "Problem"
_PROBLEM_REF = {"$ref": f"#/components/schemas/{PROBLEM_COMPONENT}"}
_PROBLEMS_ATTR = "_documented_problems"

# What each error status means, for the response description.
_STATUS_TEXT = {
    400: "The request is malformed or has invalid fields (`errors` says which).",
    401: "No valid credentials.",
    404: "No such resource (or page).",
    406: "The `Accept` header excludes `application/json`.",
    409: "Conflicts with the current state; retry only as the problem says.",
    413: "The body is larger than the limit.",
    415: "The body is not `application/json`.",
    422: "Well-formed, but refused by a rule of the operation.",
    429: "A rate limit is exhausted; retry after `Retry-After` seconds.",
    503: "A dependency cannot serve now; retry after `Retry-After` seconds.",
}


def problem_schema() -> dict[str, Any]:
    """The ``Problem`` component: what ``common.errors.problem_body`` and the handlers emit."""
    return {
        "type": "object",
        "description": (
            "An RFC 9457 problem document (`application/problem+json`). `code` is the "
            "stable machine-readable reason; branch on it, never on `title` or `detail`. "
            "Members not listed here may be added (RFC 9457 extension members)."
        ),
        "properties": {
            "type": {
                "type": "string",
                "description": "URI reference naming the problem type.",
                "example": "/api/problems/invalid",
            },
            "title": {"type": "string", "description": "Short summary of the problem type."},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "What went wrong with this request."},
            "instance": {"type": "string", "description": "The request path."},
            "code": {
                "type": "string",
                "enum": list(ERROR_CODES),
                "description": "Stable machine-readable error code.",
            },
            "errors": {
                "type": "object",
                "additionalProperties": True,
                "description": "Field errors of a 400 `invalid`: field name -> messages "
                "(nested objects for nested fields).",
            },
            "request_id": {
                "type": "string",
                "description": "The `X-Request-ID` of this request, for support and logs.",
            },
            "retry_after": {"type": "integer", "minimum": 1},
            "violated-policies": {"type": "array", "items": {"type": "string"}},
            "dependency": {"type": "string"},
        },
        "required": ["type", "title", "status", "detail", "code", "request_id"],
        "additionalProperties": True,
    }


def problems(extra: Mapping[int, Iterable[str]]) -> Callable[[Any], Any]:
    """Declare the domain error codes a view method can answer, by status.

    Apply it outermost (above ``extend_schema``); the generic ones (auth, body, path,
    pagination, rate limits, dependencies) are derived and need no declaration.
    """

    def decorate(method: Any) -> Any:
        documented: dict[int, list[str]] = dict(getattr(method, _PROBLEMS_ATTR, {}))
        for status, codes in extra.items():
            documented[status] = [*documented.get(status, []), *codes]
        setattr(method, _PROBLEMS_ATTR, documented)
        return method

    return decorate


def _header(name: str, description: str, response: bool | list[int] = True) -> OpenApiParameter:
    return OpenApiParameter(
        name=name,
        type=OpenApiTypes.STR,
        location=OpenApiParameter.HEADER,
        response=response,
        description=description,
    )


RATELIMIT_HEADERS = [
    _header(
        "RateLimit-Policy",
        'The limits that apply (draft-ietf-httpapi-ratelimit-headers), e.g. `"flood";'
        "q=300;w=3`: quota `q` requests, refilled over `w` seconds.",
    ),
    _header(
        "RateLimit",
        'What is left of each policy, e.g. `"flood";r=299;t=0`: `r` requests may be sent '
        "within `t` seconds. With `r=0`, wait `t` seconds before the next request.",
    ),
]
REQUEST_ID_HEADER = _header("X-Request-ID", "The id of this request (echoed if sent valid).")
SERVER_TIMING_HEADER = _header(
    "Server-Timing",
    "Time this request spent on each dependency (W3C Server Timing, milliseconds), e.g. "
    "`postgres;dur=12.5, redis;dur=0.8`; absent when it called none.",
)
RETRY_AFTER = "Retry-After"


class ProblemAutoSchema(AutoSchema):
    """``AutoSchema`` that documents every error answer and response header (module doc)."""

    def _register_problem(self) -> None:
        self.registry.register_on_missing(
            ResolvedComponent(
                name=PROBLEM_COMPONENT,
                type=ResolvedComponent.SCHEMA,
                object=PROBLEM_COMPONENT,
                schema=problem_schema(),
            )
        )

    # --- What this operation can answer -------------------------------------------------
    def _handler(self) -> Any:
        return getattr(self.view, self.method.lower(), None)

    def _declared(self) -> list[Any]:
        """What the view declared with ``extend_schema(parameters=...)``, without ours.

        ``extend_schema`` subclasses this schema class and prepends its parameters to
        ``super().get_override_parameters()``; while collecting them ours answers [].
        """
        self._collecting = True
        try:
            return list(self.get_override_parameters())
        finally:
            self._collecting = False

    def _declared_parameters(self) -> list[OpenApiParameter]:
        return [p for p in self._declared() if isinstance(p, OpenApiParameter)]

    def _is_idempotent(self) -> bool:
        from resilience.idempotency import KEY_HEADER

        return any(
            p.name == KEY_HEADER and p.location == OpenApiParameter.HEADER and not p.response
            for p in self._declared_parameters()
        )

    def _needs_auth(self) -> bool:
        permissions = getattr(self.view, "permission_classes", [])
        return not all(issubclass(p, AllowAny) for p in permissions)

    def _has_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None

    def _has_query_serializer(self) -> bool:
        return any(not isinstance(p, OpenApiParameter) for p in self._declared())

    def _fail_closed_throttle(self) -> bool:
        policies = settings.RESILIENCE_RATELIMIT["policies"]
        for throttle in getattr(self.view, "throttle_classes", []):
            methods = getattr(throttle, "methods", None)
            if methods is not None and self.method not in methods:
                continue
            for name in getattr(throttle, "policies", ()):
                if policies.get(name, {}).get("fail") == "closed":
                    return True
        return False

    def error_codes(self) -> dict[int, list[str]]:
        """Each error status this operation can answer, with the codes it carries."""
        codes: dict[int, list[str]] = defaultdict(list)
        # Every /api/ request: the body-size guard, content negotiation, the flood limit,
        # and a database or breaker that cannot serve now.
        codes[400].append(E.INVALID_CONTENT_LENGTH)
        codes[406].append(E.NOT_ACCEPTABLE)
        codes[413].append(E.BODY_TOO_LARGE)
        codes[429].append(E.RATE_LIMITED)
        codes[503] += [E.DEPENDENCY_UNAVAILABLE, E.OVERLOADED]  # overloaded: load shedding
        if self._fail_closed_throttle():
            codes[503].append(E.RATE_LIMITER_UNAVAILABLE)
        if self._needs_auth():
            codes[401] += [E.NOT_AUTHENTICATED, E.AUTHENTICATION_FAILED]
        if self._has_body():
            codes[400] += [E.PARSE_ERROR, E.INVALID]
            codes[415].append(E.UNSUPPORTED_MEDIA_TYPE)
        if self._has_query_serializer():
            codes[400].append(E.INVALID)
        if self._is_list_view() and self._get_paginator() is not None:
            codes[400].append(E.INVALID)  # page or page_size out of bounds
            codes[404].append(E.NOT_FOUND)  # a page past the last
        if "{" in self.path:
            codes[404].append(E.NOT_FOUND)
        if self._is_idempotent():
            codes[400].append(E.IDEMPOTENCY_KEY_INVALID)
            codes[409].append(E.IDEMPOTENCY_REQUEST_IN_FLIGHT)
            codes[422].append(E.IDEMPOTENCY_KEY_MISMATCH)
        for status, extra in getattr(self._handler(), _PROBLEMS_ATTR, {}).items():
            codes[status] += extra
        return {status: list(dict.fromkeys(found)) for status, found in sorted(codes.items())}

    # --- drf-spectacular hooks ------------------------------------------------------------
    def get_override_parameters(self) -> list[Any]:
        if getattr(self, "_collecting", False):
            return list(super().get_override_parameters())
        parameters = [
            *super().get_override_parameters(),
            *RATELIMIT_HEADERS,
            REQUEST_ID_HEADER,
            SERVER_TIMING_HEADER,
        ]
        statuses = self.error_codes()
        retry_statuses = [429, 503] + ([409] if self._is_idempotent() else [])
        parameters.append(
            _header(
                RETRY_AFTER,
                "Whole seconds to wait before retrying (at least 1).",
                response=[s for s in retry_statuses if s in statuses],
            )
        )
        if 401 in statuses:
            parameters.append(
                _header("WWW-Authenticate", 'The scheme to use: `Token realm="api"`.', [401])
            )
        if self._is_idempotent():
            parameters.append(
                _header(
                    "Idempotent-Replayed",
                    "`true` when this answer is the stored answer of an earlier request "
                    "with the same `Idempotency-Key` (the operation did not run again).",
                )
            )
        return parameters

    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False):
        """Add the list bounds DRF enforces and drf-spectacular leaves out.

        ``ListSerializer`` (``many=True``) and ``ListField`` refuse an empty list when
        ``allow_empty=False`` and honour ``min_length``/``max_length``.
        """
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if schema.get("type") == "array" and isinstance(
            field, serializers.ListSerializer | serializers.ListField
        ):
            minimum = getattr(field, "min_length", None) or 0
            if not getattr(field, "allow_empty", True):
                minimum = max(minimum, 1)
            if minimum:
                schema["minItems"] = minimum
            if getattr(field, "max_length", None) is not None:
                schema["maxItems"] = field.max_length
        return schema

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        bodies = super()._get_response_bodies(direction)
        if direction != "response":
            return bodies
        self._register_problem()
        for status, codes in self.error_codes().items():
            listed = ", ".join(f"`{code.value}`" for code in codes)
            response = {
                "description": f"{_STATUS_TEXT[status]} Codes: {listed}.",
                "content": {PROBLEM_CONTENT_TYPE: {"schema": _PROBLEM_REF}},
            }
            headers = self._get_response_headers_for_code(str(status), direction)
            if headers:
                response["headers"] = headers
            bodies[str(status)] = response
        return dict(sorted(bodies.items()))


# --- Links for stateful testing (and for readers): the first session ---------------------
_LINKS = {
    ("/api/v1/auth/signup", "post", "201"): {
        "Login": {
            "operationId": "auth_login_create",
            "requestBody": {"email": "$request.body#/email", "password": "$request.body#/password"},
            "description": "Sign in with the credentials just registered.",
        }
    },
    ("/api/v1/auth/login", "post", "200"): {
        "CreateOrder": {
            "operationId": "orders_create",
            "parameters": {"header.Authorization": "Token {$response.body#/token}"},
            "description": "Place an order with the token just issued.",
        },
        "Me": {
            "operationId": "auth_me_retrieve",
            "parameters": {"header.Authorization": "Token {$response.body#/token}"},
        },
    },
    ("/api/v1/webhooks/endpoints", "post", "201"): {
        name: {"operationId": operation, "parameters": {"path.endpoint_id": "$response.body#/id"}}
        for name, operation in (
            ("GetEndpoint", "v1_webhooks_endpoints_retrieve"),
            ("PingEndpoint", "v1_webhooks_endpoints_ping_create"),
            ("DeleteEndpoint", "v1_webhooks_endpoints_destroy"),
        )
    },
    ("/api/v1/orders", "post", "201"): {
        "GetOrder": {
            "operationId": "orders_retrieve",
            "parameters": {"path.order_id": "$response.body#/id"},
            "description": "Read the order just placed.",
        }
    },
}


def link_hook(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict:
    """drf-spectacular postprocessing hook: add the OpenAPI links of ``_LINKS``."""
    for (path, method, status), links in _LINKS.items():
        response = result["paths"].get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is not None:
            response["links"] = links
    return result
