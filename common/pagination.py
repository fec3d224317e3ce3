"""Page-number pagination with a strict, bounded ``page_size``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

# The query parameters of every paginated list, for ``extend_schema(parameters=...)``.
PAGE_PARAMETERS = [OpenApiParameter("page", int), OpenApiParameter("page_size", int)]


class BoundedPageNumberPagination(PageNumberPagination):
    """``?page_size=`` up to ``API_MAX_PAGE_SIZE``; anything else is a 400, not a silent clamp."""

    page_size_query_param = "page_size"

    @property
    def max_page_size(self) -> int:  # read at call time so tests can override settings
        return settings.API_MAX_PAGE_SIZE

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {"page_size": [f"Must be an integer between 1 and {self.max_page_size}."]}
            )
        return int(raw)


def paginated_response(
    request: Request, view: Any, queryset: Any, serializer_class: type[BaseSerializer]
) -> Response:
    """One page of ``queryset``, serialised, with ``count``, ``next`` and ``previous``."""
    paginator = BoundedPageNumberPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)
