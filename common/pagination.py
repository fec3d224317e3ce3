"""Page-number pagination with a strict, bounded ``page_size``."""

from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request


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
