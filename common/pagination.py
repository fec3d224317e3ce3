"""Page-number pagination with a strict, bounded ``page_size``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

# A page number: a positive integer in plain digits, nothing else (not "last", not "+1").
_MAX_PAGE = 2**31 - 1


class BoundedPageNumberPagination(PageNumberPagination):
    """``?page_size=`` up to ``API_MAX_PAGE_SIZE``; anything else is a 400, not a silent clamp.

    ``?page=`` is a positive integer; a malformed one is a 400 and a page past the last a
    404. The OpenAPI parameters and envelope say exactly this (``common.schema``); a list
    view declares ``pagination_class`` so drf-spectacular documents the envelope.
    """

    page_size_query_param = "page_size"
    last_page_strings = ()  # the schema says integer: "last" would be an undocumented value

    @property
    def max_page_size(self) -> int:  # read at call time so tests can override settings
        return settings.API_MAX_PAGE_SIZE

    def get_page_number(self, request: Request, paginator: Any) -> int:
        raw = request.query_params.get(self.page_query_param)
        if raw is None:
            return 1
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= _MAX_PAGE:
            raise ValidationError({"page": [f"Must be an integer between 1 and {_MAX_PAGE}."]})
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": self.page_query_param,
                "required": False,
                "in": "query",
                "description": "A page number (1 is the first); past the last page: 404.",
                "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_PAGE},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Results per page (default {settings.API_PAGE_SIZE}).",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_page_size},
            },
        ]

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        envelope = super().get_paginated_response_schema(schema)
        envelope["required"] = ["count", "next", "previous", "results"]
        envelope["properties"]["count"]["minimum"] = 0
        for link in ("next", "previous"):
            envelope["properties"][link]["example"] = None
        return envelope

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {"page_size": [f"Must be an integer between 1 and {self.max_page_size}."]}
            )
        return int(raw)


def paginated_data(
    request: Request, view: Any, queryset: Any, serializer_class: type[BaseSerializer]
) -> dict:
    """One page of ``queryset``, serialised, with ``count``, ``next`` and ``previous``."""
    paginator = BoundedPageNumberPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data).data


def paginated_response(
    request: Request, view: Any, queryset: Any, serializer_class: type[BaseSerializer]
) -> Response:
    """:func:`paginated_data` as a response."""
    return Response(paginated_data(request, view, queryset, serializer_class))
